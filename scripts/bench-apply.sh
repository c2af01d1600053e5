#!/usr/bin/env bash
# Benchmark of `capstan apply` on the local lab (root; see docs/lab.md): for each lab size, the first
# apply (a fresh lab per run), the no-op re-apply and `capstan check`, each over BENCH_RUNS runs, with
# min/median/max and the ratios against the targets:
#   no-op re-apply < 1.0 s on 3 members and <= 4x `capstan check` on the same lab; < 3 s on 20 hosts;
#   first apply on 20 hosts <= 2x the first apply on 3.
# It also counts the SSH execs (sessions) a no-op re-apply costs per host, from each machine's sshd log.
#
#   CAPSTAN_BIN=/path/to/capstan bash scripts/bench-apply.sh   # the binary to measure (default: a release
#                                                              # build of this tree, built if needed)
#   BENCH_SIZES="3 20" BENCH_RUNS=3 BENCH_NOOP_REPEATS=2 BENCH_LAB=bench BENCH_OUT=DIR
#   CAPSTAN_BIN_BASELINE=/path/to/old/capstan BENCH_PAIRS=6   # also: no-op re-applies of the baseline and
#       of CAPSTAN_BIN alternating on the same lab. Other work on the machine moves every number a lot; pairs
#       taken seconds apart on one lab are the fair before/after comparison.
# Every lab it starts is removed when it exits, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

sizes=${BENCH_SIZES:-"3 20"}
runs=${BENCH_RUNS:-3}
noop_repeats=${BENCH_NOOP_REPEATS:-2}
lab_prefix=${BENCH_LAB:-bench}
out_dir=${BENCH_OUT:-$(mktemp -d /tmp/capstan-bench.XXXXXX)}
mkdir -p "$out_dir"
export CAPSTAN_MIRROR_DIR="${CAPSTAN_MIRROR_DIR:-/var/cache/capstan/mirror}"

if [ "$(id -u)" -ne 0 ]; then
  echo "bench: run as root (the lab uses systemd-nspawn)" >&2
  exit 1
fi
if [ "$runs" -lt 1 ] || [ "$noop_repeats" -lt 1 ]; then
  echo "bench: BENCH_RUNS and BENCH_NOOP_REPEATS must be at least 1" >&2
  exit 1
fi
if [ -n "${CAPSTAN_BIN:-}" ]; then
  capstan=$CAPSTAN_BIN
else
  cargo build --release -p capstan-cli >&2
  capstan="${CARGO_TARGET_DIR:-$PWD/target}/release/capstan"
fi
[ -x "$capstan" ] || { echo "bench: $capstan is not an executable" >&2; exit 1; }

current_lab=""
teardown() {
  if [ -n "$current_lab" ]; then
    "$capstan" lab down --name "$current_lab" >>"$out_dir/lab.log" 2>&1 || true
    current_lab=""
  fi
}
trap teardown EXIT
trap 'teardown; exit 130' INT TERM

log() { printf 'bench: %s\n' "$*" >&2; }

# Seconds (with decimals) that "$@" took; its output goes to $out_dir/LOGNAME.log. Fails the
# benchmark when the command fails: a failed apply is not a measurement.
timed() {
  local logname=$1
  shift
  local start end
  start=$EPOCHREALTIME
  if ! "$@" >"$out_dir/$logname.log" 2>&1; then
    log "failed: $* (log: $out_dir/$logname.log)"
    tail -n 20 "$out_dir/$logname.log" >&2
    exit 1
  fi
  end=$EPOCHREALTIME
  awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f\n", e - s }'
}

# "min median max" of the numbers given.
stats() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "%.3f %.3f %.3f\n", v[1], m, v[NR] }'
}

median() { stats "$@" | awk '{ print $2 }'; }

# Prints the inventory path. Runs in a subshell ($(...)): the caller sets current_lab first.
lab_up() {
  local name=$1 hosts=$2
  "$capstan" lab down --name "$name" >>"$out_dir/lab.log" 2>&1 || true
  "$capstan" lab up --name "$name" --hosts "$hosts" 2>>"$out_dir/lab.log"
}

# Every machine's sshd logs one "Starting session: command ..." line per exec (LogLevel VERBOSE).
verbose_sshd() {
  local name=$1 hosts=$2 i
  for i in $(seq 1 "$hosts"); do
    "$capstan" lab ssh --name "$name" "$name-$i" -- \
      "sed -i '/^LogLevel/d' /etc/ssh/sshd_config && echo 'LogLevel VERBOSE' >>/etc/ssh/sshd_config && systemctl reload ssh" \
      >>"$out_dir/lab.log" 2>&1
  done
}

# Execs per machine between epoch seconds $3 and $4, one number per machine.
execs_between() {
  local name=$1 hosts=$2 since=$3 until=$4 i
  for i in $(seq 1 "$hosts"); do
    "$capstan" lab ssh --name "$name" "$name-$i" -- \
      "journalctl -u ssh --since @$since --until @$until --no-pager -o cat | grep -c 'Starting session: command' || true" \
      2>>"$out_dir/lab.log"
  done
}

