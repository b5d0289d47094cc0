#!/usr/bin/env python3
"""Generate crates/dilu-core/src/perf/builtin_tables.rs from the shared profile CSVs.

The shared data (Dilu's artifact profiles and a third-party gpulet re-implementation's profiles) carry no licence,
so they are NOT copied into the repository. What is embedded is a derived table per model:

  1. per-batch time in seconds: latency_s for per-batch tables; batch / throughput for llama2, whose latency
     column is per generated token and whose bs=32 rows overstate throughput 2x (halved here);
  2. sorted and made monotone: for each batch a running minimum over increasing SM share (more SMs never
     slower), then for each share a running maximum over increasing batch (a larger batch never faster);
  3. rounded to 4 significant digits.

Only (batch, sm_pct, batch_time_s) is stored; throughput is batch / batch_time_s.

Usage (from the repository root; Python 3.11+, standard library only):

    python3 scripts/gen-builtin-profiles.py [--data ../shared/data] [--out crates/dilu-core/src/perf/builtin_tables.rs]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "crates" / "dilu-core" / "src" / "perf" / "builtin_tables.rs"

DILU_MODELS = ["resnet152", "bert_base", "roberta_large", "gpt2_large", "llama2"]
DILU_REPO = "https://github.com/sigserverless/Dilu"
DILU_COMMIT = "1134655a08e659db9a39f906acb76222d2c86c20"
DILU_PATH = "profiling/inference/observations/results/bs_sm_<model>.csv"
GPULET_REPO = "https://github.com/0909wlgur/Gpulet"
GPULET_COMMIT = "8015c3d3f3281aa890cf41a855512f9da899af6d"
GPULET_PATH = "data/inference.csv"
# llama2: latency is per generated token; a request generates this many tokens.
LLAMA_TOKENS = 32

Grid = dict[tuple[int, int], float]


def fail(msg: str) -> None:
    print(f"gen-builtin-profiles: {msg}", file=sys.stderr)
    sys.exit(1)


def check_readme(readme: Path, commit: str) -> None:
    text = readme.read_text(encoding="utf-8")
    if commit not in text:
        fail(f"{readme} does not name commit {commit}; update the source commit in this script")


def as_int(text: str, where: str) -> int:
    value = float(text)
    if value != int(value):
        fail(f"{where}: {text!r} is not an integer")
    return int(value)


def read_dilu(path: Path, model: str) -> Grid:
    grid: Grid = {}
    with path.open(newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            where = f"{path}:{lineno}"
            batch, sm = as_int(row[0], where), as_int(row[1], where)
            latency, throughput = float(row[2]), float(row[3])
            if model == "llama2":
                if batch == 32:
                    throughput /= 2.0
                batch_time = batch / throughput
            else:
                batch_time = latency
            if (batch, sm) in grid:
                fail(f"{where}: duplicate point batch={batch} sm={sm}")
            grid[(batch, sm)] = batch_time
    return grid


def read_gpulet(path: Path) -> dict[str, Grid]:
    grids: dict[str, Grid] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            where = f"{path}:{lineno}"
            model, ok = row[0], row[7].strip()
            if ok != "1":
                continue  # failed run
            batch, sm = as_int(row[1], where), as_int(row[2], where)
            grid = grids.setdefault(model, {})
            if (batch, sm) in grid:
                fail(f"{where}: duplicate point {model} batch={batch} sm={sm}")
            grid[(batch, sm)] = float(row[6])
    return grids


def sig4(x: float) -> float:
    return float(f"{x:.4g}")


def derive(name: str, grid: Grid) -> tuple[list[int], list[int], list[list[float]]]:
    batches = sorted({b for b, _ in grid})
    sms = sorted({s for _, s in grid})
    for b in batches:
        for s in sms:
            if (b, s) not in grid:
                fail(f"{name}: grid point batch={b} sm={s} is missing (failed run?); cannot embed a holey grid")
            if not grid[(b, s)] > 0.0:
                fail(f"{name}: batch={b} sm={s} has non-positive time {grid[(b, s)]}")
    rows = [[grid[(b, s)] for s in sms] for b in batches]
    for row in rows:  # non-increasing in SM share
        for j in range(1, len(row)):
            row[j] = min(row[j], row[j - 1])
    for j in range(len(sms)):  # non-decreasing in batch
        for i in range(1, len(batches)):
            rows[i][j] = max(rows[i][j], rows[i - 1][j])
    return batches, sms, [[sig4(v) for v in row] for row in rows]


def emit(tables: list[tuple[str, str, int | None, list[int], list[int], list[list[float]]]]) -> str:
    out: list[str] = []
    w = out.append
    w("//! Embedded performance tables: per-batch execution time by batch size and SM share, one table per model.")
    w("//!")
    w("//! GENERATED by `scripts/gen-builtin-profiles.py`; do not edit. Regenerate from the repository root with")
    w("//! `python3 scripts/gen-builtin-profiles.py --data ../shared/data`.")
    w("//!")
    w("//! Derived, monotonised, rounded; not the original measurements. Sources:")
    w(f"//! - Dilu models: <{DILU_REPO}> at commit {DILU_COMMIT},")
    w(f"//!   `{DILU_PATH}` (MPS SM partitioning, A100 testbed per the paper).")
    w(f"//! - `gpulet/*` CNNs: <{GPULET_REPO}> at commit {GPULET_COMMIT},")
    w(f"//!   `{GPULET_PATH}` (a third-party gpulet re-implementation; GPU model not stated; failed runs dropped).")
    w("//!")
    w("//! Derivation: batch time = latency per batch (llama2: batch / throughput, with the bs=32 throughput halved")
    w("//! because those runs had only 16 prompts); per batch a running minimum over increasing SM share; per share a")
    w("//! running maximum over increasing batch; rounded to 4 significant digits. Throughput = batch / batch time.")
    w("")
    w("use super::catalog::{BuiltinTable, TableSource};")
    w("")
    w("/// Every embedded table, Dilu models first, then the gpulet CNNs.")
    w("#[rustfmt::skip]")
    w("pub(crate) static BUILTIN_TABLES: &[BuiltinTable] = &[")
    for name, source, tokens, batches, sms, rows in tables:
        w("    BuiltinTable {")
        w(f"        name: {name!r},".replace("'", '"'))
        w(f"        source: TableSource::{source},")
        w(f"        tokens_per_request: {'Some(%d)' % tokens if tokens else 'None'},")
        w(f"        sm_pcts: &[{', '.join(str(s) for s in sms)}],")
        w("        rows: &[")
        for b, row in zip(batches, rows):
            w(f"            ({b}, &[{', '.join(repr(v) for v in row)}]),")
        w("        ],")
        w("    },")
    w("];")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the Rust file to write ('-' for stdout)")
    args = ap.parse_args()
    dilu_dir = args.data / "dilu"
    gpulet_dir = args.data / "gpulet-profiles"
    check_readme(dilu_dir / "README.md", DILU_COMMIT)
    check_readme(gpulet_dir / "README.md", GPULET_COMMIT)
    tables = []
    for model in DILU_MODELS:
        grid = read_dilu(dilu_dir / "profiles" / f"bs_sm_{model}.csv", model)
        tokens = LLAMA_TOKENS if model == "llama2" else None
        tables.append((model, "Dilu", tokens, *derive(model, grid)))
    for model, grid in sorted(read_gpulet(gpulet_dir / "inference.csv").items()):
        name = f"gpulet/{model}"
        tables.append((name, "Gpulet", None, *derive(name, grid)))
    text = emit(tables)
    if str(args.out) == "-":
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {len(tables)} tables to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
