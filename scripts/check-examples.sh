#!/usr/bin/env bash
# Checks the `runtime: process` examples standalone, without the platform: examples/pytorch/serve.py and
# train.py with a PyTorch virtual environment, and examples/cuda-ctypes/serve.py over the software CUDA driver
# of crates/dilu-cuda-testkit. Each server is started as the platform starts it (PORT, DILU_FUNCTION,
# DILU_MAX_BATCH) and called with the Triton client; see scripts/check-examples.py for the list of checks.
#
#   scripts/check-examples.sh [--only resnet,train,ctypes]
#
# The Python: $DILU_PYTHON when set (it needs torch, torchvision, tritonclient[http] and numpy), else the one
# scripts/fetch-torch.sh makes (at $DILU_TORCH_VENV, else ~/.cache/dilu/torch; created on first use: ~5.4 GB).
# The driver: built with `cargo build -p dilu-cuda-testkit`, or $DILU_FAKE_CUDA_DIR (holding libcuda.so.1).
# When the CUDA interposer and dilu are built ($DILU_CUDA_LIB, $DILU_BIN; default target/debug/libdilu_cuda.so
# and target/debug/dilu), the ctypes server is also checked under the interposer's budget and memory cap.
# Exits non-zero when a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${DILU_PYTHON:-}" ]]; then
    PYTHON="$DILU_PYTHON"
else
    PYTHON="$(scripts/fetch-torch.sh | tail -1)"
fi

if [[ -z "${DILU_FAKE_CUDA_DIR:-}" ]]; then
    # The build script's output directory, as cargo reports it for this build.
    DILU_FAKE_CUDA_DIR="$(cargo build -p dilu-cuda-testkit --message-format=json 2>/dev/null | "$PYTHON" -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "build-script-executed" and "dilu-cuda-testkit" in m.get("package_id", ""):
        print(m["out_dir"] + "/fakecuda")
')"
fi
if [[ ! -f "$DILU_FAKE_CUDA_DIR/libcuda.so.1" ]]; then
    echo "check-examples: no libcuda.so.1 in '$DILU_FAKE_CUDA_DIR' (cargo build -p dilu-cuda-testkit failed?)" >&2
    exit 1
fi

# The CUDA interposer and the dilu binary, when built (not built here: `cargo build -p dilu-cuda -p dilu`).
DILU_CUDA_LIB="${DILU_CUDA_LIB:-$PWD/target/debug/libdilu_cuda.so}"
DILU_BIN="${DILU_BIN:-$PWD/target/debug/dilu}"
interposer=()
if [[ -f "$DILU_CUDA_LIB" && -x "$DILU_BIN" ]]; then
    interposer=(--interposer "$DILU_CUDA_LIB" --dilu "$DILU_BIN")
fi

echo "check-examples: python $PYTHON, software driver $DILU_FAKE_CUDA_DIR/libcuda.so.1"
exec "$PYTHON" scripts/check-examples.py --torch-python "$PYTHON" --driver-dir "$DILU_FAKE_CUDA_DIR" \
    "${interposer[@]}" "$@"
