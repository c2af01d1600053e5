#!/usr/bin/env bash
# Benchmark: RTO of `capstan drill --drill-target INVENTORY` restoring a ~1 GiB backup into three
# fresh lab machines, for one or more capstan binaries, alternating binaries run by run on the same
# backup in the same session. Prints per run the 1-minute load average, the RTO, the drill's steps
# and capstan's peak RSS (VmHWM sampled from /proc), then min/median/max of the RTO per binary.
#
# Needs: root, the lab prerequisites and artifact mirror (scripts/setup.sh), age, etcdctl, python3.
#
#   CAPSTANS="/path/capstan-old /path/capstan-new" RUNS=3 SIZE_MB=1024 backup/bench/drill.sh
#
# The backup is made once (one lab machine, SIZE_MB of incompressible 1 MiB values, age-encrypted
# to a file:// store in $WORK) and kept: REUSE=1 skips making it again. Each drill gets three fresh
# lab machines (their boot is not part of the RTO), torn down afterwards.
set -euo pipefail

CAPSTANS=${CAPSTANS:-target/release/capstan}
SIZE_MB=${SIZE_MB:-1024}
RUNS=${RUNS:-3}
LAB=${LAB:-drillbench}
WORK=${WORK:-/var/tmp/capstan-drill-bench}
ETCD_VERSION=${ETCD_VERSION:-3.5.1}
read -r -a BINS <<<"$CAPSTANS"
for i in "${!BINS[@]}"; do BINS[$i]=$(readlink -f "${BINS[$i]}"); done
for tool in "${BINS[@]}" age-keygen etcdctl python3; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done
CAPSTAN=${BINS[0]}
mkdir -p "$WORK"
cd "$WORK"
cleanup() {
    "$CAPSTAN" lab down --name "$LAB-src" >/dev/null 2>&1 || true
    "$CAPSTAN" lab down --name "$LAB" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# 1. The backup: one lab machine running etcd, filled, backed up to file://$WORK/store.
if [ "${REUSE:-0}" != 1 ] || [ ! -s "$WORK/identity.txt" ]; then
    rm -rf "$WORK/store" "$WORK/identity.txt"
    "$CAPSTAN" lab down --name "$LAB-src" >/dev/null 2>&1 || true
    "$CAPSTAN" lab up --name "$LAB-src" --hosts 1 --inventory-out "$WORK/src.yaml" >/dev/null
    sed -i '/^versions:/,$d' "$WORK/src.yaml"
    printf 'versions:\n  etcd: "%s"\n' "$ETCD_VERSION" >>"$WORK/src.yaml"
    "$CAPSTAN" -q -i "$WORK/src.yaml" apply >/dev/null
    "$CAPSTAN" -q -i "$WORK/src.yaml" etcd credentials --out "$WORK/creds" >/dev/null
    ENDPOINT=$(cut -d, -f1 "$WORK/creds/endpoints")
    export ETCDCTL_API=3
    echo "filling etcd with $SIZE_MB MiB..." >&2
    seq 0 $((SIZE_MB - 1)) | xargs -P 4 -I{} sh -c \
        'head -c 1048576 /dev/urandom | base64 -w0 | head -c 1048000 | "$0" "$@" put bench/{} >/dev/null' \
        etcdctl --cacert "$WORK/creds/ca.crt" --cert "$WORK/creds/client.crt" --key "$WORK/creds/client.key" \
        --endpoints "$ENDPOINT" --command-timeout 60s
    age-keygen -o "$WORK/identity.txt" 2>"$WORK/keygen.txt"
    RECIPIENT=$(awk '{print $NF}' "$WORK/keygen.txt")
    "$CAPSTAN" -q -i "$WORK/src.yaml" backup create --target "file://$WORK/store" -r "$RECIPIENT" >/dev/null
    "$CAPSTAN" lab down --name "$LAB-src" >/dev/null
fi
du -sh "$WORK/store" >&2

# capstan's peak RSS: VmHWM of PID, sampled until it exits (KiB; the last sample).
peak_rss() {
    local pid=$1 hwm=0 v
    while kill -0 "$pid" 2>/dev/null; do
        v=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        [ -n "$v" ] && hwm=$v
        sleep 0.5
    done
    echo "$hwm"
}

# 2. Drills, alternating the binaries run by run.
RESULTS=()
for run in $(seq "$RUNS"); do
    for b in "${!BINS[@]}"; do
        bin=${BINS[$b]}
        "$CAPSTAN" lab down --name "$LAB" >/dev/null 2>&1 || true
        "$CAPSTAN" lab up --name "$LAB" --hosts 3 --inventory-out "$WORK/target.yaml" >/dev/null
        sed -i '/^versions:/,$d' "$WORK/target.yaml"
        printf 'versions:\n  etcd: "%s"\n' "$ETCD_VERSION" >>"$WORK/target.yaml"
        LOAD=$(cut -d' ' -f1 /proc/loadavg)
        "$bin" drill --from latest --target "file://$WORK/store" --identity "$WORK/identity.txt" \
            --drill-target "$WORK/target.yaml" --output json >"$WORK/drill-$run-$b.json" 2>"$WORK/drill-$run-$b.err" &
        pid=$!
        rss=$(peak_rss "$pid")
        rc=0
        wait "$pid" || rc=$?
        "$CAPSTAN" lab down --name "$LAB" >/dev/null 2>&1 || true
        if [ "$rc" != 0 ]; then
            echo "run $run, $bin: drill failed (exit $rc), see $WORK/drill-$run-$b.err" >&2
            tail -5 "$WORK/drill-$run-$b.err" >&2
            continue
        fi
        RESULTS+=("$b $run $LOAD $rss $WORK/drill-$run-$b.json")
        python3 - "$bin" "$run" "$LOAD" "$rss" "$WORK/drill-$run-$b.json" <<'EOF'
import json, sys
bin, run, load, rss, path = sys.argv[1:]
r = json.load(open(path))
print(f"run {run} {bin}: load {load}, RTO {r['rto_seconds']:.1f} s, drill {r['total_seconds']:.1f} s, "
      f"peak RSS {int(rss) / 1024:.1f} MiB, success {r['success']}", flush=True)
for s in r["steps"]:
    print(f"    {s['step']:40} {s['seconds']:6.1f} s", flush=True)
EOF
    done
done

python3 - "$CAPSTANS" "${RESULTS[@]}" <<'EOF'
import json, statistics, sys
bins = sys.argv[1].split()
rows = [l.split() for l in sys.argv[2:]]
print("summary (RTO s, min / median / max; 1-minute load average at each run's start):")
for b, name in enumerate(bins):
    mine = [r for r in rows if int(r[0]) == b]
    if not mine:
        print(f"{name}: no successful run")
        continue
    rto = [json.load(open(r[4]))["rto_seconds"] for r in mine]
    rss = [int(r[3]) / 1024 for r in mine]
    loads = ", ".join(r[2] for r in mine)
    print(f"{name}: RTO {min(rto):.1f} / {statistics.median(rto):.1f} / {max(rto):.1f} s over {len(rto)} runs "
          f"(load {loads}); peak RSS max {max(rss):.1f} MiB")
EOF
