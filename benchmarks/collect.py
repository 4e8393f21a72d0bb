"""Copy finished benchmark runs into benchmarks/results/ (records only, no weights), with their test predictions,
and check that the predictions rescore to the reported test scores.

    python benchmarks/collect.py benchmarks/runs/conll03_converged benchmarks/results/conll03_converged \
        --data-root ../shared/data [--runs ner_seed1 sparse_seed1 ...]

A training run (``results.json``) keeps ``config.yaml``, ``results.json`` and ``wall_time.json``; a sparse run
(``report.json``) also ``report.md``, ``overlap.png``, the joint stage's ``results.json`` and ``config.yaml``,
each task's ``search.json`` and any ``validation/*.json``; a routing run also its model's ``routing.json``. The
test predictions of the reported model are written by ``sparseshare evaluate MODEL --split test --predictions DIR
--gzip`` as ``predictions/test.<task>.conll.gz`` (``token gold predicted``), then rescored here independently
(seqeval span F1 in its default, conlleval-compatible mode, or token accuracy over the gold labels the task scores)
and compared with the run's test scores: a difference above 0.01 is an error.
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

from seqeval.metrics import f1_score

RUN_FILES = ("config.yaml", "results.json", "wall_time.json", "report.json", "report.md", "overlap.png")


def read_conll(path: Path) -> tuple[list[list[str]], list[list[str]]]:
    gold, predicted, g, p = [], [], [], []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if not fields:
                if g:
                    gold.append(g), predicted.append(p)
                g, p = [], []
                continue
            g.append(fields[-2]), p.append(fields[-1])
    if g:
        gold.append(g), predicted.append(p)
    return gold, predicted


def rescore(path: Path, metric: str, ignore_labels: tuple[str, ...] = ()) -> float:
    """``ignore_labels``: gold labels that accuracy does not count (PP attachment scores prepositions only)."""
    gold, predicted = read_conll(path)
    if metric == "accuracy":
        pairs = [(a, b) for gs, ps in zip(gold, predicted) for a, b in zip(gs, ps) if a not in ignore_labels]
        return 100.0 * sum(a == b for a, b in pairs) / len(pairs)
    return 100.0 * f1_score(gold, predicted)


def _ignored_labels(config: Path) -> dict[str, tuple[str, ...]]:
    """Per task of the run's config, the gold labels its accuracy leaves out (the task file's ignore_labels)."""
    import yaml

    from sparseshare.tasks import load_task

    specs = [load_task(entry) for entry in yaml.safe_load(config.read_text())["tasks"]]
    return {spec.name: tuple(spec.ignore_labels) for spec in specs}


def without_machine_paths(folder: Path, run: Path, data_root: str) -> None:
    """Records name no path of the machine they ran on: the interpreter becomes ``python``, files of a checkout
    (or worktree) of this repository become relative to it, the data root ``../shared/data`` and the runs'
    folder ``benchmarks/runs/<its name>``."""
    import re

    rules = [(re.escape(str(Path(data_root).resolve())), "../shared/data"),
             (re.escape(str(run.parent.resolve())), f"benchmarks/runs/{run.parent.resolve().name}"),
             (r"/[^\s\"',]*/bin/python[0-9.]*", "python"),
             (r"/[^\s\"',]*/((?:recipes|benchmarks|sparseshare)/)", r"\1")]
    for path in folder.rglob("*"):
        if path.suffix in (".json", ".yaml", ".md") and path.is_file():
            text = original = path.read_text(encoding="utf-8")
            for pattern, replacement in rules:
                text = re.sub(pattern, replacement, text)
            if text != original:
                path.write_text(text, encoding="utf-8")


def collect(run: Path, dest: Path, data_root: str) -> list[str]:
    sparse = (run / "report.json").is_file()
    if not sparse and not (run / "results.json").is_file():
        return [f"{run}: not finished, skipped"]
    dest.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        if (run / name).is_file():
            shutil.copy2(run / name, dest / name)
    if sparse:
        (dest / "joint").mkdir(exist_ok=True)
        for name in ("results.json", "config.yaml"):
            shutil.copy2(run / "joint" / name, dest / "joint" / name)
        for search in sorted((run / "search").glob("*/search.json")):
            (dest / "search" / search.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(search, dest / "search" / search.parent.name / "search.json")
        for validation in sorted((run / "validation").glob("*.json")):
            (dest / "validation").mkdir(exist_ok=True)
            shutil.copy2(validation, dest / "validation" / validation.name)
    model = run / "joint" / "model" if sparse else run / "model"
    if (model / "routing.json").is_file():  # a routing network's per-epoch maps (sparseshare routing show reads it)
        shutil.copy2(model / "routing.json", dest / "routing.json")
    results = json.loads((run / "joint" / "results.json" if sparse else run / "results.json").read_text())
    if model.is_dir():
        subprocess.run([sys.executable, "-m", "sparseshare.cli", "evaluate", str(model), "--split", "test",
                        "--data-root", data_root, "--predictions", str(dest / "predictions"), "--gzip"], check=True,
                       stdout=subprocess.DEVNULL)
    else:  # a record collected before (weights not kept): its predictions travel with it
        shutil.copytree(run / "predictions", dest / "predictions", dirs_exist_ok=True)
    lines = []
    ignored = _ignored_labels(run / "joint" / "config.yaml" if sparse else run / "config.yaml")
    for task, scores in results["test"].items():
        metric = "accuracy" if "accuracy" in scores else "f1"
        again = rescore(dest / "predictions" / f"test.{task}.conll.gz", metric, ignored.get(task, ()))
        if abs(again - scores["score"]) > 0.01:
            raise SystemExit(f"{run}: test {task} rescored {again:.4f} from the predictions, reported "
                             f"{scores['score']:.4f}")
        lines.append(f"{run.name}: test {task} {scores['score']:.2f}, rescored {again:.2f}")
    without_machine_paths(dest, run, data_root)
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_dir", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--runs", nargs="+", help="run folder names (default: every <name>_seed<k> folder)")
    args = parser.parse_args()
    names = args.runs or sorted(p.name for p in args.runs_dir.iterdir() if p.is_dir() and "_seed" in p.name)
    for name in names:
        for line in collect(args.runs_dir / name, args.dest / name, args.data_root):
            print(line, flush=True)


if __name__ == "__main__":
    main()
