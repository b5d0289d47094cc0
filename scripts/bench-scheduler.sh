#!/usr/bin/env bash
# dilu-scheduler against the real kube-scheduler 1.20: 1,000 pending pods (whole-GPU requests) bound onto
# fake nodes with 8 GPUs each (125 of them: one GPU per pod), each scheduler on a fresh etcd +
# kube-apiserver 1.20 on loopback; prints a table (time to first and last bind, pods/s, the API server's
# and the schedulers' CPU) and the ratios. The method is in crates/dilu-k8s/tests/scheduler_bench.rs.
#
#   scripts/bench-scheduler.sh
#
# Environment (passed through to the benchmark): DILU_BENCH_ROUNDS (1), DILU_BENCH_PODS (1000),
# DILU_BENCH_NODES (pods / 8), DILU_BENCH_IN_FLIGHT (64), DILU_BENCH_SKIP_DEFAULT_QPS=1 (leave out
# kube-scheduler with its default client rate, qps 50), DILU_BENCH_ONLY (dilu or kube).
# Needs the binaries of scripts/build-kube.sh (built here when missing; root or sudo for apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-kube.sh
cargo nextest run --workspace -E 'test(scheduling_throughput)' --run-ignored only --no-capture