# Other work on the machine skews every number: show the load before and after.
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
baseline=${CAPSTAN_BIN_BASELINE:-}
pairs=${BENCH_PAIRS:-6}
declare -A first noop check execs pair_base pair_new
for n in $sizes; do
  name="$lab_prefix-$n"
  first[$n]="" noop[$n]="" check[$n]="" execs[$n]=""
  for run in $(seq 1 "$runs"); do
    log "$n hosts, run $run/$runs: fresh lab"
    current_lab=$name
    inventory=$(lab_up "$name" "$n")
    t=$(timed "first-$n-$run" "$capstan" -i "$inventory" apply)
    first[$n]+="$t "
    log "  first apply ${t}s"
    for repeat in $(seq 1 "$noop_repeats"); do
      t=$(timed "noop-$n-$run-$repeat" "$capstan" -i "$inventory" apply)
      noop[$n]+="$t "
      if grep -qE '[1-9][0-9]* changed' "$out_dir/noop-$n-$run-$repeat.log" &&
         ! grep -qE ' 0 changed' "$out_dir/noop-$n-$run-$repeat.log"; then
        log "  warning: the re-apply changed something (see $out_dir/noop-$n-$run-$repeat.log)"
      fi
      c=$(timed "check-$n-$run-$repeat" "$capstan" -i "$inventory" check)
      check[$n]+="$c "
      log "  no-op re-apply ${t}s, check ${c}s"
    done
    if [ "$run" -eq "$runs" ]; then
      # Outside the timed runs: one more no-op apply with sshd counting its sessions.
      verbose_sshd "$name" "$n"
      sleep 1
      since=$(date +%s)
      sleep 1
      "$capstan" -i "$inventory" apply >"$out_dir/counted-$n.log" 2>&1
      sleep 1
      until=$(date +%s)
      sleep 1
      execs[$n]=$(execs_between "$name" "$n" "$since" "$until" | tr '\n' ' ')
      if [ -n "$baseline" ]; then
        log "  $pairs alternating no-op re-applies: baseline, then $capstan"
        pair_base[$n]="" pair_new[$n]=""
        for pair in $(seq 1 "$pairs"); do
          pair_base[$n]+="$(timed "pair-$n-$pair-baseline" "$baseline" -i "$inventory" apply) "
          pair_new[$n]+="$(timed "pair-$n-$pair" "$capstan" -i "$inventory" apply) "
        done
      fi
    fi
    teardown
  done
done

printf '\ncapstan: %s (load average at start %s, at end %s)\n' "$capstan" "$load_at_start" \
  "$(cut -d' ' -f1-3 /proc/loadavg)"
[ -n "$baseline" ] && printf 'baseline: %s\n' "$baseline"
printf '%-6s %-24s %8s %8s %8s\n' hosts measurement min median max
for n in $sizes; do
  # shellcheck disable=SC2086 # the lists are space-separated numbers
  {
    read -r a b c <<<"$(stats ${first[$n]})"
    printf '%-6s %-24s %8s %8s %8s\n' "$n" "first apply (s)" "$a" "$b" "$c"
    read -r a b c <<<"$(stats ${noop[$n]})"
    printf '%-6s %-24s %8s %8s %8s\n' "$n" "no-op re-apply (s)" "$a" "$b" "$c"
    read -r a b c <<<"$(stats ${check[$n]})"
    printf '%-6s %-24s %8s %8s %8s\n' "$n" "check (s)" "$a" "$b" "$c"
    read -r a b c <<<"$(stats ${execs[$n]})"
    printf '%-6s %-24s %8s %8s %8s\n' "$n" "no-op execs per host" "${a%.*}" "${b%.*}" "${c%.*}"
    if [ -n "${pair_new[$n]:-}" ]; then
      read -r a b c <<<"$(stats ${pair_base[$n]})"
      printf '%-6s %-24s %8s %8s %8s\n' "$n" "paired no-op, baseline" "$a" "$b" "$c"
      read -r a b c <<<"$(stats ${pair_new[$n]})"
      printf '%-6s %-24s %8s %8s %8s\n' "$n" "paired no-op, this" "$a" "$b" "$c"
    fi
  }
done

# shellcheck disable=SC2086
verdict() { awk -v v="$1" -v limit="$2" 'BEGIN { print (v < limit) ? "ok" : "MISSED" }'; }
printf '\ntargets (medians):\n'
for n in $sizes; do
  # shellcheck disable=SC2086
  noop_med=$(median ${noop[$n]})
  # shellcheck disable=SC2086
  check_med=$(median ${check[$n]})
  ratio=$(awk -v a="$noop_med" -v b="$check_med" 'BEGIN { printf "%.2f", a / b }')
  case $n in
    3) printf '  3 hosts: no-op re-apply %ss < 1.0s: %s; = %sx check (<= 4x): %s\n' "$noop_med" \
         "$(verdict "$noop_med" 1.0)" "$ratio" "$(awk -v r="$ratio" 'BEGIN { print (r <= 4) ? "ok" : "MISSED" }')" ;;
    20) printf '  20 hosts: no-op re-apply %ss < 3s: %s (%sx check)\n' "$noop_med" "$(verdict "$noop_med" 3)" "$ratio" ;;
    *) printf '  %s hosts: no-op re-apply %ss = %sx check\n' "$n" "$noop_med" "$ratio" ;;
  esac
done
if [ -n "${first[3]:-}" ] && [ -n "${first[20]:-}" ]; then
  # shellcheck disable=SC2086
  f3=$(median ${first[3]})
  # shellcheck disable=SC2086
  f20=$(median ${first[20]})
  ratio=$(awk -v a="$f20" -v b="$f3" 'BEGIN { printf "%.2f", a / b }')
  printf '  first apply: 20 hosts %ss = %sx the 3-host %ss (<= 2x): %s\n' "$f20" "$ratio" "$f3" \
    "$(awk -v r="$ratio" 'BEGIN { print (r <= 2) ? "ok" : "MISSED" }')"
fi
printf 'logs: %s\n' "$out_dir"
