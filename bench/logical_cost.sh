#!/usr/bin/env bash
# What capture from the WAL (logical decoding) would cost the writers,
# against the capture smartcache installs: the question behind issue 10's
# pgbench goal (>= 0.85x of trigger-free tps), which one outbox row per
# statement already misses on this machine.
#
# Starts its own PostgreSQL (wal_level = logical; the shared server's
# settings are never touched) on a free port, with pgbench's tables
# (100k accounts), and times pgbench's single-row UPDATE by primary key,
# tps at 1 and 8 clients, variants interleaved, median of 3:
#   none         no trigger, default replica identity (the baseline)
#   full         REPLICA IDENTITY FULL (old rows whole in the WAL: what
#                decoding needs for the old values of template columns)
#   decoded      full, plus a slot streamed by pg_recvlogical with
#                test_decoding (every change decoded to text, as a daemon
#                reading the WAL would need)
#   pgoutput     full, plus a slot streamed with pgoutput (binary, for a
#                publication of the table only)
#   capture      the capture function smartcache installs, no daemon
# A daemon on the WAL would add its own and Redis' CPU, as today's does.
# Usage: bench/logical_cost.sh [seconds per run, default 8]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/servers.sh
. bench/pgbench_lib.sh
SECS=${1:-8}
BIN=$(sc_pg_bin)
sc_tmpdir
PORT=$(sc_free_port)
DATA="$SC_TMP/logical"
mkdir -p "$DATA"
RUN_AS=()
if [ "$(id -u)" = 0 ]; then
    chown postgres "$DATA"
    RUN_AS=(runuser -u postgres --)
fi
RECV_PID=
stop() {
    [ -n "$RECV_PID" ] && kill "$RECV_PID" 2>/dev/null || true
    "${RUN_AS[@]}" "$BIN/pg_ctl" -D "$DATA" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$SC_TMP"
}
trap stop EXIT
"${RUN_AS[@]}" "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 >/dev/null
"${RUN_AS[@]}" "$BIN/pg_ctl" -D "$DATA" -l "$DATA/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA -c wal_level=logical -c max_wal_senders=4 -c max_replication_slots=4" \
    start >/dev/null
URL="postgres://postgres@127.0.0.1:$PORT/postgres"
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
DATABASE_URL="$URL"
cargo build --quiet --release -p smartcache-invalidator
sc_pgbench_db bench_logical "$SC_TMP/config.toml" logicalcost 2>/dev/null
DB="postgres://postgres@127.0.0.1:$PORT/bench_logical"
psql "$DB" -qc "ALTER TABLE pgbench_accounts DISABLE TRIGGER USER" \
    -c "CREATE PUBLICATION sc_bench FOR TABLE pgbench_accounts"
sc_update_script "$SC_TMP/update.sql"

slot() { # slot PLUGIN [options...]: streams a fresh slot to /dev/null
    local plugin=$1
    shift
    psql "$DB" -qAtc "SELECT pg_create_logical_replication_slot('sc_bench', '$plugin')" >/dev/null
    pg_recvlogical -d "$DB" -S sc_bench --start -f /dev/null -s 1 "$@" &
    RECV_PID=$!
    sleep 1
}
unslot() {
    kill "$RECV_PID" 2>/dev/null || true
    wait "$RECV_PID" 2>/dev/null || true
    RECV_PID=
    sleep 0.5
    psql "$DB" -qAtc "SELECT pg_drop_replication_slot('sc_bench')" >/dev/null
}
use() {
    case $1 in
        none) psql "$DB" -qc "ALTER TABLE pgbench_accounts REPLICA IDENTITY DEFAULT" ;;
        full) psql "$DB" -qc "ALTER TABLE pgbench_accounts REPLICA IDENTITY FULL" ;;
        decoded) use full; slot test_decoding ;;
        pgoutput) use full; slot pgoutput -o proto_version=1 -o publication_names=sc_bench ;;
        capture)
            psql "$DB" -qc "ALTER TABLE pgbench_accounts REPLICA IDENTITY DEFAULT" \
                -c "ALTER TABLE pgbench_accounts ENABLE TRIGGER USER"
            ;;
    esac
}
unuse() {
    case $1 in
        decoded | pgoutput) unslot ;;
        capture)
            psql "$DB" -qc "ALTER TABLE pgbench_accounts DISABLE TRIGGER USER" \
                -c "TRUNCATE smartcache.outbox"
            ;;
    esac
    psql "$DB" -qc "VACUUM pgbench_accounts" -c "CHECKPOINT"
}
tps() {
    pgbench -n -c "$1" -j "$1" -T "$SECS" -f "$SC_TMP/update.sql" "$DB" 2>/dev/null |
        awk '/^tps/ {printf "%.0f", $3}'
}
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }

VARIANTS=(none full decoded pgoutput capture)
echo "## Capture from the WAL against the installed trigger: pgbench single-row UPDATE, tps"
echo
echo "$SECS s per run, median of 3 interleaved runs, ratio to \`none\` of the same client count."
echo
echo "| clients | $(printf '%s | ' "${VARIANTS[@]}")runs |"
echo "|---|$(printf '%s' "${VARIANTS[@]/*/---|}")---|"
for clients in 1 8; do
    declare -A runs=()
    for _ in 1 2 3; do
        for v in "${VARIANTS[@]}"; do
            use "$v"
            runs[$v]="${runs[$v]:-} $(tps "$clients")"
            unuse "$v"
        done
    done
    row="| $clients |"
    # shellcheck disable=SC2086
    base=$(median ${runs[none]})
    for v in "${VARIANTS[@]}"; do
        # shellcheck disable=SC2086
        m=$(median ${runs[$v]})
        row="$row $m ($(awk -v a="$m" -v b="$base" 'BEGIN {printf "%.2f", a / b}')×) |"
    done
    all=""
    for v in "${VARIANTS[@]}"; do
        r=${runs[$v]# }
        all="$all $v: ${r// /, };"
    done
    echo "$row$all |"
    unset runs
done
