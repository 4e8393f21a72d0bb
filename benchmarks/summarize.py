"""Summarise benchmark runs as a markdown table: mean ± std over seeds.

    python benchmarks/summarize.py benchmarks/runs/conll03
    python benchmarks/summarize.py benchmarks/results/conll03 --runs pos chunk ner hard sparse routing  # these rows
    python benchmarks/summarize.py benchmarks/results/conll03_converged benchmarks/results/issue23 --runs ner hard

Several folders are read as one (a shown run name found in two of them is refused: it would mix two grids' seeds).
A name in ``--runs`` may name its folder, ``<folder name>/<run>``, to take that run from that folder only (shown
under that name), e.g. the random-mask control of today's defaults beside the single-task rows of the converged
table, whose folder has a control of its own::

    python benchmarks/summarize.py benchmarks/results/conll03_converged benchmarks/results/conll03_private \
        --runs ner conll03_private/sparse_random


A run is ``<name>_seed<k>/results.json`` (recipes/train.py) or ``<name>_seed<k>/report.json`` with
``joint/results.json`` (recipes/train_sparse.py). For sparse runs "params" is the effective count
(weights kept by at least one mask, plus dense parameters and heads), and the epochs are the joint
training's; their wall time includes warm-up and mask search.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path


ORDER = ["pos", "xpos", "upos", "chunk", "chunk2000", "ner", "pp"]


def fmt(values):
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main(folders: str | list[str], only: list[str] | None = None, seeds: list[int] | None = None):
    groups = defaultdict(list)
    found_in: dict[str, Path] = {}
    folders = [Path(f) for f in ([folders] if isinstance(folders, str) else folders)]
    qualified = {name for name in only or () if "/" in name}
    unknown = {name.split("/")[0] for name in qualified} - {f.name for f in folders}
    if unknown:
        sys.exit(f"--runs names folder(s) {sorted(unknown)} that are not among the folders given")
    named = [f.name for f in folders]
    if qualified and len(set(named)) < len(named):
        sys.exit(f"two folders given have the same name ({named}): --runs <folder>/<run> would not tell them apart")
    for folder in folders:
        for run in sorted(p for p in folder.glob("*_seed*") if p.is_dir()):
            name = re.match(r"(.+)_seed(\d+)$", run.name).group(1)
            if f"{folder.name}/{name}" in qualified:
                _read(run, seeds, groups, f"{folder.name}/{name}")
            if only and name not in only:
                continue
            if found_in.setdefault(name, folder) != folder:
                sys.exit(f"run {name!r} is in both {found_in[name]} and {folder}; summarise them separately, or "
                         f"name its folder in --runs ({folder.name}/{name})")
            _read(run, seeds, groups, name)
    _print(groups, only)


def _read(run: Path, seeds: list[int] | None, groups: dict, name: str) -> None:
    seed = re.match(r"(.+)_seed(\d+)$", run.name).group(2)
    if seeds and int(seed) not in seeds:
        return
    if (run / "report.json").is_file():
        data = json.loads((run / "joint" / "results.json").read_text())
        data["parameters"] = json.loads((run / "report.json").read_text())["parameters"]["total"]
    elif (run / "results.json").is_file():
        data = json.loads((run / "results.json").read_text())
    else:
        return  # unfinished
    wall = json.loads((run / "wall_time.json").read_text()) if (run / "wall_time.json").is_file() else {}
    # a record marked incomplete lost the time of a part of its run (a driver killed before it kept count)
    data["wall"] = wall["seconds"] if wall and wall.get("complete", True) else None
    data["seed"] = int(seed)
    groups[name].append(data)


def _print(groups: dict, only: list[str] | None) -> None:
    if only:  # the named runs, in the order given
        groups = {name: groups[name] for name in only if name in groups}
    found = dict.fromkeys(t for runs in groups.values() for r in runs for t in r["dev"])
    tasks = sorted(found, key=lambda t: (ORDER.index(t) if t in ORDER else len(ORDER), t))
    print("| run | seeds | " + " | ".join(f"{t} dev" for t in tasks) + " | " + " | ".join(f"{t} test" for t in tasks)
          + " | params | epochs (selected / run) | wall min |")
    print("|" + "---|" * (5 + 2 * len(tasks)))
    for name, runs in groups.items():
        dev = [fmt([r["dev"][t]["score"] for r in runs if t in r["dev"]]) for t in tasks]
        test = [fmt([r["test"][t]["score"] for r in runs if t in r["test"]]) for t in tasks]
        seeds = ",".join(str(r["seed"]) for r in runs)
        epochs = ", ".join(f"{r['selected_epoch']}/{r['epochs_run']}" for r in runs)
        timed = [r["wall"] / 60 for r in runs if r["wall"] is not None]
        wall = fmt(timed) + (f" ({len(timed)} of {len(runs)} timed)" if len(timed) < len(runs) else "")
        print(f"| {name} | {seeds} | " + " | ".join(dev) + " | " + " | ".join(test)
              + f" | {runs[0]['parameters']:,} | {epochs} | {wall} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", default=["benchmarks/runs/conll03"])
    parser.add_argument("--runs", nargs="+", help="only these runs (names without _seed<k>), in this order; "
                                                  "<folder name>/<run> takes a run from that folder only")
    parser.add_argument("--seeds", nargs="+", type=int, help="only these seeds")
    args = parser.parse_args()
    main(args.folders, args.runs, args.seeds)
