#!/usr/bin/env bash
# Benchmark: `capstan backup create` vs the shell pipeline
#   etcdctl snapshot save → age -r → aws s3 cp
# on the same ~1 GiB etcd database (one lab machine), to the same S3 server (moto on the lab
# bridge's gateway), on this machine, in the same run. Prints wall time, throughput and peak RSS
# (from /usr/bin/time -v) of each.
#
# Needs: root, the lab prerequisites and artifact mirror (scripts/setup.sh), moto_server
# (pip install 'moto[server]>=5.2.5'), awscli (pip install awscli), age, etcdctl, curl,
# /usr/bin/time (apt-get install time).
#
#   CAPSTAN=target/release/capstan SIZE_MB=1024 backup/bench/compare.sh
#
# KEEP=1 keeps the lab (and its filled etcd) for another run: REUSE=1 then skips the fill.
set -euo pipefail

CAPSTAN=${CAPSTAN:-target/release/capstan}
SIZE_MB=${SIZE_MB:-1024}
LAB=${LAB:-bench}
WORK=${WORK:-/tmp/capstan-bench}
BUCKET=bench
CAPSTAN=$(readlink -f "$CAPSTAN")

for tool in "$CAPSTAN" moto_server aws age age-keygen etcdctl curl /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done

mkdir -p "$WORK"
cd "$WORK"
MOTO_PID=
cleanup() {
    [ -n "$MOTO_PID" ] && kill "$MOTO_PID" 2>/dev/null || true
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

# 3. moto on the gateway address of the lab bridge.
GATEWAY=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["gateway"])' "${CAPSTAN_LAB_ROOT:-/var/lib/capstan/lab}/$LAB/lab.json")
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("'"$GATEWAY"'",0)); print(s.getsockname()[1])')
moto_server -H "$GATEWAY" -p "$PORT" >"$WORK/moto.log" 2>&1 &
MOTO_PID=$!
for _ in $(seq 100); do curl -s "http://$GATEWAY:$PORT" >/dev/null && break; sleep 0.2; done
curl -sf -X PUT "http://$GATEWAY:$PORT/$BUCKET" >/dev/null
export AWS_ENDPOINT_URL=http://$GATEWAY:$PORT AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret \
    AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true

rm -f "$WORK/identity.txt"
age-keygen -o "$WORK/identity.txt" 2>"$WORK/keygen.txt"
RECIPIENT=$(awk '{print $NF}' "$WORK/keygen.txt")

# /usr/bin/time -v for a command: "<seconds> <peak RSS KiB>".
measure() {
    local log=$1
    shift
    /usr/bin/time -v "$@" >"$log.out" 2>"$log.err"
    local wall rss
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,t,":"); s=0; for(i=1;i<=n;i++) s=s*60+t[i]; print s}' "$log.err")
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log.err")
    echo "$wall $rss"
}

# 4. capstan backup create (streaming: etcd → sha256 → age → S3 multipart).
read -r C_WALL C_RSS < <(measure capstan "$CAPSTAN" -q -i "$INV" backup create \
    --target "s3://$BUCKET/capstan" --s3-path-style -r "$RECIPIENT")

# 5. The pipeline, each step measured; the total is the sum, peak RSS the largest step.
rm -f "$WORK/s.db" "$WORK/s.db.age"
read -r S_WALL S_RSS < <(measure snap "${ETCDCTL[@]}" snapshot save "$WORK/s.db")
read -r A_WALL A_RSS < <(measure age age -r "$RECIPIENT" -o "$WORK/s.db.age" "$WORK/s.db")
read -r U_WALL U_RSS < <(measure upload aws s3 cp --only-show-errors "$WORK/s.db.age" "s3://$BUCKET/pipeline/s.db.age")
rm -f "$WORK/s.db" "$WORK/s.db.age"

python3 - "$DB_BYTES" "$C_WALL" "$C_RSS" "$S_WALL" "$S_RSS" "$A_WALL" "$A_RSS" "$U_WALL" "$U_RSS" <<'EOF'
import sys
db, cw, cr, sw, sr, aw, ar, uw, ur = map(float, sys.argv[1:])
mib = db / 1048576
pw = sw + aw + uw
pr = max(sr, ar, ur)
print(f"database: {mib:.0f} MiB")
print(f"{'':28}{'wall s':>8}{'MiB/s':>9}{'peak RSS MiB':>14}")
print(f"{'capstan backup create':28}{cw:8.1f}{mib / cw:9.1f}{cr / 1024:14.1f}")
print(f"{'pipeline (total)':28}{pw:8.1f}{mib / pw:9.1f}{pr / 1024:14.1f}")
for name, w, r in (("  etcdctl snapshot save", sw, sr), ("  age -r", aw, ar), ("  aws s3 cp", uw, ur)):
    print(f"{name:28}{w:8.1f}{mib / w:9.1f}{r / 1024:14.1f}")
print(f"speed-up: {pw / cw:.2f}x")
EOF
