#!/usr/bin/env bash
# Runs every test against real PostgreSQL and Redis: the servers at
# DATABASE_URL / REDIS_URL (defaults on 127.0.0.1) when they answer,
# throwaway ones otherwise. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/servers.sh
sc_ensure_servers
export SMARTCACHE_TEST_DATABASE_URL="$DATABASE_URL"
export SMARTCACHE_TEST_REDIS_URL="$REDIS_URL"
echo "testing against $SMARTCACHE_TEST_DATABASE_URL and $SMARTCACHE_TEST_REDIS_URL"
cargo test --workspace --all-features "$@"
