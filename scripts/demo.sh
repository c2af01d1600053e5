#!/usr/bin/env bash
# The demo: a local lab of 3 real machines → HA etcd with mutual TLS → an encrypted backup to a local
# directory → verify it → a restore drill into a fresh lab with its report. Re-runnable: it replaces its own
# lab and keeps earlier backups.
# With CAPSTAN_KUBE_ARTIFACTS=DIR (the official kubernetes-server/node-linux-amd64.tar.gz of capstan's
# default Kubernetes version, which cannot be downloaded here) the machines are also the control plane, and
# the demo ends with `kubectl get nodes` through the HA endpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -n "${CAPSTAN_BIN:-}" ]; then
  capstan="$CAPSTAN_BIN"   # a capstan binary that is already built (the demo's own test uses this)
else
  # Cargo's own progress line shows what is compiling; only the first build is slow.
  echo "demo: building capstan (the first build compiles ~450 crates: about 8 minutes on 2 cores; later builds take seconds)" >&2
  cargo build -p capstan-cli
  capstan="${CARGO_TARGET_DIR:-$PWD/target}/debug/capstan"
fi
export CAPSTAN_MIRROR_DIR="${CAPSTAN_MIRROR_DIR:-/var/cache/capstan/mirror}"
lab="${CAPSTAN_DEMO_LAB:-demo}"
roles="${CAPSTAN_DEMO_ROLES:-etcd,node}"
kube=""
if [ -n "${CAPSTAN_KUBE_ARTIFACTS:-}" ]; then
  kube=1
  roles="${CAPSTAN_DEMO_ROLES:-etcd,control_plane,node}"
fi
demo_dir="${CAPSTAN_DEMO_DIR:-/var/lib/capstan/demo}"
mkdir -p "$demo_dir"
chmod 700 "$demo_dir"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }

if [ -n "$kube" ]; then
  echo "demo: adding the Kubernetes release tarballs in $CAPSTAN_KUBE_ARTIFACTS to the lab mirror (each checked against its pinned sha512)" >&2
  bash lab/mirror/add-kube-artifacts.sh "$CAPSTAN_MIRROR_DIR"
fi

step "Booting a lab of 3 Debian 12 machines (systemd + sshd under systemd-nspawn), roles: $roles"
$capstan lab down --name "$lab" >/dev/null 2>&1 || true
inventory=$($capstan lab up --name "$lab" --hosts 3 --roles "$roles")

step "Validating the inventory ($inventory)"
$capstan -i "$inventory" inventory check

step "Connecting to every host over SSH (strict host keys), gathering facts, preflight checks"
$capstan -i "$inventory" check

step "What apply would do (dry run)"
$capstan -i "$inventory" plan | tail -n 15

step "Installing a 3-member etcd cluster with mutual TLS, then containerd and the pod network on every machine${kube:+, then the Kubernetes control plane behind the HA endpoint, kubelets and CoreDNS}"
$capstan -i "$inventory" apply

step "Applying again: nothing to change"
$capstan -i "$inventory" apply

step "Cluster status"
$capstan -i "$inventory" status

step "Operator credentials for etcdctl"
$capstan -i "$inventory" etcd credentials --out "$demo_dir/etcd-credentials"

step "Writing a few keys over mutual TLS with etcdctl and the operator credentials"
creds="$demo_dir/etcd-credentials"
etcdctl_tls() {
  ETCDCTL_API=3 etcdctl --cacert "$creds/ca.crt" --cert "$creds/client.crt" --key "$creds/client.key" \
    --endpoints "$(cat "$creds/endpoints")" "$@"
}
for i in 1 2 3; do etcdctl_tls put "demo/key-$i" "value-$i" >/dev/null; done
etcdctl_tls get --prefix demo/ --keys-only | grep .

key="$demo_dir/backup-identity.txt"
if [ ! -f "$key" ]; then
  step "Generating an age key for the demo's backups: $key (keep such keys offline)"
  (umask 077 && age-keygen -o "$key" 2>/dev/null)
fi
recipient=$(age-keygen -y "$key")
target="file://$demo_dir/backups"

step "Encrypted backup (etcd snapshot + cluster CA + inventory) to $target"
id=$($capstan -i "$inventory" backup create --target "$target" --recipient "$recipient")

step "Verifying backup $id with the identity (hashes, decryption, etcd's own snapshot hash)"
$capstan backup verify "$id" --target "$target" --identity "$key"
$capstan backup list --target "$target"

step "Disaster-recovery drill: restore backup $id into a fresh lab, verify, measure RTO/RPO, tear it down"
$capstan drill --from "$id" --target "$target" --identity "$key" --report "$demo_dir/drill-report" \
  --expect-key 'demo/*' --expect-key demo/key-2
echo "drill report: $demo_dir/drill-report.md and $demo_dir/drill-report.json" >&2

if [ -n "$kube" ]; then
  step "Kubernetes: the RBAC-bound admin kubeconfig (capstan kubeconfig), then kubectl get nodes through the HA endpoint"
  $capstan -i "$inventory" kubeconfig --out "$demo_dir/admin.conf"
  kubectl --kubeconfig "$demo_dir/admin.conf" get nodes -o wide
fi

cat >&2 <<NEXT

Done. The lab is still running. Try next:
  $capstan -i $inventory status --output json
  $capstan lab stop --name $lab $lab-2 && $capstan -i $inventory status     # a member down
  $capstan lab start --name $lab $lab-2 && $capstan -i $inventory apply
  ETCDCTL_API=3 etcdctl --cacert $demo_dir/etcd-credentials/ca.crt --cert $demo_dir/etcd-credentials/client.crt \\
      --key $demo_dir/etcd-credentials/client.key --endpoints \$(cat $demo_dir/etcd-credentials/endpoints) put hello world
  $capstan backup list --target $target
  $capstan -i $inventory restore --from latest --target $target --identity $key   # refused: the cluster is live
  $capstan lab down --name $lab                                             # remove everything
NEXT

# Where to look when the demo's lab has `monitoring` hosts (CAPSTAN_DEMO_ROLES or a changed `--roles`).
monitoring_hosts=$(awk '/address:/ {address = $2} /roles:/ && /monitoring/ {print address}' "$inventory")
if [ -n "$monitoring_hosts" ]; then
  echo "Monitoring (docs/monitoring.md):" >&2
  for ip in $monitoring_hosts; do
    echo "  Prometheus http://$ip:9090/  Alertmanager http://$ip:9093/  (amtool: ssh in, amtool alert --alertmanager.url=http://$ip:9093)" >&2
  done
fi
