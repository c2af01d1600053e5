#!/usr/bin/env bash
# Put user-supplied Kubernetes release tarballs into the artifact mirror, each verified against the
# sha512 pinned in capstan's release table (provisioner/data/upstream-releases.yaml, copied from the
# official CHANGELOG-1.NN.md). Kubernetes binaries cannot be downloaded on the build machines, so the
# user brings them:
#
#   CAPSTAN_KUBE_ARTIFACTS=DIR lab/mirror/add-kube-artifacts.sh [OUTDIR]   (default /var/cache/capstan/mirror)
#
# DIR holds kubernetes-server-linux-ARCH.tar.gz and/or kubernetes-node-linux-ARCH.tar.gz, directly or
# in subdirectories (one per version, as downloaded from https://dl.k8s.io/vX.Y.Z/). A file's version
# is found from its sha512: a tarball that matches no pinned release is refused, never mirrored.
# lab/mirror/build-mirror.sh runs this when CAPSTAN_KUBE_ARTIFACTS is set; SHA256SUMS is rewritten
# by whichever script runs last.
set -euo pipefail

OUTDIR="${1:-${CAPSTAN_CACHE_DIR:-/var/cache/capstan}/mirror}"
SRC="${CAPSTAN_KUBE_ARTIFACTS:?set CAPSTAN_KUBE_ARTIFACTS to the directory holding the Kubernetes release tarballs}"
# CAPSTAN_RELEASE_TABLE: another table (tests); by default capstan's own.
TABLE="${CAPSTAN_RELEASE_TABLE:-$(cd "$(dirname "$0")/../.." && pwd)/provisioner/data/upstream-releases.yaml}"

log() { printf 'add-kube-artifacts: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ -d "$SRC" ] || die "CAPSTAN_KUBE_ARTIFACTS=$SRC is not a directory"
[ -f "$TABLE" ] || die "release table $TABLE not found"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"

# pinned: "component arch version sha512" for every kubernetes-* row with sha512 pins.
pinned() {
    awk '
        /^[^ #][^:]*:$/ { component = substr($0, 1, length($0) - 1); block = ""; next }
        /^  sha(256|512):/ { block = $1; next }
        /^    [a-z0-9]+:$/ { arch = $1; sub(":", "", arch); next }
        /^      [0-9.]+: [0-9a-f]+$/ {
            if (component ~ /^kubernetes-/ && block == "sha512:") { v = $1; sub(":", "", v); print component, arch, v, $2 }
        }
    ' "$TABLE"
}

PINS="$(pinned)"
[ -n "$PINS" ] || die "no kubernetes-* sha512 pins in $TABLE"
found=0
while IFS= read -r -d '' file; do
    name="$(basename "$file")"
    sum="$(sha512sum "$file" | awk '{print $1}')"
    match="$(awk -v s="$sum" '$4 == s' <<<"$PINS")"
    if [ -z "$match" ]; then
        die "$file (sha512 $sum) matches no pinned release; pinned: $(awk '{print $1 "-" $3 "-" $2}' <<<"$PINS" | tr '\n' ' ')"
    fi
    read -r component arch version _ <<<"$match"
    [ "$name" = "$component-linux-$arch.tar.gz" ] || die "$file has the sha512 of $component-linux-$arch.tar.gz $version but is named $name"
    dest="$OUTDIR/v$version/$name"
    if [ -f "$dest" ] && [ "$(sha512sum "$dest" | awk '{print $1}')" = "$sum" ]; then
        log "$component $version ($arch) present"
    else
        mkdir -p "$(dirname "$dest")"
        cp --reflink=auto "$file" "$dest.tmp"
        mv "$dest.tmp" "$dest"
        log "verified and wrote v$version/$name (sha512 pinned)"
    fi
    found=$((found + 1))
done < <(find "$SRC" -type f -name 'kubernetes-*-linux-*.tar.gz' -print0)
[ "$found" -gt 0 ] || die "no kubernetes-{server,node}-linux-ARCH.tar.gz under $SRC"

(cd "$OUTDIR" && find . -type f ! -name SHA256SUMS ! -name '*.tmp' | sed 's|^\./||' | LC_ALL=C sort |
    xargs -r sha256sum >SHA256SUMS.tmp && mv SHA256SUMS.tmp SHA256SUMS)
log "$found Kubernetes tarball(s) in $OUTDIR"
