#!/usr/bin/env bash
# Write overhead of smartcache's capture, measured with pgbench, and the
# cost of one big statement.
#
# Single-row UPDATEs by primary key on pgbench_accounts (100k rows) at 1, 2,
# 4, 8 and 16 clients, interleaved per client count so each ratio compares
# runs minutes apart at most:
#   none       no trigger (the baseline)
#   daemon     smartcache installed, the daemon running (a separate process)
#   no-daemon  smartcache installed, no daemon (never started, or killed)
# During the daemon runs the doorbell lease is sampled every 200 ms: how
# often writers were asked to ring (each ring is a NOTIFY that serialises
# commits). Then one UPDATE of all 100,000 rows, with and without the
# triggers (median of 3).
#
# Usage: bench/pgbench.sh [seconds per run, default 10] [repeats, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/servers.sh
. bench/pgbench_lib.sh
sc_ensure_servers
SECS=${1:-10}
REPEATS=${2:-3}
DB=sc_pgbench
ADMIN="$DATABASE_URL"
URL="${ADMIN%/*}/$DB"
BIN=target/release/smartcache-invalidator
cargo build --quiet --release -p smartcache-invalidator

CFG=$(mktemp /tmp/sc-pgbench.XXXXXX.toml)
sc() { "$BIN" --config "$CFG" --database-url "$URL" --redis-url "$REDIS_URL" --namespace pgbench "$@"; }
SCRIPT=$(mktemp /tmp/sc-pgbench.XXXXXX.sql)
sc_update_script "$SCRIPT"
DAEMON=""
cleanup_bench() {
    [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null || true
    sc clear --all >/dev/null 2>&1 || true
    rm -f "$CFG" "$SCRIPT"
    psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
}
trap 'cleanup_bench; sc_cleanup' EXIT
sc_pgbench_db "$DB" "$CFG" pgbench

triggers() { psql "$URL" -qc "ALTER TABLE pgbench_accounts $1 TRIGGER USER"; }
start_daemon() {
    "$BIN" --config "$CFG" --database-url "$URL" --redis-url "$REDIS_URL" --namespace pgbench run 2>/dev/null &
    DAEMON=$!
    sleep 1
}
stop_daemon() { kill -TERM "$DAEMON"; wait "$DAEMON" || true; DAEMON=""; }
tps() {
    psql "$URL" -qc "VACUUM ANALYZE pgbench_accounts" >/dev/null
    pgbench -n -c "$1" -j "$1" -T "$SECS" -f "$SCRIPT" "$URL" 2>/dev/null \
        | awk '/^tps/ {printf "%.0f", $3}'
}
# Prints "ringing/samples" for the doorbell lease while $1 seconds pass.
sample_doorbell() {
    local ring=0 n=0 end=$((SECONDS + $1))
    while [ $SECONDS -lt "$end" ]; do
        v=$(psql "$URL" -Atc "SELECT last_value > (extract(epoch FROM clock_timestamp()) * 1000)::bigint FROM smartcache.doorbell" 2>/dev/null || echo f)
        [ "$v" = t ] && ring=$((ring + 1))
        n=$((n + 1))
        sleep 0.2
    done
    echo "$ring/$n"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A R
CLIENTS=(1 2 4 8 16)
for c in "${CLIENTS[@]}"; do
    for _ in $(seq "$REPEATS"); do
        triggers DISABLE; R[none,$c]+="$(tps "$c") "
        triggers ENABLE; start_daemon
        sample_doorbell "$SECS" > /tmp/sc-pgbench-ring & SAMPLER=$!
        R[daemon,$c]+="$(tps "$c") "
        wait "$SAMPLER"; R[ring,$c]+="$(cat /tmp/sc-pgbench-ring) "
        stop_daemon
        R[nodaemon,$c]+="$(tps "$c") "
        # What the daemon would have drained.
        psql "$URL" -qc "TRUNCATE smartcache.outbox"
    done
done

bulk_ms() {
    local runs=()
    for _ in 1 2 3; do
        psql "$URL" -qc "TRUNCATE smartcache.outbox" -c "VACUUM ANALYZE pgbench_accounts"
        local t0 t1
        t0=$(date +%s%N)
        psql "$URL" -qc "UPDATE pgbench_accounts SET abalance = abalance + 1"
        t1=$(date +%s%N)
        runs+=($(( (t1 - t0) / 1000000 )))
    done
    printf '%s\n' "${runs[@]}" | median
}
triggers DISABLE; B_NONE=$(bulk_ms)
triggers ENABLE; B_TRIG=$(bulk_ms)
psql "$URL" -qc "TRUNCATE smartcache.outbox"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2fx", a/b}'; }
echo
echo "pgbench UPDATE by primary key, ${SECS}s per run, median of $REPEATS interleaved runs, tps (ratio to no trigger)"
echo
echo "| clients | no trigger | daemon running | no daemon | doorbell ringing (samples, all runs) |"
echo "|---|---|---|---|---|"
for c in "${CLIENTS[@]}"; do
    none=$(echo ${R[none,$c]} | tr ' ' '\n' | median)
    d=$(echo ${R[daemon,$c]} | tr ' ' '\n' | median)
    n=$(echo ${R[nodaemon,$c]} | tr ' ' '\n' | median)
    echo "| $c | $none | $d ($(ratio "$d" "$none")) | $n ($(ratio "$n" "$none")) | ${R[ring,$c]} |"
done
echo
echo "runs (tps): $(for c in "${CLIENTS[@]}"; do printf '%s: none [%s] daemon [%s] no-daemon [%s]; ' "$c" "${R[none,$c]% }" "${R[daemon,$c]% }" "${R[nodaemon,$c]% }"; done)"
echo
echo "one UPDATE of 100,000 rows (median of 3): no trigger ${B_NONE} ms, with capture ${B_TRIG} ms ($(ratio "$B_TRIG" "$B_NONE"))"
