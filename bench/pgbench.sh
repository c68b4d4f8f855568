#!/usr/bin/env bash
# Write overhead of smartcache's triggers, measured with pgbench.
#
# Single-row UPDATEs by primary key on pgbench_accounts (100k rows) at 1, 2,
# 4 and 8 clients, in four set-ups measured in the same run:
#   none      no trigger (the baseline)
#   daemon    smartcache triggers, daemon running (the shipped design)
#   outbox    smartcache triggers, doorbell off (idle = false, no daemon):
#             the cost of the outbox INSERT alone
#   ring      smartcache triggers, doorbell always on (idle = true, no
#             daemon): what a NOTIFY in every transaction costs
# Usage: bench/pgbench.sh [seconds per run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/servers.sh
sc_ensure_servers
SECS=${1:-10}
DB=sc_pgbench
ADMIN="$DATABASE_URL"
URL="${ADMIN%/*}/$DB"
BIN=target/release/smartcache-invalidator
sc() { "$BIN" --config "$CFG" --database-url "$URL" --redis-url "$REDIS_URL" "$@"; }
cargo build --quiet --release -p smartcache-invalidator

psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
pgbench -q -i -s 1 "$URL" >/dev/null
CFG=$(mktemp /tmp/sc-pgbench.XXXXXX.toml)
cat > "$CFG" <<TOML
database_url = "$URL"
redis_url = "$REDIS_URL"
namespace = "pgbench"
[[tables]]
name = "pgbench_accounts"
keys = ["account:{aid}", "branch:{bid}"]
TOML
SCRIPT=$(mktemp /tmp/sc-pgbench.XXXXXX.sql)
printf '\\set aid random(1, 100000)\nUPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n' > "$SCRIPT"
DAEMON=""
cleanup_bench() {
    [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null || true
    sc clear --all >/dev/null 2>&1 || true
    rm -f "$CFG" "$SCRIPT"
    psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
}
trap 'cleanup_bench; sc_cleanup' EXIT

tps() {
    psql "$URL" -qc "VACUUM ANALYZE pgbench_accounts" >/dev/null
    pgbench -n -c "$1" -j "$1" -T "$SECS" -f "$SCRIPT" "$URL" 2>/dev/null \
        | awk '/^tps/ {printf "%.0f", $3}'
}

declare -A R
CLIENTS=(1 2 4 8)
for c in "${CLIENTS[@]}"; do R[none,$c]=$(tps "$c"); done

sc install >/dev/null
for mode in daemon outbox ring; do
    case $mode in
        daemon) "$BIN" --config "$CFG" --database-url "$URL" --redis-url "$REDIS_URL" run 2>/dev/null & DAEMON=$! ; sleep 1 ;;
        outbox) psql "$URL" -qc "UPDATE smartcache.wakeup SET idle = false" ;;
        ring)   psql "$URL" -qc "UPDATE smartcache.wakeup SET idle = true" ;;
    esac
    for c in "${CLIENTS[@]}"; do
        R[$mode,$c]=$(tps "$c")
        [ "$mode" = daemon ] || psql "$URL" -qc "TRUNCATE smartcache.outbox"
    done
    if [ "$mode" = daemon ]; then kill -TERM "$DAEMON"; wait "$DAEMON" || true; DAEMON=""; fi
done
left=$(psql "$URL" -Atc "SELECT count(*) FROM smartcache.outbox")

echo
echo "pgbench UPDATE by primary key, ${SECS}s per run, tps (ratio to no trigger)"
printf '%-8s' clients; for m in none daemon outbox ring; do printf '%18s' "$m"; done; echo
for c in "${CLIENTS[@]}"; do
    printf '%-8s' "$c"
    for m in none daemon outbox ring; do
        printf '%18s' "$(awk -v a="${R[$m,$c]}" -v b="${R[none,$c]}" 'BEGIN {printf "%d (%.2fx)", a, a/b}')"
    done
    echo
done
echo "outbox rows left after the daemon run was stopped and the others truncated: $left"
