"""Summarise benchmark runs (``<name>_seed<k>/results.json``) as a markdown table: mean ± std over seeds.

    python benchmarks/summarize.py benchmarks/runs/conll03
"""
from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def fmt(values):
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main(folder: str):
    groups = defaultdict(list)
    for results in sorted(Path(folder).glob("*_seed*/results.json")):
        name, seed = re.match(r"(.+)_seed(\d+)$", results.parent.name).groups()
        data = json.loads(results.read_text())
        wall = results.parent / "wall_time.json"
        data["wall"] = json.loads(wall.read_text())["seconds"] if wall.is_file() else float("nan")
        data["seed"] = int(seed)
        groups[name].append(data)
    tasks = ["pos", "chunk", "ner"]
    print("| run | seeds | " + " | ".join(f"{t} dev" for t in tasks) + " | " + " | ".join(f"{t} test" for t in tasks)
          + " | params | epochs (selected / run) | wall min |")
    print("|" + "---|" * (5 + 2 * len(tasks)))
    for name, runs in groups.items():
        dev = [fmt([r["dev"][t]["score"] for r in runs if t in r["dev"]]) for t in tasks]
        test = [fmt([r["test"][t]["score"] for r in runs if t in r["test"]]) for t in tasks]
        seeds = ",".join(str(r["seed"]) for r in runs)
        epochs = ", ".join(f"{r['selected_epoch']}/{r['epochs_run']}" for r in runs)
        wall = fmt([r["wall"] / 60 for r in runs])
        print(f"| {name} | {seeds} | " + " | ".join(dev) + " | " + " | ".join(test)
              + f" | {runs[0]['parameters']:,} | {epochs} | {wall} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/runs/conll03")
