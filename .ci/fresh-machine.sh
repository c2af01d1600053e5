#!/usr/bin/env bash
# Turns this machine back into a fresh one before CI runs the suite, so that CI proves on every run that the
# README's commands need nothing beyond a new machine's packages plus what scripts/setup.sh installs.
#
#   - purges every Debian package that is not in the baseline (.ci/baseline-packages.txt: the package list of
#     a new machine of this kind), dependencies included (they are not in the baseline either);
#   - uninstalls every pip distribution of the default python3 that is not in the baseline;
#   - removes what setup.sh and the tests build into caches and /opt (artifact mirror, local etcd 3.5.1, lab
#     base images), so each is rebuilt from empty.
# Then scripts/setup.sh has to bring back everything the build, the tests and the demo need; if it forgets a
# package (as it once forgot libprotobuf-dev), the build or a test fails here instead of on a user's machine.
# Why purging and not a container: see "Fresh-machine proof" in ARCHITECTURE.md.
#
# It changes the machine it runs on, so it runs only when CI=true or CAPSTAN_FRESH_MACHINE=1.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${CI:-}" != true ] && [ "${CAPSTAN_FRESH_MACHINE:-}" != 1 ]; then
  echo "fresh-machine: refusing to purge packages outside CI (set CI=true or CAPSTAN_FRESH_MACHINE=1)" >&2
  exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "fresh-machine: must run as root" >&2
  exit 2
fi

baseline=.ci/baseline-packages.txt
say() { echo "fresh-machine: $*" >&2; }
start=$SECONDS

# Debian packages: names without the architecture suffix.
debian_names() { sed -E 's/:[a-z0-9]+$//' | sort -u; }
want_debs=$(awk -F'\t' '$1 == "apt" { print $2 }' "$baseline" | debian_names)
installed_debs() { dpkg-query -W -f='${db:Status-Abbrev} ${binary:Package}\n' | awk '$1 ~ /^.i/ { print $2 }' | debian_names; }
extra_debs=$(comm -13 <(echo "$want_debs") <(installed_debs) | grep . || true)
if [ -n "$extra_debs" ]; then
  say "purging $(echo "$extra_debs" | wc -l) Debian package(s) a fresh machine does not have: $(echo $extra_debs)"
  # Package scripts must not try to start or stop services (there is no init system on the build machine).
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; created_policy=1; fi
  # shellcheck disable=SC2086
  # sudo's prerm refuses removal unless told (SUDO_FORCE_REMOVE).
  DEBIAN_FRONTEND=noninteractive SUDO_FORCE_REMOVE=yes apt-get purge -y -qq $extra_debs >/dev/null
  [ "$created_policy" = 1 ] && rm -f "$policy"
  left=$(comm -13 <(echo "$want_debs") <(installed_debs) | grep . || true)
  if [ -n "$left" ]; then
    say "error: still installed after the purge: $(echo $left)"
    exit 1
  fi
fi
missing_debs=$(comm -23 <(echo "$want_debs") <(installed_debs) | grep . || true)
[ -z "$missing_debs" ] || say "note: $(echo "$missing_debs" | wc -l) baseline package(s) are not installed here (not restored): $(echo $missing_debs | cut -c1-300)"

# pip distributions of the python3 that setup.sh and the tests use. Names normalised as PEP 503 does.
pip_names() { tr 'A-Z' 'a-z' | sed -E 's/[-_.]+/-/g' | sort -u; }
want_pips=$(awk -F'\t' '$1 ~ /^pip / { print $2 }' "$baseline" | pip_names)
installed_pips() { python3 -m pip list --format=freeze --disable-pip-version-check 2>/dev/null | sed -E 's/==.*//' | pip_names; }
extra_pips=$(comm -13 <(echo "$want_pips") <(installed_pips) | grep . || true)
if [ -n "$extra_pips" ]; then
  say "uninstalling $(echo "$extra_pips" | wc -l) pip distribution(s) a fresh machine does not have: $(echo $extra_pips)"
  # shellcheck disable=SC2086
  python3 -m pip uninstall -y -q --disable-pip-version-check $extra_pips >/dev/null
fi

# What setup.sh and the lab build into caches and /opt: each must come back from empty.
cache_root="${CAPSTAN_CACHE_DIR:-/var/cache/capstan}"
images="$cache_root/lab/images"
if [ -n "$(ls -A "${CAPSTAN_LAB_ROOT:-/var/lib/capstan/lab}" 2>/dev/null)" ]; then
  say "note: labs exist under ${CAPSTAN_LAB_ROOT:-/var/lib/capstan/lab}; keeping the lab images they are built on"
  images=""
fi
for path in "${CAPSTAN_MIRROR_DIR:-$cache_root/mirror}" "$cache_root/debs" /opt/etcd-3.5.1 $images; do
  if [ -e "$path" ]; then
    say "removing $path (rebuilt by setup.sh or the lab when missing)"
    rm -rf "$path"
  fi
done
say "machine reset to the fresh-machine baseline in $((SECONDS - start))s"
