#!/usr/bin/env bash
# Real-GPU check of the CUDA interposer (libdilu_cuda.so), the node agent and the platform (not part of CI:
# needs an NVIDIA GPU, PyTorch and this repository; no network, no cargo where prebuilt binaries are given).
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
# 5. The platform: `dilu up` with NVML discovery and the interposer (no CPU device) deploys the PyTorch example
#    (examples/pytorch/serve.py) twice, requests 0.3 and 0.7 with limits = requests; closed-loop clients load
#    the first, then both, through the gateway while GET /v1/instances is sampled every ~10 ms: each phase's
#    launch/cost split in 50 ms buckets and the vertical reaction (busy_since_ns, re-division of the device).
#    Then a function with quota.memory 1GiB (examples/cuda-ctypes/serve.py) gets a 2 GiB request: 500 CUDA out
#    of memory, the next request 200, alloc_failures >= 1, last_error naming device memory
#    (scripts/gpu-check/platform.py; about 1-3 minutes, bounded at 200 s).
#
# Figures go to $OUT (default target/gpu-check): gpu-check.log (everything printed), platform.json,
# platform-samples.jsonl and platform-summary.txt (section 5). Exits non-zero when a section fails.
#
# Prepare here (the GPU machine has no cargo):
#   cargo build --release -p dilu && cargo build --profile interposer -p dilu-cuda
#   mkdir -p .gpu && cp target/release/dilu target/interposer/libdilu_cuda.so .gpu/ && strip .gpu/*
#   (with /.gpu/ in .git/info/exclude the folder is carried, never committed)
# and run there, carrying .gpu:
#   DILU_BIN=.gpu/dilu DILU_CUDA_LIB=$PWD/.gpu/libdilu_cuda.so OUT=$OUT scripts/gpu-check.sh
# Without DILU_BIN and DILU_CUDA_LIB it builds them with cargo.
#
# Environment: PYTHON (python3; needs torch, and torchvision for section 5's PyTorch functions),
# SECONDS_PER_PHASE (6, section 2), GPU_CHECK_SECTIONS (e.g. "1 5"; default all; section 1 runs whenever 2 or 4
# does, and section 5 then gets its calibration as the GPU capacity unless DILU_GPU_CHECK_CAPACITY says
# otherwise, e.g. `learned`), the DILU_GPU_CHECK_* switches of scripts/gpu-check/platform.py.
#
# Dry run of section 5 without a GPU: DILU_GPU_CHECK_DRY=1 scripts/gpu-check.sh declares the GPU
# (`--no-nvml --gpu UUID,...`) over the software CUDA driver of crates/dilu-cuda-testkit (DILU_FAKE_CUDA_DIR, or
# built with cargo), runs the ctypes server instead of PyTorch, and skips sections 1-4; DILU_BIN and
# DILU_CUDA_LIB default to target/debug (cargo build -p dilu -p dilu-cuda).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
SECONDS_PER_PHASE=${SECONDS_PER_PHASE:-6}
SECTIONS=" ${GPU_CHECK_SECTIONS:-1 2 3 4 5} "
DRY=${DILU_GPU_CHECK_DRY:-0}
[ "$DRY" = 0 ] || SECTIONS=" 5 "
want() { [[ "$SECTIONS" == *" $1 "* ]]; }
if want 2 || want 4; then SECTIONS="$SECTIONS 1 "; fi
if [ "$DRY" != 0 ]; then
  DILU_BIN=${DILU_BIN:-target/debug/dilu}
  DILU_CUDA_LIB=${DILU_CUDA_LIB:-$PWD/target/debug/libdilu_cuda.so}
  if [ -z "${DILU_FAKE_CUDA_DIR:-}" ]; then
    DILU_FAKE_CUDA_DIR=$(cargo build -p dilu-cuda-testkit --message-format=json 2>/dev/null | "$PYTHON" -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "build-script-executed" and "dilu-cuda-testkit" in m.get("package_id", ""):
        print(m["out_dir"] + "/fakecuda")
')
  fi
  export DILU_FAKE_CUDA_DIR
elif [ -z "${DILU_BIN:-}" ] || [ -z "${DILU_CUDA_LIB:-}" ]; then
  cargo build --release -p dilu >&2
  cargo build --profile interposer -p dilu-cuda >&2
  DILU_BIN=target/release/dilu
  DILU_CUDA_LIB=$PWD/target/interposer/libdilu_cuda.so
fi
OUT=${OUT:-$PWD/target/gpu-check}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1
WORK=$(mktemp -d)
cleanup() {   # section 5's dilu up, should its script have been killed before stopping it
  if [ -f "$WORK/platform/up.pid" ]; then kill -TERM "$(cat "$WORK/platform/up.pid")" 2>/dev/null || true; sleep 3; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
WORKER=scripts/gpu-check/worker.py
if [ "$DRY" = 0 ]; then
  nvidia-smi --query-gpu=name,uuid,memory.total --format=csv,noheader
  UUID=$(nvidia-smi --query-gpu=uuid --format=csv,noheader | head -1)
fi
FAILED=""

json_field() { "$PYTHON" -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
run_worker() { # channel, args...
  local channel=$1; shift
  CUDA_VISIBLE_DEVICES=$UUID LD_PRELOAD=$DILU_CUDA_LIB DILU_QUOTA_FILE=$channel "$PYTHON" "$WORKER" "$@"
}

RATE=""
if want 1; then
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
fi
budget() { "$PYTHON" -c "print(int($RATE * $1 * 0.005))"; }   # share -> units per 5 ms window

if want 2; then
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
fi

if want 3; then
echo "== 3. memory cap 2 GiB"
"$DILU_BIN" quota create "$WORK/m.quota" --device "$UUID" --mem-cap 2GiB >/dev/null
run_worker "$WORK/m.quota" oom 2
"$DILU_BIN" quota show "$WORK/m.quota" | grep -E "memory|compute"
fi

if want 4; then
echo "== 4. the agent on the GPU: NVML discovery; its token manager divides the GPU between two instances"
"$PYTHON" scripts/gpu-check/agent.py "$DILU_BIN" "$DILU_CUDA_LIB" "$PWD/$WORKER" "$(budget 1.0)" "$WORK"
fi

if want 5; then
echo "== 5. the platform on the GPU: dilu up, two PyTorch functions (0.3 / 0.7) under load, a memory cap"
if [ -n "$RATE" ] && [ -z "${DILU_GPU_CHECK_CAPACITY:-}" ]; then
  export DILU_GPU_CHECK_CAPACITY=$(budget 1.0)   # section 1's calibration (else the token manager learns it)
fi
# The script has its own 170 s deadline and stops dilu up on SIGTERM; timeout is the backstop.
if ! timeout -k 15 200 "$PYTHON" scripts/gpu-check/platform.py --dilu "$DILU_BIN" --interposer "$DILU_CUDA_LIB" \
    --python "${DILU_PYTHON:-$PYTHON}" --out "$OUT" --work "$WORK/platform"; then
  FAILED="$FAILED 5"
fi
fi

if [ -n "$FAILED" ]; then
  echo "gpu-check: FAILED section(s):$FAILED (figures in $OUT)"
  exit 1
fi
echo "gpu-check: done (figures in $OUT)"
