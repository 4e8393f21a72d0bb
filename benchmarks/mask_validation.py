"""Does the one-shot mask search choose well? Train each searched subnet of one task to convergence and compare.

    python benchmarks/mask_validation.py benchmarks/runs/conll03_converged/sparse_seed1 --task ner --rounds 1 2 3 5

For a sparse run whose search has finished (``sparse.search: oneshot``), each listed round's mask is trained
alone from the run's rewind point with the search's budget (``sparse.search_epochs``, the same optimiser and
schedule as the dense round 0, which is the 100% row), exactly as an iterative search round would train it.
The table sets the search's cheap score (the trained dense network pruned to the density, not retrained)
against the converged dev score of the subnet, and marks the round the search selected. Resumable: a trained
round is skipped, an interrupted one continues from its checkpoints. Writes ``<run>/validation/<task>.json``.

    python benchmarks/mask_validation.py benchmarks/results/conll03_converged/sparse_seed1 --task ner --table

prints that file as a markdown table (no training): each density's rank by cheap and by converged dev score,
their Spearman correlation, and how far the selected subnet's converged score is from the best one.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from accelerate.utils import set_seed

from sparseshare.config import config_from_dict
from sparseshare.files import write_json_atomically
from sparseshare.sharing.masks import load_masks
from sparseshare.recipes.train_sparse import _train_round, one_network, search_train_data, warm_up
from sparseshare.training.data import build_model, load_task_data


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a sparse run's output_dir (its search must be finished)")
    parser.add_argument("--task", default="ner")
    parser.add_argument("--rounds", nargs="+", type=int, help="rounds to train (default: every pruned round)")
    parser.add_argument("--table", action="store_true", help="only print validation/<task>.json as a table")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads((args.run / "validation" / f"{args.task}.json").read_text())["rows"]))
        return

    config = config_from_dict(yaml.safe_load((args.run / "config.yaml").read_text()))
    search = json.loads((args.run / "search" / args.task / "search.json").read_text())
    chosen = load_masks(args.run / "masks.safetensors")[args.task]
    data = load_task_data(config)
    set_seed(config.train.seed)
    template = build_model(one_network(config), data)  # the pipeline's template: same vocabulary, same initialisation
    rewind = warm_up(config, data, template, args.run / "warmup")  # the run's own (finished) rewind point
    train = search_train_data(config, data[args.task])  # what the search's rounds train on

    rows = []
    for record in search:
        r = record["round"]
        folder = args.run / "search" / args.task / f"round_{r:02d}"
        mask = load_masks(folder / "mask.safetensors")[args.task]
        if r == 0:  # the dense round was trained to convergence by the search itself
            converged = record
        elif args.rounds is None or r in args.rounds:
            done = args.run / "validation" / args.task / f"round_{r:02d}" / "round.json"
            if done.is_file():
                converged = json.loads(done.read_text())
            else:
                converged = _train_round(config, train, template, rewind, mask, done.parent, r)
                write_json_atomically(done, converged)
        else:
            continue
        selected = all(bool((mask[n] == chosen[n]).all()) for n in mask)
        rows.append({"round": r, "density": record["density"], "cheap_dev": record["dev"],
                     "converged_dev": converged["dev"], "epochs": converged["epochs"], "wall_s": converged["wall_s"],
                     "selected": selected})
        print(f"round {r}: density {record['density'] * 100:5.1f}%  cheap dev {record['dev']:6.2f}  "
              f"converged dev {converged['dev']:6.2f}{'  <- selected' if selected else ''}", flush=True)
    write_json_atomically(args.run / "validation" / f"{args.task}.json",
                          {"task": args.task, "seed": config.train.seed, "rows": rows})
    print(markdown_table(rows))


def ranks(values: list[float]) -> list[float]:
    """1 = highest; tied values share their mean rank."""
    order = sorted(range(len(values)), key=lambda i: -values[i])
    result = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            result[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return result


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ranks(a), ranks(b)
    mean_a, mean_b = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - mean_a) * (y - mean_b) for x, y in zip(ra, rb))
    var = (sum((x - mean_a) ** 2 for x in ra) * sum((y - mean_b) ** 2 for y in rb)) ** 0.5
    return cov / var if var else float("nan")


def markdown_table(rows: list[dict]) -> str:
    rows = sorted(rows, key=lambda row: -row["density"])
    cheap, converged = [r["cheap_dev"] for r in rows], [r["converged_dev"] for r in rows]
    cheap_rank, converged_rank = ranks(cheap), ranks(converged)
    lines = ["| round | density | cheap dev (rank) | converged dev (rank) | epochs | wall min | |",
             "|---|---|---|---|---|---|---|"]
    for row, rc, rv in zip(rows, cheap_rank, converged_rank):
        lines.append(f"| {row['round']} | {row['density'] * 100:.1f}% | {row['cheap_dev']:.2f} ({rc:g}) | "
                     f"{row['converged_dev']:.2f} ({rv:g}) | {row['epochs']} | {row['wall_s'] / 60:.1f} | "
                     f"{'selected' if row['selected'] else ''} |")
    best = max(converged)
    chosen = [r["converged_dev"] for r in rows if r["selected"]]
    lines.append("")
    lines.append(f"Spearman correlation of cheap and converged dev scores over {len(rows)} densities: "
                 f"{spearman(cheap, converged):.2f}.")
    if chosen:
        lines.append(f"Selected subnet's converged dev: {chosen[0]:.2f}, {best - chosen[0]:.2f} below the best "
                     f"({best:.2f}).")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
