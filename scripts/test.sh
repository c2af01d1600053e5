#!/usr/bin/env bash
# The full test suite: unit tests and integration tests on real lab machines, real sshd, real etcd and a real
# S3 server. Run as root on Debian 12 / Ubuntu; installs what it needs first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CAPSTAN_MIRROR_DIR="${CAPSTAN_MIRROR_DIR:-/var/cache/capstan/mirror}"

# Labs are directories under the lab state root (see docs/lab.md).
lab_root="${CAPSTAN_LAB_ROOT:-/var/lib/capstan/lab}"
labs() { ls -1 "$lab_root" 2>/dev/null | sort; }
before=$(labs)

status=0
echo "test: building the workspace and its tests (the first build takes about 8 minutes on 2 cores; cargo shows its progress), then running them" >&2
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --profile ci || status=$?
else
  cargo test --workspace || status=$?
fi

# Tests clean up after themselves, also on failure. A lab that appeared during the run and is still
# there means a test leaked it: remove it and fail.
leaked=$(comm -13 <(echo "$before") <(labs) | grep . || true)
if [ -n "$leaked" ]; then
  echo "test: labs left behind by the tests: $leaked" >&2
  # The test build made the binary; building it separately would rebuild dependencies with other features.
  capstan="${CARGO_TARGET_DIR:-$PWD/target}/debug/capstan"
  for lab in $leaked; do "$capstan" lab down --name "$lab" || true; done
  status=1
fi
exit $status
