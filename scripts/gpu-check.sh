#!/usr/bin/env bash
# Real-GPU check of libdilu_cuda.so (not part of CI: needs an NVIDIA GPU, PyTorch and this repository).
#
# 1. Calibrates: one PyTorch process runs alone, unlimited, and the channel's counters give the GPU's
#    launch-cost rate for this workload (cost units per second).
# 2. Runs two PyTorch processes on the GPU with budgets of 30 % and 70 % of that rate and prints their
#    throughput ratio; halfway it swaps the budgets (70 % / 30 %) through the channels and prints how long the
#    throughput took to follow (reaction time, from the 100 ms progress bins).
# 3. Gives a third process a 2 GiB memory cap: a 3 GiB allocation must fail with an out-of-memory error, a
#    1 GiB one must then succeed, and the process must live on; cuMemGetInfo must report the cap.
# 4. Starts `dilu agent` with NVML discovery and runs two PyTorch instances through its API (requests 0.3 and
#    0.7, limit 1.0): the agent's token manager, not hand-set budgets, divides the GPU; one runs alone first
#    (it may take the whole GPU), then both, then their requests are swapped (scripts/gpu-check/agent.py).
#
# Usage: scripts/gpu-check.sh            (builds with cargo; or set DILU_BIN and DILU_CUDA_LIB to prebuilt files)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
SECONDS_PER_PHASE=${SECONDS_PER_PHASE:-6}
if [ -z "${DILU_BIN:-}" ] || [ -z "${DILU_CUDA_LIB:-}" ]; then
  cargo build --release -p dilu >&2
  cargo build --profile interposer -p dilu-cuda >&2
  DILU_BIN=target/release/dilu
  DILU_CUDA_LIB=$PWD/target/interposer/libdilu_cuda.so
fi
nvidia-smi --query-gpu=name,uuid,memory.total --format=csv,noheader
UUID=$(nvidia-smi --query-gpu=uuid --format=csv,noheader | head -1)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
WORKER=scripts/gpu-check/worker.py

json_field() { "$PYTHON" -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
run_worker() { # channel, args...
  local channel=$1; shift
  CUDA_VISIBLE_DEVICES=$UUID LD_PRELOAD=$DILU_CUDA_LIB DILU_QUOTA_FILE=$channel "$PYTHON" "$WORKER" "$@"
}

echo "== 1. calibration (one process, unlimited)"
"$DILU_BIN" quota create "$WORK/cal.quota" --device "$UUID" >/dev/null
run_worker "$WORK/cal.quota" burn 1 >/dev/null   # warm-up: cuBLAS handles, clocks
before=$("$DILU_BIN" quota show "$WORK/cal.quota" --format json | json_field cost_launched)
t0=$(date +%s.%N)
run_worker "$WORK/cal.quota" burn 4 >"$WORK/cal.jsonl"
t1=$(date +%s.%N)
after=$("$DILU_BIN" quota show "$WORK/cal.quota" --format json | json_field cost_launched)
RATE=$("$PYTHON" -c "print(($after-$before)/($t1-$t0))")
ALONE_IPS=$("$PYTHON" -c "
import json
bins=[json.loads(l) for l in open('$WORK/cal.jsonl')][5:]
print(sum(b['iters'] for b in bins)/(0.1*len(bins)))")
echo "cost rate alone: $RATE units/s; $ALONE_IPS iterations/s"
budget() { "$PYTHON" -c "print(int($RATE * $1 * 0.005))"; }   # share -> units per 5 ms window

echo "== 2. budgets 30 % / 70 %, swapped to 70 % / 30 % after ${SECONDS_PER_PHASE}s"
"$DILU_BIN" quota create "$WORK/a.quota" --device "$UUID" --budget "$(budget 0.3)" >/dev/null
"$DILU_BIN" quota create "$WORK/b.quota" --device "$UUID" --budget "$(budget 0.7)" >/dev/null
run_worker "$WORK/a.quota" burn $((2 * SECONDS_PER_PHASE)) >"$WORK/a.jsonl" &
pa=$!
run_worker "$WORK/b.quota" burn $((2 * SECONDS_PER_PHASE)) >"$WORK/b.jsonl" &
pb=$!
sleep "$SECONDS_PER_PHASE"
"$DILU_BIN" quota set "$WORK/b.quota" --budget "$(budget 0.3)" >/dev/null   # lower first: never over 100 %
"$DILU_BIN" quota set "$WORK/a.quota" --budget "$(budget 0.7)" >/dev/null
SWAP=$("$PYTHON" -c "import time; print(time.monotonic())")
wait $pa $pb
"$PYTHON" - "$WORK/a.jsonl" "$WORK/b.jsonl" "$SWAP" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
swap = float(sys.argv[3])
def rate(bins, lo, hi):
    sel = [x for x in bins if lo <= x["wall"] < hi]
    return sum(x["iters"] for x in sel) / (0.1 * len(sel)) if sel else float("nan")
start = max(a[0]["wall"], b[0]["wall"]) + 1.0
end = min(a[-1]["wall"], b[-1]["wall"])
ra1, rb1 = rate(a, start, swap - 0.2), rate(b, start, swap - 0.2)
ra2, rb2 = rate(a, swap + 1.0, end), rate(b, swap + 1.0, end)
print(f"phase 1 (30/70): A {ra1:.1f} it/s, B {rb1:.1f} it/s, A share {ra1/(ra1+rb1):.3f} (target 0.300)")
print(f"phase 2 (70/30): A {ra2:.1f} it/s, B {rb2:.1f} it/s, A share {ra2/(ra2+rb2):.3f} (target 0.700)")
# Reaction: first 100 ms bin of A after the swap whose rate is within 15 % of phase 2's steady rate.
after = [x for x in a if x["wall"] >= swap]
reaction = next((x["wall"] - swap for x in after if x["iters"] / 0.1 >= 0.85 * ra2), float("nan"))
print(f"reaction time of A to its raised budget: {reaction*1000:.0f} ms (bins are 100 ms)")
PY

echo "== 3. memory cap 2 GiB"
"$DILU_BIN" quota create "$WORK/m.quota" --device "$UUID" --mem-cap 2GiB >/dev/null
run_worker "$WORK/m.quota" oom 2
"$DILU_BIN" quota show "$WORK/m.quota" | grep -E "memory|compute"

echo "== 4. the agent on the GPU: NVML discovery; its token manager divides the GPU between two instances"
"$PYTHON" scripts/gpu-check/agent.py "$DILU_BIN" "$DILU_CUDA_LIB" "$PWD/$WORKER" "$(budget 1.0)" "$WORK"
