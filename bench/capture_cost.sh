#!/usr/bin/env bash
# What each part of the capture function costs a single-row UPDATE, in
# PostgreSQL CPU per transaction (every server process: backends, WAL
# writer, ...; read from /proc, so the server must run on this machine).
# CPU time, unlike tps, barely moves when other work shares the cores.
#
# pgbench_accounts (100k rows) watched with `account:{aid}` and
# `branch:{bid}`, no daemon, doorbell quiet; 2 clients x 10,000 UPDATEs by
# primary key per run, median of 3 runs per variant:
#   none          no trigger (the baseline)
#   installed        the capture function `install` writes (as a superuser:
#                    the column check once per session)
#   every-statement  the column check on every statement (what install
#                    writes when its role may not create event triggers)
#   no-check         without any check of the captured columns
#   insert-only      no check, no doorbell read, no empty-statement guard
#   trigger-only     the trigger fires (transition tables, SECURITY
#                    DEFINER) and the function does nothing
#   outbox-floor     the function writes one constant outbox row: the
#                    least any capture writing in the writer's transaction
#                    can cost
# Each variant is also timed as pgbench sees it: tps at 8 clients, 8 s.
# Then the same variants inside one backend: a procedure running 20,000
# single-row UPDATEs, each committed (synchronous_commit off), timed with
# clock_timestamp(): no client, protocol or fsync in the figure, so it
# shows what the capture itself costs a transaction, with little noise.
# Usage: bench/capture_cost.sh [transactions per client, default 10000]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/servers.sh
. bench/pgbench_lib.sh
sc_ensure_servers
N=${1:-10000}
DB=sc_capture_cost
ADMIN="$DATABASE_URL"
URL="${ADMIN%/*}/$DB"
cargo build --quiet --release -p smartcache-invalidator
WORK=$(mktemp -d /tmp/sc-capture-cost.XXXXXX)
trap 'psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true; rm -rf "$WORK"; sc_cleanup' EXIT
sc_pgbench_db "$DB" "$WORK/config.toml" capturecost
psql "$URL" -qc "ALTER TABLE pgbench_accounts SET (autovacuum_enabled = false)" \
    -c "ALTER TABLE smartcache.outbox SET (autovacuum_enabled = false)"
FN='smartcache."capture:public.pgbench_accounts"'
psql "$URL" -Atc "SELECT pg_get_functiondef('$FN'::regproc)" > "$WORK/installed.sql"
sc_update_script "$WORK/update.sql"

# The variants, by editing the installed definition.
perl -0pe 's/epoch := .*?IS NOT TRUE THEN\n\s*(SELECT pg_catalog\.array_agg.*?attisdropped\);).*?END IF;\n\s*END IF;/$1/s' \
    "$WORK/installed.sql" > "$WORK/every-statement.sql"
perl -0pe 's/epoch := .*?IS NOT TRUE THEN.*?END IF;\n\s*END IF;/broken := NULL;/s' \
    "$WORK/installed.sql" > "$WORK/no-check.sql"
perl -0pe 's/IF pg_catalog\.pg_sequence_last_value\(.smartcache\.doorbell.*?END IF;\n(\s*)RETURN/$1RETURN/s; s/ WHERE EXISTS \(SELECT FROM smartcache_(new|old)\);/;/g' \
    "$WORK/no-check.sql" > "$WORK/insert-only.sql"
for v in every-statement no-check insert-only; do
    cmp -s "$WORK/installed.sql" "$WORK/$v.sql" && { echo "variant $v: the installed definition changed shape; fix its edit" >&2; exit 1; }
done
perl -0pe 's/AS \$function\$.*\$function\$/AS \$function\$BEGIN RETURN NULL; END\$function\$/s' \
    "$WORK/installed.sql" > "$WORK/trigger-only.sql"
perl -0pe "s/AS \\\$function\\\$.*\\\$function\\\$/AS \\\$function\\\$BEGIN INSERT INTO smartcache.outbox (table_schema, table_name, op, created_at) VALUES ('public', 'pgbench_accounts', 'T', pg_catalog.clock_timestamp()); RETURN NULL; END\\\$function\\\$/s" \
    "$WORK/installed.sql" > "$WORK/outbox-floor.sql"

