#!/usr/bin/env bash
# Runs every test against real PostgreSQL and Redis: the servers at
# DATABASE_URL / REDIS_URL (defaults on 127.0.0.1) when they answer,
# throwaway ones otherwise. Then runs the protocol core's, the library's and
# the daemon's invalidation suites again on a throwaway 3-master Redis
# Cluster, and the Python bindings' suite (scripts/test-python.sh); both
# skipped when arguments are given (they go to `cargo test`).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/servers.sh
sc_ensure_servers
export SMARTCACHE_TEST_DATABASE_URL="$DATABASE_URL"
export SMARTCACHE_TEST_REDIS_URL="$REDIS_URL"
echo "testing against $SMARTCACHE_TEST_DATABASE_URL and $SMARTCACHE_TEST_REDIS_URL"
cargo test --workspace --all-features "$@"
[ "$#" -eq 0 ] || exit 0

sc_start_cluster
echo "testing again against the Redis Cluster at $SC_CLUSTER_URL"
export SMARTCACHE_TEST_REDIS_URL="$SC_CLUSTER_URL" SMARTCACHE_TEST_REDIS_CLUSTER=1
cargo test --all-features -p smartcache-core -p smartcache --tests
cargo test -p smartcache-tests --test invalidation --test bookkeeping --test bad_input \
    --test observability --test shop --test admin

scripts/test-python.sh
