#!/usr/bin/env bash
# Benchmark: `capstan backup create` vs the shell pipeline
#   etcdctl snapshot save → age -r → aws s3 cp
# on the same ~1 GiB etcd database (one lab machine), to the same S3 server on the lab bridge's
# gateway, on this machine, in the same run. Prints wall time, CPU time, throughput and peak
# RSS (from /usr/bin/time -v) of each, and the CPU time the S3 server spent serving each.
#
# S3_SERVER picks the server:
#   s3s-fs  s3s-fs 0.14.1, a Rust S3 server storing into a directory (the default):
#           cargo install s3s-fs --version 0.14.1 --features binary --locked --root /opt/s3s-fs
#   moto    moto's server (pip install 'moto[server]>=5.2.5'), pure Python, in memory
#
# Needs: root, the lab prerequisites and artifact mirror (scripts/setup.sh), the server above,
# awscli (pip install awscli), age, etcdctl, curl, /usr/bin/time (apt-get install time).
#
#   CAPSTAN=target/release/capstan SIZE_MB=1024 S3_SERVER=s3s-fs RUNS=2 backup/bench/compare.sh
#
# RUNS (default 3) repeats the measurements (alternating) against the same server and prints
# min/median/max over the runs. CAPSTAN_OLD=path/to/other/capstan measures a second build in the
# same runs (before capstan on odd runs, after the pipeline on even ones), to compare a change
# on a shared machine. KEEP=1 keeps the lab (and its filled etcd) for another run: REUSE=1 then
# skips the fill.
set -euo pipefail

CAPSTAN=${CAPSTAN:-target/release/capstan}
SIZE_MB=${SIZE_MB:-1024}
S3_SERVER=${S3_SERVER:-s3s-fs}
S3S_FS=${S3S_FS:-/opt/s3s-fs/bin/s3s-fs}
RUNS=${RUNS:-3}
CAPSTAN_OLD=${CAPSTAN_OLD:-}
LAB=${LAB:-bench}
WORK=${WORK:-/tmp/capstan-bench}
BUCKET=bench
CAPSTAN=$(readlink -f "$CAPSTAN")
[ -z "$CAPSTAN_OLD" ] || CAPSTAN_OLD=$(readlink -f "$CAPSTAN_OLD")

case "$S3_SERVER" in
    moto) SERVER_CMD=moto_server ;;
    s3s-fs) SERVER_CMD=$S3S_FS ;;
    *) echo "S3_SERVER must be moto or s3s-fs, not '$S3_SERVER'" >&2; exit 2 ;;
esac
for tool in "$CAPSTAN" "$SERVER_CMD" aws age age-keygen etcdctl curl python3 /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done

mkdir -p "$WORK"
cd "$WORK"
SERVER_PID=
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    rm -rf "$WORK/s3s-data" "$WORK/s.db" "$WORK/s.db.age"
    [ "${KEEP:-0}" = 1 ] || "$CAPSTAN" lab down --name "$LAB" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# 1. One lab machine running etcd (capstan's defaults: quota-backend-bytes 8 GiB).
if [ "${REUSE:-0}" != 1 ]; then
    "$CAPSTAN" lab down --name "$LAB" >/dev/null 2>&1 || true
    "$CAPSTAN" lab up --name "$LAB" --hosts 1 --inventory-out "$WORK/lab.yaml" >/dev/null
    sed -i '/^versions:/,$d' "$WORK/lab.yaml"
    printf 'versions:\n  etcd: "3.5.1"\n' >>"$WORK/lab.yaml"
    "$CAPSTAN" -q -i "$WORK/lab.yaml" apply >/dev/null
fi
INV=$WORK/lab.yaml
"$CAPSTAN" -q -i "$INV" etcd credentials --out "$WORK/creds" >/dev/null
ENDPOINT=$(cut -d, -f1 "$WORK/creds/endpoints")
ETCDCTL=(etcdctl --cacert "$WORK/creds/ca.crt" --cert "$WORK/creds/client.crt" --key "$WORK/creds/client.key"
    --endpoints "$ENDPOINT" --command-timeout 60s)
export ETCDCTL_API=3

