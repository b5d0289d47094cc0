#!/usr/bin/env python3
"""SLO violations against training throughput, per policy, on every shipped scenario (docs/policies.md, "dilu-slo").

Runs `dilu sim serve --format json` on each scenario with every policy, prints a Markdown table (violations, p99,
training throughput, GPU-hours) and writes one SVG scatter per scenario side by side. Standard library only.

    scripts/slo-tradeoff.py [--dilu target/debug/dilu] [--out docs/img/slo-tradeoff.svg]
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
POLICIES = ["dilu", "exclusive", "infless", "fast-gshare", "tgs", "has", "dilu-slo"]
COLORS = {
    "dilu": "#1f77b4",
    "exclusive": "#7f7f7f",
    "infless": "#2ca02c",
    "fast-gshare": "#9467bd",
    "tgs": "#ff7f0e",
    "has": "#8c564b",
    "dilu-slo": "#d62728",
}


def run(dilu: str, scenario: str) -> dict:
    out = subprocess.run(
        [dilu, "sim", "serve", "--scenario", f"scenarios/{scenario}.yaml",
         "--policies", ",".join(POLICIES), "--format", "json"],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)


def panel(x0: float, scenario: str, runs: list, w: float, h: float) -> str:
    """One scatter: x = training throughput (0..1), y = SLO violations (0..max, %)."""
    left, top, pw, ph = x0 + 55, 40, w - 75, h - 90
    ymax = max(100 * r["slo_violation_rate"] for r in runs) * 1.1 or 1.0
    parts = [f'<text x="{x0 + w / 2}" y="22" text-anchor="middle" font-size="14">{scenario}</text>',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>']
    for i in range(6):
        fx = i / 5
        gx = left + fx * pw
        parts.append(f'<line x1="{gx}" y1="{top + ph}" x2="{gx}" y2="{top + ph + 4}" stroke="#444"/>')
        parts.append(f'<text x="{gx}" y="{top + ph + 17}" text-anchor="middle" font-size="10">{fx:.1f}</text>')
        fy = ymax * i / 5
        gy = top + ph - (fy / ymax) * ph
        parts.append(f'<line x1="{left - 4}" y1="{gy}" x2="{left}" y2="{gy}" stroke="#444"/>')
        parts.append(f'<text x="{left - 6}" y="{gy + 3}" text-anchor="end" font-size="10">{fy:.1f}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{top + ph + 34}" text-anchor="middle" font-size="11">'
                 'training throughput (x of an exclusive GPU)</text>')
    parts.append(f'<text x="{x0 + 14}" y="{top + ph / 2}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 {x0 + 14} {top + ph / 2})">SLO violations (%)</text>')
    for r in runs:
        p = r["policy"]
        cx = left + r["training_throughput"] * pw
        cy = top + ph - (100 * r["slo_violation_rate"] / ymax) * ph
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{COLORS.get(p, "#000")}"/>')
        parts.append(f'<text x="{cx + 7:.1f}" y="{cy - 5:.1f}" font-size="10">{p}</text>')
    return "\n".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dilu", default="target/debug/dilu")
    ap.add_argument("--out", default="docs/img/slo-tradeoff.svg")
    args = ap.parse_args()
    results = {s: run(args.dilu, s) for s in SCENARIOS}
    print("| scenario | policy | SLO violations | p99 ms | training x | GPU-h |")
    print("|---|---|---|---|---|---|")
    for s, d in results.items():
        for r in d["policies"]:
            print(f"| {s} | `{r['policy']}` | {100 * r['slo_violation_rate']:.2f} % | {r['p99_ms']:.1f} | "
                  f"{r['training_throughput']:.3f} | {r['gpu_hours']:.2f} |")
    w, h = 420, 330
    body = "\n".join(panel(i * w, s, d["policies"], w, h) for i, (s, d) in enumerate(results.items()))
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w * len(results)}" height="{h}" '
           f'font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n{body}\n</svg>\n')
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(svg)
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
