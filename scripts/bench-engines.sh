#!/usr/bin/env bash
# The built-in worker's two engines side by side: tract against ONNX Runtime (`dilu worker --engine`), over real
# HTTP on this machine, for the three models of the cache (SqueezeNet, ResNet-50, PaddleOCR's classifier):
#
#   latency:     SERIAL requests of batch 1, one after the other (p50, p99 end to end; the model's execution
#                per batch from the worker's metrics)
#   throughput:  8 concurrent clients in a closed loop for SECONDS (req/s; mean batch size; executor CPU time
#                per request, the time the worker charges to its quota channel)
#
# Prints a Markdown table per model and engine and the ratios onnxruntime/tract. Release build
# (`cargo run --release -p dilu-worker --example bench_engines`); fetches the models and ONNX Runtime's library
# first (scripts/fetch-models.sh, idempotent).
#
#   scripts/bench-engines.sh [SERIAL [SECONDS]]        (defaults: 200 requests, 15 s)
#
# Environment: DILU_MODEL_CACHE (the cache, default ~/.cache/dilu/models), ORT_DYLIB_PATH (another ONNX Runtime
# library, e.g. onnxruntime-gpu's, instead of the cache's CPU one). Clients and worker share the machine's
# cores, so on a 2-core machine both engines are measured under the same contention.
set -euo pipefail
cd "$(dirname "$0")/.."

SERIAL="${1:-200}"
SECONDS_PER_RUN="${2:-15}"

bash scripts/fetch-models.sh >&2
cargo build --release -p dilu-worker --example bench_engines >&2
echo "# bench-engines: $(nproc) cores, $(uname -m), $(date -u +%Y-%m-%dT%H:%MZ)"
exec target/release/examples/bench_engines "$SERIAL" "$SECONDS_PER_RUN"
