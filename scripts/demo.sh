#!/usr/bin/env bash
# Runs the demo of the main job: a committed change deletes exactly the
# affected Redis keys. Starts throwaway servers if none answer.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/servers.sh
sc_ensure_servers
cargo run --quiet --release -p smartcache-invalidator --example demo
