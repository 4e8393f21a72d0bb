"""Summarise sparse-sharing runs (``<name>_seed<k>/report.json``): selected densities, overlap ratios,
parameter counts and the cost of each pipeline stage, one row per run.

    python benchmarks/summarize_sparse.py benchmarks/runs/conll03
"""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path


def main(folder: str):
    reports = sorted(Path(folder).glob("*_seed*/report.json"))
    if not reports:
        raise SystemExit(f"no */report.json under {folder}")
    print("| run | selected density per task | overlap ratio | params (effective / separate models) | "
          "warm-up min | search min (per task) | joint min | total min |")
    print("|---|---|---|---|---|---|---|---|")
    for path in reports:
        r = json.loads(path.read_text())
        tasks, cost, params = r["tasks"], r["cost_s"], r["parameters"]
        densities = ", ".join(f"{t} {r['density'][t] * 100:.1f}%" for t in tasks)
        overlap = ", ".join(f"{a}-{b} {r['overlap'][a][b]:.3f}" for a, b in itertools.combinations(tasks, 2))
        search = [cost.get(f"search_{t}_s") for t in tasks]
        search_text = (f"{sum(search) / 60:.1f} ({', '.join(f'{s / 60:.1f}' for s in search)})" if None not in search
                       else f"{cost.get('search_s', float('nan')) / 60:.1f}")
        print(f"| {path.parent.name} | {densities} | {overlap} | {params['total']:,} / {params['separate_models']:,} | "
              f"{cost.get('warmup_s', 0) / 60:.1f} | {search_text} | {cost['joint_s'] / 60:.1f} | {cost['total_s'] / 60:.1f} |")
    print()
    print("Mask search, dev score per round (density):")
    for path in reports:
        r = json.loads(path.read_text())
        for task, records in r["search"].items():
            rounds = "; ".join(f"{rec['density'] * 100:.1f}% {rec['dev']:.2f}" for rec in records)
            print(f"- {path.parent.name} {task}: {rounds}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/runs/conll03")
