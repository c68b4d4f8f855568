#!/usr/bin/env bash
# Row-level vs statement-level (transition tables) capture triggers.
#
# Measures the trigger alone (doorbell off, no daemon) on pgbench_accounts
# (100k rows) with the same outbox format:
#   none   no trigger
#   row    smartcache's generated row trigger (what install creates)
#   stmt   a statement trigger with transition tables that inserts the same
#          outbox rows set-wise (INSERT … SELECT FROM old JOIN new)
# for single-row UPDATEs (pgbench, 1 and 8 clients) and for one UPDATE of
# all 100,000 rows (median of 3).
# Usage: bench/trigger_designs.sh [seconds per pgbench run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/servers.sh
. bench/pgbench_lib.sh
sc_ensure_servers
SECS=${1:-10}
DB=sc_trigger_designs
ADMIN="$DATABASE_URL"
URL="${ADMIN%/*}/$DB"
cargo build --quiet --release -p smartcache-invalidator
trap 'psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true; sc_cleanup' EXIT
CFG=$(mktemp /tmp/sc-designs.XXXXXX.toml)
sc_pgbench_db "$DB" "$CFG" designs
rm -f "$CFG"
psql "$URL" -q <<'SQL'
UPDATE smartcache.wakeup SET idle = false;
ALTER TABLE pgbench_accounts DISABLE TRIGGER smartcache_capture;
CREATE FUNCTION public.stmt_capture() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO smartcache.outbox (table_schema, table_name, op, old_key, new_key, old_row, new_row, created_at)
    SELECT TG_TABLE_SCHEMA, TG_TABLE_NAME, 'U',
           ARRAY[to_jsonb(o.aid) #>> '{}'], ARRAY[to_jsonb(n.aid) #>> '{}'],
           jsonb_build_object('aid', to_jsonb(o.aid) #>> '{}', 'bid', to_jsonb(o.bid) #>> '{}'),
           jsonb_build_object('aid', to_jsonb(n.aid) #>> '{}', 'bid', to_jsonb(n.bid) #>> '{}'),
           clock_timestamp()
    FROM old_rows o JOIN new_rows n USING (aid);
    PERFORM pg_notify(channel, '') FROM smartcache.wakeup WHERE idle;
    RETURN NULL;
END
$fn$;
CREATE TRIGGER stmt_capture AFTER UPDATE ON pgbench_accounts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.stmt_capture();
ALTER TABLE pgbench_accounts DISABLE TRIGGER stmt_capture;
SQL
SCRIPT=$(mktemp /tmp/sc-designs.XXXXXX.sql)
sc_update_script "$SCRIPT"

use() {
    psql "$URL" -q -c "ALTER TABLE pgbench_accounts DISABLE TRIGGER smartcache_capture" \
        -c "ALTER TABLE pgbench_accounts DISABLE TRIGGER stmt_capture"
    case $1 in
        row) psql "$URL" -qc "ALTER TABLE pgbench_accounts ENABLE TRIGGER smartcache_capture" ;;
        stmt) psql "$URL" -qc "ALTER TABLE pgbench_accounts ENABLE TRIGGER stmt_capture" ;;
    esac
}
reset() { psql "$URL" -q -c "TRUNCATE smartcache.outbox" -c "VACUUM ANALYZE pgbench_accounts"; }
tps() {
    reset
    pgbench -n -c "$1" -j "$1" -T "$SECS" -f "$SCRIPT" "$URL" 2>/dev/null | awk '/^tps/ {printf "%.0f", $3}'
}
bulk_ms() {
    local runs=()
    for _ in 1 2 3; do
        reset
        local t0 t1
        t0=$(date +%s%N)
        psql "$URL" -qc "UPDATE pgbench_accounts SET abalance = abalance + 1"
        t1=$(date +%s%N)
        runs+=($(( (t1 - t0) / 1000000 )))
    done
    printf '%s\n' "${runs[@]}" | sort -n | sed -n 2p
}

declare -A R
for d in none row stmt; do
    use "$d"
    R[$d,1]=$(tps 1)
    R[$d,8]=$(tps 8)
    R[$d,bulk]=$(bulk_ms)
done
rm -f "$SCRIPT"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2fx", a/b}'; }
echo
echo "capture trigger designs, doorbell off, ${SECS}s pgbench runs"
printf '%-6s %22s %22s %26s\n' design "1 client tps" "8 clients tps" "UPDATE 100k rows (ms)"
for d in none row stmt; do
    printf '%-6s %22s %22s %26s\n' "$d" \
        "${R[$d,1]} ($(ratio "${R[$d,1]}" "${R[none,1]}"))" \
        "${R[$d,8]} ($(ratio "${R[$d,8]}" "${R[none,8]}"))" \
        "${R[$d,bulk]} ($(ratio "${R[$d,bulk]}" "${R[none,bulk]}"))"
done