# 2. Fill etcd with SIZE_MB of incompressible 1 MiB values (4 writers at a time).
if [ "${REUSE:-0}" != 1 ]; then
    echo "filling etcd with $SIZE_MB MiB..." >&2
    seq 0 $((SIZE_MB - 1)) | xargs -P 4 -I{} sh -c \
        'head -c 1048576 /dev/urandom | base64 -w0 | head -c 1048000 | "$0" "$@" put bench/{} >/dev/null' \
        "${ETCDCTL[@]}"
fi
DB_BYTES=$("${ETCDCTL[@]}" endpoint status --write-out=json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["dbSize"])')
echo "etcd db size: $((DB_BYTES / 1048576)) MiB" >&2

# 3. The S3 server on the gateway address of the lab bridge.
GATEWAY=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["gateway"])' "${CAPSTAN_LAB_ROOT:-/var/lib/capstan/lab}/$LAB/lab.json")
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("'"$GATEWAY"'",0)); print(s.getsockname()[1])')
export AWS_ENDPOINT_URL=http://$GATEWAY:$PORT AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret \
    AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
case "$S3_SERVER" in
    moto) moto_server -H "$GATEWAY" -p "$PORT" >"$WORK/server.log" 2>&1 & ;;
    s3s-fs)
        rm -rf "$WORK/s3s-data"
        mkdir -p "$WORK/s3s-data"
        "$S3S_FS" --host "$GATEWAY" --port "$PORT" --access-key "$AWS_ACCESS_KEY_ID" \
            --secret-key "$AWS_SECRET_ACCESS_KEY" "$WORK/s3s-data" >"$WORK/server.log" 2>&1 &
        ;;
esac
SERVER_PID=$!
for _ in $(seq 100); do curl -s "http://$GATEWAY:$PORT" >/dev/null && break; sleep 0.2; done
aws s3api create-bucket --bucket "$BUCKET" >/dev/null

rm -f "$WORK/identity.txt"
age-keygen -o "$WORK/identity.txt" 2>"$WORK/keygen.txt"
RECIPIENT=$(awk '{print $NF}' "$WORK/keygen.txt")

# CPU seconds (user + system) the S3 server has used so far.
server_cpu() {
    python3 -c 'import os,sys; f=open(f"/proc/{sys.argv[1]}/stat").read().rsplit(")",1)[1].split(); print((int(f[11])+int(f[12]))/os.sysconf("SC_CLK_TCK"))' "$SERVER_PID"
}

