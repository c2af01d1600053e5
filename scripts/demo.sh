#!/usr/bin/env bash
# The demo: a local lab of 3 real machines, checked end to end. Re-runnable: it replaces its own lab.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build -q -p capstan-cli
capstan=./target/debug/capstan
export CAPSTAN_MIRROR_DIR="${CAPSTAN_MIRROR_DIR:-/var/cache/capstan/mirror}"
lab=demo

step() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }

step "Booting a lab of 3 Debian 12 machines (systemd + sshd under systemd-nspawn)"
$capstan lab down --name "$lab" >/dev/null 2>&1 || true
inventory=$($capstan lab up --name "$lab" --hosts 3)
echo "inventory: $inventory" >&2

step "Validating the inventory"
$capstan -i "$inventory" inventory check

step "Connecting to every host over SSH (strict host keys), gathering facts, preflight checks"
$capstan -i "$inventory" check

cat >&2 <<NEXT

Done. The lab is still running. Try next:
  $capstan -i $inventory inventory show          # the resolved model
  $capstan lab ssh --name $lab $lab-1 -- systemctl is-system-running
  $capstan lab isolate --name $lab $lab-2 && $capstan -i $inventory check   # see a host go unreachable
  $capstan lab heal --name $lab $lab-2
  $capstan lab down --name $lab                  # remove everything
NEXT
