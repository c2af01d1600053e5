#!/usr/bin/env bash
# Build the lab's local flat apt repository: the packages listed in lab/mirror/debs.txt and everything they
# depend on (not recommends), downloaded from this machine's configured Debian mirror, indexed with
# dpkg-scanpackages.
#
#   lab/mirror/build-debs.sh [OUTDIR]     (default /var/cache/capstan/debs)
#
# Lab machines mount OUTDIR read-only at /srv/capstan-debs and the lab inventory names it in
# `artifacts.apt_source` ("deb [trusted=yes] file:/srv/capstan-debs ./"). Rebuilt only when the list
# changed; a package already downloaded is not downloaded again.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
OUTDIR="${1:-${CAPSTAN_CACHE_DIR:-/var/cache/capstan}/debs}"
list="$here/debs.txt"

log() { printf 'build-debs: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
for tool in apt-get apt-cache dpkg-scanpackages sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found in PATH (dpkg-scanpackages: apt-get install dpkg-dev)"
done

mapfile -t wanted < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$list" | grep . | sort -u)
[ ${#wanted[@]} -gt 0 ] || die "$list lists no package"
stamp="$(printf '%s\n' "${wanted[@]}" | sha256sum | cut -c1-16)"
if [ -f "$OUTDIR/Packages" ] && [ "$(cat "$OUTDIR/.capstan-list" 2>/dev/null)" = "$stamp" ]; then
  log "apt repository present ($OUTDIR)"
  exit 0
fi

mkdir -p "$OUTDIR"
# Real packages in the dependency closure (virtual ones, shown as <name>, are satisfied by their
# providers, which apt-cache lists too).
mapfile -t closure < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
  --no-replaces --no-enhances "${wanted[@]}" | grep -v '^ ' | grep -v '^<' | sed 's/:any$//' | sort -u)
missing=()
for pkg in "${closure[@]}"; do
  compgen -G "$OUTDIR/${pkg}_*.deb" >/dev/null || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  work="$(mktemp -d "$OUTDIR/.download.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get download -q -o APT::Sandbox::User=root "${missing[@]}" >/dev/null) \
    || die "apt-get download failed (run apt-get update?)"
  mv "$work"/*.deb "$OUTDIR"/
  log "downloaded ${#missing[@]} package(s)"
fi
(cd "$OUTDIR" && dpkg-scanpackages --multiversion . /dev/null 2>/dev/null >Packages.tmp && mv Packages.tmp Packages)
printf '%s\n' "$stamp" >"$OUTDIR/.capstan-list"
log "apt repository ready: ${#closure[@]} package(s) for ${wanted[*]} in $OUTDIR"