# Postmaster PID, from its data directory.
PM=$(head -1 "$(psql "$URL" -Atc "SHOW data_directory")/postmaster.pid" 2>/dev/null || true)
[ -n "$PM" ] && [ -r "/proc/$PM/stat" ] || { echo "PostgreSQL must run on this machine (no /proc entry for its postmaster)" >&2; exit 1; }
# CPU ticks of the server: its processes alive now, plus the children it reaped.
ticks() {
    local t f
    read -ra f < "/proc/$PM/stat"
    t=$(( f[13] + f[14] + f[15] + f[16] ))
    for c in $(cat /proc/"$PM"/task/*/children); do
        if read -ra f < "/proc/$c/stat" 2>/dev/null; then t=$(( t + f[13] + f[14] )); fi
    done
    echo "$t"
}
HZ=$(getconf CLK_TCK)
use() {
    if [ "$1" = none ]; then
        psql "$URL" -qc "ALTER TABLE pgbench_accounts DISABLE TRIGGER USER"
    else
        psql "$URL" -q -c "ALTER TABLE pgbench_accounts ENABLE TRIGGER USER" -f "$WORK/$1.sql"
    fi
}
run_us() {
    psql "$URL" -qc "TRUNCATE smartcache.outbox" -c "VACUUM pgbench_accounts" >/dev/null
    sleep 1
    local a b
    a=$(ticks)
    pgbench -n -c 2 -j 2 -t "$N" -f "$WORK/update.sql" "$URL" >/dev/null 2>&1
    sleep 1
    b=$(ticks)
    echo $(( (b - a) * 1000000 / HZ / (2 * N) ))
}

# tps at 8 clients, as a user's writers see it.
tps8() {
    psql "$URL" -qc "TRUNCATE smartcache.outbox" -c "VACUUM pgbench_accounts" >/dev/null
    pgbench -n -c 8 -j 8 -T 8 -f "$WORK/update.sql" "$URL" 2>/dev/null | awk '/^tps/ {printf "%.0f", $3}'
}

# µs per committed UPDATE inside one backend.
loop_us() {
    psql "$URL" -qc "TRUNCATE smartcache.outbox" -c "VACUUM pgbench_accounts" >/dev/null
    psql "$URL" -At <<'SQL' | tail -1
SET synchronous_commit = off;
CREATE TEMP TABLE took (us float8);
CREATE OR REPLACE PROCEDURE pg_temp.updates() LANGUAGE plpgsql AS $$
DECLARE started timestamptz := clock_timestamp();
BEGIN
    FOR i IN 1..20000 LOOP
        UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1 + (i * 7919) % 100000;
        COMMIT;
    END LOOP;
    INSERT INTO took VALUES (extract(epoch FROM clock_timestamp() - started) * 1e6 / 20000);
END $$;
CALL pg_temp.updates();
SELECT round(us) FROM took;
SQL
}

VARIANTS=(none installed every-statement no-check insert-only trigger-only outbox-floor)
declare -A R L T
for _ in 1 2 3; do
    for v in "${VARIANTS[@]}"; do
        use "$v"
        R[$v]="${R[$v]:-} $(run_us)"
        L[$v]="${L[$v]:-} $(loop_us)"
        T[$v]="${T[$v]:-} $(tps8)"
    done
done
median() { tr ' ' '\n' <<< "$1" | grep . | sort -n | sed -n 2p; }
base=$(median "${R[none]}")
echo
echo "PostgreSQL CPU per single-row UPDATE transaction, µs (median of 3; the runs)"
echo
echo "| variant | µs | over no trigger | ratio | runs |"
echo "|---|---|---|---|---|"
for v in "${VARIANTS[@]}"; do
    m=$(median "${R[$v]}")
    printf '| %s | %s | %+d | %s | %s |\n' "$v" "$m" $(( m - base )) \
        "$(awk -v a="$base" -v b="$m" 'BEGIN {printf "%.2fx", a/b}')" "${R[$v]# }"
done
lbase=$(median "${L[none]}")
echo
echo "Inside one backend (procedure loop, COMMIT per UPDATE, synchronous_commit off), µs per transaction"
echo
echo "| variant | µs | over no trigger | runs |"
echo "|---|---|---|---|"
for v in "${VARIANTS[@]}"; do
    m=$(median "${L[$v]}")
    printf '| %s | %s | %+d | %s |\n' "$v" "$m" $(( m - lbase )) "${L[$v]# }"
done
tbase=$(median "${T[none]}")
echo
echo "pgbench, 8 clients, 8 s: tps (median of 3) and the ratio to no trigger"
echo
echo "| variant | tps | ratio | runs |"
echo "|---|---|---|---|"
for v in "${VARIANTS[@]}"; do
    m=$(median "${T[$v]}")
    printf '| %s | %s | %s | %s |\n' "$v" "$m" \
        "$(awk -v a="$tbase" -v b="$m" 'BEGIN {printf "%.2fx", b/a}')" "${T[$v]# }"
done
