#!/usr/bin/env bash
# `dilu up`'s gateway against the standalone `dilu gateway`, side by side in front of the same instance: `dilu up`
# runs the relu function (`relu.onnx`, one instance at the whole CPU device), and a `dilu gateway` routes to that
# instance's address; wrk measures each path and the instance directly over keep-alive connections:
#
#   up:       wrk -> dilu up (API + gateway on one listener, its control plane and token manager in the process)
#   gateway:  wrk -> dilu gateway (static route to the same instance)
#   direct:   wrk -> the instance
#
# SLICES interleaved slices per path (the order rotating), each a serial slice (1 connection: p50) and one at
# CONNS connections (req/s); a path's figures are the medians of its slices. Prints each path, then the ratio
# of `dilu up`'s req/s to the standalone gateway's and the p50 each adds to the direct path.
#
#   scripts/bench-up-gateway.sh
#
# Environment: DILU_BIN (use this binary instead of building target/release/dilu), SLICES (6), SLICE_S (2),
# CONNS (16), THREADS (event loops of both, wrk's threads at CONNS; 2), DILU_MODEL_CACHE. Needs wrk (installed
# from Debian when missing and run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/bench-http.sh
source scripts/lib/bench-http.sh

SLICES="${SLICES:-6}"
SLICE_S="${SLICE_S:-2}"
CONNS="${CONNS:-16}"
THREADS="${THREADS:-2}"
export DILU_MODEL_CACHE="${DILU_MODEL_CACHE:-$HOME/.cache/dilu/models}"

install_missing wrk
bench_setup
scripts/fetch-models.sh "$DILU_MODEL_CACHE" >/dev/null
test -s "$DILU_MODEL_CACHE/onnx-light/relu.onnx"

start_dilu up --data-dir "$tmp/data" --listen 127.0.0.1:0 --no-nvml --threads "$THREADS"
up="$started_url"
cat >"$tmp/relu.yaml" <<EOF
apiVersion: dilu.io/v1alpha1
kind: Function
metadata: { name: relu }
spec:
  kind: inference
  slo_ms: 1000
  model: { path: $DILU_MODEL_CACHE/onnx-light/relu.onnx, max_batch: 8 }
  quota: { request: 1.0, limit: 1.0, memory: 256MiB }
  scaling: { min_instances: 1, max_instances: 1 }
EOF
"$DILU" deploy --server "$up" --data-dir "$tmp/data" --wait -f "$tmp/relu.yaml" >/dev/null
instance="$(curl -sf -H "Authorization: Bearer $(cat "$tmp/data/token")" "$up/v1/instances" | python3 -c '
import json, sys
print(next(i["labels"]["dilu.io/endpoint"] for i in json.load(sys.stdin)["instances"] if i["function"] == "relu"))')"
start_dilu gateway --listen 127.0.0.1:0 --route "relu=$instance" --threads "$THREADS"
gateway="$started_url"

path=/v2/models/relu/infer
body="$(relu_request "$tmp/post.lua")"
declare -A url=([up]="$up$path" [gateway]="$gateway$path" [direct]="$instance$path")
targets=(up gateway direct)
for t in "${targets[@]}"; do
    check_relu_answer "${url[$t]}" "$body"
    measure "${url[$t]}" "$CONNS" "$THREADS" "$SLICE_S" "$tmp/post.lua" >/dev/null
done
echo "== dilu up $up, dilu gateway $gateway, instance $instance (--threads $THREADS); load $(cut -d' ' -f1-3 /proc/loadavg)"

results="$tmp/results"
: >"$results"
for slice in $(seq 1 "$SLICES"); do
    for i in 0 1 2; do
        t="${targets[$(((i + slice) % 3))]}"
        read -r _ p50 _ e1 < <(measure "${url[$t]}" 1 1 "$SLICE_S" "$tmp/post.lua")
        read -r rps _ _ e2 < <(measure "${url[$t]}" "$CONNS" "$THREADS" "$SLICE_S" "$tmp/post.lua")
        echo "$t $p50 $rps $((e1 + e2))" >>"$results"
    done
done
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$results" "$CONNS" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
med = {}
for t in ("up", "gateway", "direct"):
    mine = [r for r in rows if r[0] == t]
    med[t] = (statistics.median(float(r[1]) for r in mine), statistics.median(float(r[2]) for r in mine))
    slices = " ".join(f"{float(r[2]) / 1000:.1f}k" for r in mine)
    print(f"   {t}: serial p50 {med[t][0]:.0f} µs; c={sys.argv[2]} {med[t][1]:,.0f} req/s (slices {slices})")
added = {t: med[t][0] - med["direct"][0] for t in ("up", "gateway")}
print(f"== dilu up / dilu gateway req/s at c={sys.argv[2]}: {med['up'][1] / med['gateway'][1]:.3f}x; "
      f"added serial p50: dilu up {added['up']:+.0f} µs, dilu gateway {added['gateway']:+.0f} µs")
errors = sum(int(r[3]) for r in rows)
if errors:
    sys.exit(f"{errors} requests failed (non-2xx or socket errors): the numbers above are not valid")
PY
