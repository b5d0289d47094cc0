#!/usr/bin/env python3
"""The Dilu paper's headline claims against what our simulator shows (docs/benchmarks.md, "The paper's claims").

Runs `dilu sim serve --format json` on every shipped scenario and `dilu sim instances` on Dilu's published
3200-instance trace, and prints one Markdown table per claim: Dilu's figure, each baseline's, and the ratio the
paper's claim is about. Standard library only; deterministic (the simulators are).

    scripts/paper-claims.py [--dilu target/debug/dilu] [--data ../shared/data]
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

SCENARIOS = [
    "colocation-inference-training",
    "colocation-inference-inference",
    "cluster-20-node",
]
# The paper compares Dilu with INFless, FaST-GShare, TGS and exclusive-GPU Kubernetes; HAS-GPU is ours to add.
BASELINES = ["exclusive", "infless", "fast-gshare", "tgs", "has"]
PLACERS = ["exclusive", "infless-l", "infless-r"]


def run(cmd: list) -> object:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def serve(dilu: str, scenario: str) -> dict:
    runs = run([dilu, "sim", "serve", "--scenario", f"scenarios/{scenario}.yaml",
                "--policies", ",".join(["dilu"] + BASELINES), "--format", "json"])["policies"]
    return {r["policy"]: r for r in runs}


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def change(dilu: float, other: float) -> str:
    """Dilu's value relative to the other's, as '% fewer' / '% more'."""
    if other <= 0:
        return "n/a"
    pct = 100 * (dilu - other) / other
    return f"{-pct:.0f} % fewer" if pct <= 0 else f"{pct:.0f} % more"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dilu", default="target/debug/dilu")
    ap.add_argument("--data", default="../shared/data")
    args = ap.parse_args()
    trace = Path(args.data) / "dilu/sim-instances/instances-3200.txt"
    if not trace.is_file():
        print(f"paper-claims: {trace} is missing (../shared/data)", file=sys.stderr)
        return 2

    results = {s: serve(args.dilu, s) for s in SCENARIOS}

    print("### Inference throughput per GPU (goodput per GPU-hour; Dilu / baseline)\n")
    print("| scenario | Dilu | " + " | ".join(BASELINES) + " |")
    print("|---|---:|" + "---:|" * len(BASELINES))
    for s, r in results.items():
        per_gpu = {p: r[p]["goodput_rps"] / r[p]["gpu_hours"] for p in r}
        cells = [f"{per_gpu[b]:.0f} ({ratio(per_gpu['dilu'], per_gpu[b])})" for b in BASELINES]
        print(f"| {s} | {per_gpu['dilu']:.0f} | " + " | ".join(cells) + " |")

    print("\n### Training throughput (x of an exclusive GPU; Dilu / baseline)\n")
    print("| scenario | Dilu | " + " | ".join(BASELINES) + " |")
    print("|---|---:|" + "---:|" * len(BASELINES))
    for s, r in results.items():
        if r["dilu"]["training_throughput"] <= 0:
            continue
        t = {p: r[p]["training_throughput"] for p in r}
        cells = [f"{t[b]:.3f} ({ratio(t['dilu'], t[b])})" for b in BASELINES]
        print(f"| {s} | {t['dilu']:.3f} | " + " | ".join(cells) + " |")

    print("\n### SLO violations (Dilu against each baseline)\n")
    print("| scenario | Dilu | " + " | ".join(BASELINES) + " |")
    print("|---|---:|" + "---:|" * len(BASELINES))
    for s, r in results.items():
        v = {p: 100 * r[p]["slo_violation_rate"] for p in r}
        cells = [f"{v[b]:.2f} % ({change(v['dilu'], v[b])})" for b in BASELINES]
        print(f"| {s} | {v['dilu']:.2f} % | " + " | ".join(cells) + " |")

    inst = run([args.dilu, "sim", "instances", "--trace", str(trace),
                "--policy", ",".join(["dilu"] + PLACERS), "--format", "json"])
    by = {r["policy"]: r for r in inst}
    print("\n### Fragmentation on Dilu's instances-3200 trace (mean over active GPUs; Dilu against each)\n")
    print("| measure | Dilu | " + " | ".join(PLACERS) + " |")
    print("|---|---:|" + "---:|" * len(PLACERS))
    for key, name in [("mean_mem_frag", "memory fragmentation"), ("mean_sm_frag", "SM fragmentation"),
                      ("peak_active_gpus", "peak active GPUs")]:
        d = by["dilu"][key]
        fmt = (lambda x: f"{x:.0f}") if key == "peak_active_gpus" else (lambda x: f"{x:.3f}")
        cells = [f"{fmt(by[p][key])} ({change(d, by[p][key]).replace('fewer', 'less')})" for p in PLACERS]
        print(f"| {name} | {fmt(d)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
