#!/usr/bin/env bash
# Builds the Python bindings with maturin into a virtual environment
# (target/venv, packages from PyPI) and runs their pytest suite against real
# PostgreSQL, Redis and the smartcache-invalidator daemon built by
# `cargo build` or `cargo test`. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/servers.sh
sc_ensure_servers
venv="${SMARTCACHE_VENV:-target/venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check "maturin>=1.9.4,<2"
VIRTUAL_ENV="$PWD/$venv" PATH="$PWD/$venv/bin:$PATH" \
    maturin develop --release --quiet --extras test,bench -m bindings/python/Cargo.toml
[ -x target/debug/smartcache-invalidator ] || [ -x target/release/smartcache-invalidator ] ||
    cargo build -p smartcache-invalidator
ls target/*/examples/shop >/dev/null 2>&1 || cargo build -p smartcache --example shop --features axum
export SMARTCACHE_TEST_DATABASE_URL="$DATABASE_URL" SMARTCACHE_TEST_REDIS_URL="$REDIS_URL"
unset SMARTCACHE_TEST_REDIS_CLUSTER
echo "testing the Python bindings against $DATABASE_URL and $REDIS_URL"
cd bindings/python
"../../$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