# /usr/bin/time -v for a command: "<wall s> <cpu s> <peak RSS KiB> <server cpu s>".
measure() {
    local log=$1
    shift
    local before
    before=$(server_cpu)
    /usr/bin/time -v "$@" >"$log.out" 2>"$log.err"
    local after
    after=$(server_cpu)
    awk -F': ' -v server="$(python3 -c "print($after - $before)")" '
        /Elapsed \(wall clock\)/ {n=split($2,t,":"); s=0; for(i=1;i<=n;i++) s=s*60+t[i]; wall=s}
        /User time \(seconds\)/ {cpu+=$2}
        /System time \(seconds\)/ {cpu+=$2}
        /Maximum resident set size/ {rss=$2}
        END {print wall, cpu, rss, server}' "$log.err"
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
load1() { cut -d' ' -f1 /proc/loadavg; }
# capstan backup create with binary $1 (streaming: etcd → sha256 → age → sha256 → S3 multipart):
# "<load> <wall> <cpu> <rss> <server cpu>".
capstan_run() {
    local load
    load=$(load1)
    echo "$load $(measure capstan "$1" -q -i "$INV" backup create --target "s3://$BUCKET/capstan" --s3-path-style \
        -r "$RECIPIENT")"
}
RESULTS=()
for run in $(seq "$RUNS"); do
    # 4. capstan (and, with CAPSTAN_OLD, the other binary: first on odd runs, last on even ones).
    O_LINE="- - - - -"
    if [ -n "$CAPSTAN_OLD" ] && [ $((run % 2)) = 1 ]; then O_LINE=$(capstan_run "$CAPSTAN_OLD"); fi
    C_LINE=$(capstan_run "$CAPSTAN")

    # 5. The pipeline, each step measured; the total is the sum, peak RSS the largest step.
    P_LOAD=$(load1)
    rm -f "$WORK/s.db" "$WORK/s.db.age"
    read -r S_WALL S_CPU S_RSS _ < <(measure snap "${ETCDCTL[@]}" snapshot save "$WORK/s.db")
    read -r A_WALL A_CPU A_RSS _ < <(measure age age -r "$RECIPIENT" -o "$WORK/s.db.age" "$WORK/s.db")
    read -r U_WALL U_CPU U_RSS U_SRV < <(measure upload aws s3 cp --only-show-errors "$WORK/s.db.age" "s3://$BUCKET/pipeline/s.db.age")
    rm -f "$WORK/s.db" "$WORK/s.db.age"
    if [ -n "$CAPSTAN_OLD" ] && [ $((run % 2)) = 0 ]; then O_LINE=$(capstan_run "$CAPSTAN_OLD"); fi
    # Keep the server's store small between runs (s3s-fs writes every object to disk).
    aws s3 rm --recursive --only-show-errors "s3://$BUCKET/" || true
    RESULTS+=("$run $C_LINE $O_LINE $P_LOAD $S_WALL $S_CPU $S_RSS $A_WALL $A_CPU $A_RSS $U_WALL $U_CPU $U_RSS $U_SRV")
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$DB_BYTES" "$S3_SERVER" "${CAPSTAN_OLD:+old}" "${RESULTS[@]}" <<'EOF'
import statistics, sys
db, server, has_old = float(sys.argv[1]), sys.argv[2], sys.argv[3] == "old"
mib = db / 1048576
print(f"database: {mib:.0f} MiB, S3 server: {server}; load = 1-minute load average when the step started")
print(f"{'':28}{'load':>6}{'wall s':>8}{'cpu s':>8}{'MiB/s':>9}{'peak RSS MiB':>14}{'server cpu s':>14}")
speedups, old_speedups, walls, old_walls, pipe_walls, rsses = [], [], [], [], [], []
for line in sys.argv[4:]:
    f = line.split()
    run = int(f[0])
    cl, cw, cc, cr, cs = map(float, f[1:6])
    old = None if f[6] == "-" else tuple(map(float, f[6:11]))
    pl, sw, sc, sr, aw, ac, ar, uw, uc, ur, us = map(float, f[11:22])
    pw, pc, pr = sw + aw + uw, sc + ac + uc, max(sr, ar, ur)
    print(f"run {run}")
    rows = [("capstan backup create", cl, cw, cc, cr, f"{cs:.1f}")]
    if old:
        rows.append(("capstan (CAPSTAN_OLD)", *old))
        rows[-1] = rows[-1][:5] + (f"{old[4]:.1f}",)
    rows += [("pipeline (total)", pl, pw, pc, pr, f"{us:.1f}"),
             ("  etcdctl snapshot save", None, sw, sc, sr, ""),
             ("  age -r", None, aw, ac, ar, ""),
             ("  aws s3 cp", None, uw, uc, ur, f"{us:.1f}")]
    for name, load, w, c, r, s in rows:
        shown = "" if load is None else f"{load:.2f}"
        print(f"{name:28}{shown:>6}{w:8.1f}{c:8.1f}{mib / w:9.1f}{r / 1024:14.1f}{s:>14}")
    speedups.append(pw / cw)
    walls.append(cw)
    pipe_walls.append(pw)
    rsses.append(cr / 1024)
    text = f"speed-up: {pw / cw:.2f}x"
    if old:
        old_speedups.append(pw / old[1])
        old_walls.append(old[1])
        text += f" (CAPSTAN_OLD: {pw / old[1]:.2f}x; wall new/old {cw / old[1]:.2f})"
    print(text)


def spread(values, fmt):
    return "/".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


print(f"\nover {len(walls)} runs, min/median/max:")
print(f"  capstan wall {spread(walls, '{:.1f}')} s, peak RSS {spread(rsses, '{:.1f}')} MiB")
if old_walls:
    print(f"  CAPSTAN_OLD wall {spread(old_walls, '{:.1f}')} s")
print(f"  pipeline wall {spread(pipe_walls, '{:.1f}')} s")
print(f"  speed-up {spread(speedups, '{:.2f}')}x", end="")
if old_speedups:
    print(f" (CAPSTAN_OLD {spread(old_speedups, '{:.2f}')}x)", end="")
median, rss = statistics.median(speedups), max(rsses)
print(f"\ntarget 2x: {'met' if median >= 2 else 'not met'} (median speed-up); "
      f"peak RSS < 64 MiB: {'met' if rss < 64 else 'not met'} (largest {rss:.1f} MiB)")
EOF
