#!/usr/bin/env bash
# The full test suite: unit tests and integration tests on real lab machines, real sshd and real etcd.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CAPSTAN_MIRROR_DIR="${CAPSTAN_MIRROR_DIR:-/var/cache/capstan/mirror}"
status=0
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --profile ci || status=$?
else
  cargo test --workspace || status=$?
fi
# Tests clean up after themselves (also on failure); this catches anything a killed test left.
cargo run -q -p capstan-cli -- lab list --output json | grep -q '"name"' && {
  echo "test: labs left behind; removing them" >&2
  for lab in $(cargo run -q -p capstan-cli -- lab list --output json | python3 -c 'import json,sys; print(" ".join(l["name"] for l in json.load(sys.stdin)))'); do
    cargo run -q -p capstan-cli -- lab down --name "$lab" || true
  done
  status=1
}
exit $status
