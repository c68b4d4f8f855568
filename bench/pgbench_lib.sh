# Sourced by the pgbench-based scripts (pgbench.sh, capture_cost.sh),
# after scripts/servers.sh: the same database, config and
# UPDATE for all, so their figures compare.

# sc_pgbench_db DB CONFIG NAMESPACE: (re)creates database DB with pgbench's
# tables (100k accounts), writes a config watching pgbench_accounts with
# `account:{aid}` and `branch:{bid}` to CONFIG, and installs smartcache.
sc_pgbench_db() {
    local url="${DATABASE_URL%/*}/$1"
    psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"
    pgbench -q -i -s 1 "$url" >/dev/null 2>&1
    printf '[[tables]]\nname = "pgbench_accounts"\nkeys = ["account:{aid}", "branch:{bid}"]\n' > "$2"
    target/release/smartcache-invalidator --config "$2" --database-url "$url" \
        --redis-url "$REDIS_URL" --namespace "$3" install >/dev/null
}

# sc_update_script FILE: writes pgbench's single-row UPDATE by primary key.
sc_update_script() {
    printf '\\set aid random(1, 100000)\nUPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n' > "$1"
}
