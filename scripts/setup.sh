#!/usr/bin/env bash
# Installs everything capstan's build, tests and demo need on a Debian 12 / Ubuntu machine (as root).
# Idempotent: re-running only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "error: run as root (the lab uses systemd-nspawn, overlay mounts and bridges)" >&2
  echo "hint: sudo bash $0" >&2
  exit 1
fi

# libprotobuf-dev: protoc's well-known types (google/protobuf/*.proto), which etcd-client's build needs; only a
# Recommends of protobuf-compiler, so --no-install-recommends would leave it out.
# busybox-static: the static busybox the nodes lab test packs into an OCI image for containerd.
# haproxy, keepalived: the API endpoint's unit tests validate rendered configs with `haproxy -c` and
# `keepalived --config-test`; the policy-rc.d below keeps their services from starting here.
# prometheus: its `promtool check config` validates the monitoring component's rendered Prometheus config
# (the service stays stopped, like haproxy's); `promtool check rules`/`test rules` the alert rules.
# prometheus-alertmanager: its `amtool check-config` validates the rendered Alertmanager config.
# openssl, kubectl: the Kubernetes PKI test checks every certificate with openssl and parses every
# kubeconfig with `kubectl config view`.
packages=(protobuf-compiler libprotobuf-dev debootstrap systemd-container iproute2 openssh-client openssh-server
          age etcd-server etcd-client ca-certificates curl python3-pip sudo busybox-static haproxy keepalived
          prometheus prometheus-alertmanager openssl kubectl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  # Never let package scripts start services on the build machine (no init system here; sshd is
  # started by the tests themselves on a private port).
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; created_policy=1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$created_policy" = 1 ] && rm -f "$policy"
  echo "setup: packages installed in ${SECONDS}s" >&2
fi

# etcd-client's build compiles .proto files that import protoc's well-known types: check that protoc finds
# them here, so a missing package fails now with its name instead of minutes into the first build.
wkt_check=$(mktemp -d)
printf 'syntax = "proto3";\nimport "google/protobuf/descriptor.proto";\n' >"$wkt_check/check.proto"
if ! protoc -I"$wkt_check" --descriptor_set_out=/dev/null "$wkt_check/check.proto" 2>/dev/null; then
  rm -rf "$wkt_check"
  echo "error: protoc cannot find google/protobuf/descriptor.proto (protoc's well-known types)" >&2
  echo "hint: apt-get install libprotobuf-dev" >&2
  exit 1
fi
rm -rf "$wkt_check"

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found" >&2
  echo "hint: install Rust with rustup (https://rustup.rs), then re-run this script" >&2
  exit 1
fi

# A real S3 server for the backup tests (moto >= 5.2.5: older versions answer multipart uploads in a way
# the AWS SDK rejects).
if ! python3 -c 'import sys, moto, flask; v = tuple(int(x) for x in moto.__version__.split(".")[:3]); sys.exit(v < (5, 2, 5))' 2>/dev/null; then
  echo "setup: installing moto[server] (S3 server for tests)" >&2
  python3 -m pip install -q --disable-pip-version-check 'moto[server]>=5.2.5'
fi

# The lab's artifact mirror (etcd, prometheus, ... laid out like upstream releases). Rebuilt piece by piece
# when missing (about 1.5 minutes from empty).
mirror_start=$SECONDS
# The mirror is made from Debian packages: apt needs its package lists (a fresh machine may have none).
if ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then apt-get update -qq; fi
bash lab/mirror/build-mirror.sh "${CAPSTAN_MIRROR_DIR:-/var/cache/capstan/mirror}"
if [ $((SECONDS - mirror_start)) -gt 5 ]; then echo "setup: artifact mirror ready in $((SECONDS - mirror_start))s" >&2; fi

# The lab's local apt repository: Debian packages capstan installs on hosts (lab/mirror/debs.txt), for lab
# machines that reach no Debian mirror.
bash lab/mirror/build-debs.sh "${CAPSTAN_CACHE_DIR:-/var/cache/capstan}/debs"

# etcd 3.5.1 for the local etcd tests (3.4.23 comes from Debian's etcd-server): the official binaries from
# the mirror's release tarball.
mirror="${CAPSTAN_MIRROR_DIR:-/var/cache/capstan/mirror}"
if [ ! -x /opt/etcd-3.5.1/etcd ] || [ ! -x /opt/etcd-3.5.1/etcdctl ]; then
  rm -rf /opt/etcd-3.5.1.tmp && mkdir -p /opt/etcd-3.5.1.tmp
  tar -xzf "$mirror/etcd-io/etcd/releases/download/v3.5.1/etcd-v3.5.1-linux-amd64.tar.gz" \
      -C /opt/etcd-3.5.1.tmp --strip-components=1
  rm -rf /opt/etcd-3.5.1 && mv /opt/etcd-3.5.1.tmp /opt/etcd-3.5.1
fi
