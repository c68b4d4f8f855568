#!/usr/bin/env bash
# Every benchmark in one command: builds the release binaries, runs
# smartcache-bench (hit path, commit -> key deleted, throughput, daemon
# resources; the hit path again on a throwaway Redis Cluster) and
# bench/pgbench.sh (write overhead). Uses the servers at
# DATABASE_URL / REDIS_URL or starts throwaway ones (scripts/servers.sh).
# The report goes to stdout and to target/bench-report.md; the latency CDF
# to bench/commit_to_delete_cdf.png.
#
# Usage: bench/run.sh [smartcache-bench flags, e.g. --quick or --runs 1]
# Env: PGBENCH_SECS (seconds per pgbench run, default 10; 0 skips pgbench),
# CLUSTER_BENCH (0 skips the hit path on a throwaway Redis Cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/servers.sh
sc_ensure_servers
cargo build --quiet --release -p smartcache-invalidator -p smartcache-bench
REPORT=target/bench-report.md
{
    echo "machine: $(nproc) cores, $(uname -sr); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "PostgreSQL: $(psql "$DATABASE_URL" -Atc 'SHOW server_version'), Redis: $(redis-cli -u "$REDIS_URL" INFO server | awk -F: '/^redis_version/ {print $2}' | tr -d '\r')"
    echo
    target/release/smartcache-bench "$@"
    if [ "${CLUSTER_BENCH:-1}" != 0 ]; then
        sc_start_cluster
        echo "## Hit path on a Redis Cluster (3 primaries on this machine)"
        echo
        target/release/smartcache-bench --only hit --redis-cluster --redis-url "$SC_CLUSTER_URL"
    fi
    if [ "${PGBENCH_SECS:-10}" != 0 ]; then
        echo "## Write overhead (bench/pgbench.sh ${PGBENCH_SECS:-10})"
        echo
        bench/pgbench.sh "${PGBENCH_SECS:-10}"
    fi
    echo
    echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
} 2>&1 | tee "$REPORT"
