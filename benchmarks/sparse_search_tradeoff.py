"""The mask search's cost/quality trade-off for one task: dev score against pruning rounds (density) and
against training epochs per round, from the same rewind point as a finished sparse run.

    python benchmarks/sparse_search_tradeoff.py --run benchmarks/runs/conll03/sparse_seed1 --task ner \\
        --epochs-per-round 1 2 --rounds 7

Runs the pipeline's own search (sparseshare.recipes.train_sparse.search_masks) once per epochs-per-round
setting, resumably, into <out>/e<E>/, and writes <out>/tradeoff.json and <out>/tradeoff.png (curves of
earlier invocations with other settings are kept). A round already run by the sparse run itself (same
config, same rewind point) can be reused by copying <run>/search/<task> into <out>/e1/<task>.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished (or warmed-up) sparse run: its config and warm-up are used")
    parser.add_argument("--task", default="ner")
    parser.add_argument("--epochs-per-round", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "runs" / "tradeoff"))
    args = parser.parse_args()

    from accelerate.utils import set_seed
    from safetensors.torch import load_file

    from sparseshare.config import config_from_dict
    from sparseshare.recipes.train_sparse import one_network, search_masks
    from sparseshare.training.data import build_model, load_task_data

    run = Path(args.run)
    config = config_from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    data = load_task_data(config)
    set_seed(config.train.seed)
    template = build_model(one_network(config), data)  # the run's vocabulary, so its warm-up weights fit
    rewind = load_file(str(run / "warmup" / "model" / "model.safetensors"))
    out = Path(args.out)
    # curves from earlier invocations (e.g. other --rounds per setting) are kept
    previous = out / "tradeoff.json"
    result = json.loads(previous.read_text()) if previous.is_file() else {"run": str(run), "task": args.task, "curves": {}}
    for epochs in args.epochs_per_round:
        # the iterative search's trade-off (a run made with sparse.search: oneshot trains round 0 only)
        sparse = dataclasses.replace(config.sparse, search="iterative", rounds=args.rounds, search_epochs=epochs)
        cfg = dataclasses.replace(config, sparse=sparse)
        records = search_masks(cfg, data[args.task], template, rewind, out / f"e{epochs}" / args.task)
        total = 0
        for record in records:
            total += record["epochs"]
            record["cumulative_epochs"] = total
        result["curves"][str(epochs)] = records
    out.mkdir(parents=True, exist_ok=True)
    (out / "tradeoff.json").write_text(json.dumps(result, indent=1))
    draw(result, out / "tradeoff.png")
    for epochs, records in result["curves"].items():
        print(f"{epochs} epoch(s)/round: " + "; ".join(
            f"{r['density'] * 100:.1f}% {r['dev']:.2f} ({r['wall_s']:.0f}s)" for r in records))


def draw(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for epochs, records in result["curves"].items():
        label = f"{epochs} epoch(s) per round"
        left.plot([r["density"] * 100 for r in records], [r["dev"] for r in records], "o-", label=label)
        right.plot([r["cumulative_epochs"] for r in records], [r["dev"] for r in records], "o-", label=label)
    left.set_xlabel("density of the subnet (% of prunable weights)")
    left.invert_xaxis()
    right.set_xlabel("search epochs spent so far")
    for ax in (left, right):
        ax.set_ylabel(f"{result['task']} dev score")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Mask search for {result['task']}: dev score by round and by search budget")
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
