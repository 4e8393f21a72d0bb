"""How much each task steers the shared encoder of a multi-task run (issue 23's diagnosis).

Trains a config's model exactly as recipes/train.py does (same data, epoch plan, loss, clipping, optimiser and
LR schedule; no dev evaluation) for ``--steps`` steps, once per variant (a set of config overrides), and records
at every step of task t, on the shared encoder's weight matrices (BiLSTM and char-CNN; embeddings, biases and
heads excluded):

- ``grad``: the norm of task t's gradient (before clipping),
- ``update``: the norm of the step the optimiser takes, ``|theta_after - theta_before|``,
- ``along``: the step's progress along task t's own descent direction, ``-(theta_after - theta_before) . g / |g|``,
- ``cos``: ``along / update``, 1 when the step goes exactly where task t's gradient points,
- ``clipped``: the share of task t's steps whose whole gradient norm exceeded ``train.clip``;

and after every step the ``drift`` of the word embeddings: the mean distance of the training words' vectors from
their initial (GloVe) values, relative to their mean norm (words that never occur in training keep their vectors).

The hypothesis it tests: with one optimiser state for all tasks, Adam's moments on a shared weight mix every
task's gradients, so a task with small gradients (NER) might move the encoder little, or not in its own
direction; ``train.optimizer_state=per_task`` gives each task its own state. (On CoNLL-2003 it does not:
benchmarks/RESULTS.md, "Why multi-task training costs NER".)

    python benchmarks/task_gradients.py --config recipes/configs/conll03_hard.yaml --steps 1320 \\
        --variant shared: --variant per_task:train.optimizer_state=per_task --data-root ../shared/data \\
        --out benchmarks/results/task_gradients.json

Prints a table per variant (means over windows of ``--window`` steps of each task) and writes all of it as JSON;
``python benchmarks/task_gradients.py --show FILE`` prints the tables of a written file again.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sparseshare.config import load_config
from sparseshare.data.batching import bucketed_batches
from sparseshare.data.schedules import epoch_plan
from sparseshare.optim import MaskedAdamW, MaskedSGD, PerTaskState, build_optimizer, build_scheduler
from sparseshare.recipes.train import loss_weight
from sparseshare.training.data import add_word_ids, build_model, load_task_data

QUANTITIES = ("grad", "update", "along", "cos", "clipped")


def shared_matrices(model) -> dict[str, torch.Tensor]:
    """The encoder's weight matrices (what every task shares under hard sharing, and what sparse sharing masks);
    a task's private embedder copies (``private.<task>.*``) are not shared."""
    return {n: p for n, p in model.sharing.named_parameters()
            if p.requires_grad and p.dim() >= 2 and "embedding" not in n and not n.startswith("private.")}


def word_embeddings(model) -> torch.Tensor | None:
    """The shared word embedding matrix of a BiLSTM / scratch encoder (None for a pretrained Transformer, and with
    a word table per task)."""
    for name, p in model.sharing.named_parameters():
        if name.endswith("words.weight") and not name.startswith("private."):
            return p
    return None


def run_variant(config, data, steps: int, log) -> list[dict]:
    """One record per step: task, grad, update, along, cos, clipped."""
    t = config.train
    torch.manual_seed(t.seed)
    model = build_model(config, data)
    model.sharing.initialize(t.seed)
    add_word_ids(model, data)
    model.sharing.prepare_training(config, list(data))
    model.train()
    optimizer = build_optimizer(config, model, "cpu")
    steps_per_epoch = sum(math.ceil(len(d.train_tokens) / t.batch_size) for d in data.values())
    scheduler = build_scheduler(config, optimizer, steps_per_epoch)
    shared = shared_matrices(model)
    embeddings = word_embeddings(model)
    initial = embeddings.detach().clone() if embeddings is not None else None
    trained_rows = torch.tensor(sorted({i for d in data.values() for ids in d.train_word_ids for i in ids}))
    records, epoch, started = [], 0, time.perf_counter()
    while len(records) < steps:
        rng = np.random.default_rng([t.seed, epoch])
        batches = {name: bucketed_batches([len(s) for s in d.train_tokens], t.batch_size, rng)
                   for name, d in data.items()}
        for task, indices in epoch_plan(t.schedule, batches, rng, t.temperature, t.task_weights):
            if len(records) >= steps:
                break
            d = data[task]
            batch = model.featurizer.collate([d.train_tokens[i] for i in indices], [d.train_labels[i] for i in indices],
                                             [d.train_word_ids[i] for i in indices])
            losses = model(batch, task)
            (losses.sum() * loss_weight(indices, d.train_tokens, 1, t.loss_normalization)).backward()
            grads = torch.cat([p.grad.reshape(-1) for p in shared.values() if p.grad is not None])
            total = float(torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip or math.inf))
            before = torch.cat([p.detach().reshape(-1) for p in shared.values()])
            if isinstance(optimizer, (MaskedSGD, MaskedAdamW)):
                optimizer.set_masks(model.sharing.parameter_masks(task))
            if isinstance(optimizer, PerTaskState):
                optimizer.set_task(task)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            delta = torch.cat([p.detach().reshape(-1) for p in shared.values()]) - before
            grad_norm, update = float(grads.norm()), float(delta.norm())
            along = float(-(delta @ grads)) / max(grad_norm, 1e-30)
            records.append({"task": task, "grad": grad_norm, "update": update, "along": along,
                            "cos": along / max(update, 1e-30), "clipped": float(bool(t.clip) and total > t.clip)})
            if initial is not None:  # how far the training words' vectors have moved from GloVe so far
                moved = (embeddings.detach()[trained_rows] - initial[trained_rows]).norm(dim=1)
                records[-1]["drift"] = float(moved.mean() / initial[trained_rows].norm(dim=1).mean())
            if len(records) % 200 == 0:
                log(f"  step {len(records)}/{steps} ({time.perf_counter() - started:.0f} s)")
        epoch += 1
    return records


def summarize(records: list[dict], window: int, tasks: list[str]) -> list[dict]:
    """Means per task over consecutive windows of ``window`` steps (all tasks' steps counted)."""
    rows = []
    for start in range(0, len(records), window):
        chunk = records[start:start + window]
        for task in tasks:
            own = [r for r in chunk if r["task"] == task]
            if own:
                rows.append({"steps": f"{start + 1}-{start + len(chunk)}", "task": task,
                             **{q: float(np.mean([r[q] for r in own])) for q in QUANTITIES},
                             "drift": chunk[-1].get("drift", float("nan"))})
    return rows


def print_table(rows: list[dict]) -> None:
    columns = (*QUANTITIES, "drift")
    print(f"{'steps':>11} {'task':>6} " + " ".join(f"{q:>9}" for q in columns))
    for row in rows:
        print(f"{row['steps']:>11} {row['task']:>6} " + " ".join(f"{row[q]:9.4f}" for q in columns))


def show(path: Path) -> None:
    """Print the tables of a result file written by an earlier run (``.json`` or ``.json.gz``)."""
    import gzip

    text = gzip.open(path, "rt").read() if path.suffix == ".gz" else path.read_text()
    for name, variant in json.loads(text)["variants"].items():
        print(f"variant {name}: {' '.join(variant['overrides']) or '(config as is)'}")
        print_table([{"drift": float("nan"), **row} for row in variant["windows"]])


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--show":
        return show(Path(sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--variant", action="append", required=True,
                        help="NAME:key=value,key=value (overrides of this variant; NAME: alone = the config as is)")
    parser.add_argument("--steps", type=int, default=1320)
    parser.add_argument("--window", type=int, default=440)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every variant")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = list(args.overrides) + ([f"data.root={args.data_root}"] if args.data_root else [])
    variants = {}
    for spec in args.variant:
        name, _, rest = spec.partition(":")
        variants[name] = [o for o in rest.split(",") if o]
    loaded, result = {}, {"config": args.config, "steps": args.steps, "overrides": base, "variants": {}}
    for name, overrides in variants.items():
        config = load_config(args.config, [*base, "train.progress_bar=false", *overrides])
        if config.train.distill_from:
            parser.error(f"variant {name}: distillation is not measured by this script")
        if config.train.schedule == "joint" or config.train.epoch_length != "batches":
            parser.error(f"variant {name}: this script measures one task's gradient per step (train.schedule "
                         f"joint and train.epoch_length are not measured)")
        key = json.dumps([config.tasks, config.to_dict()["data"], config.model.bilstm.embeddings])
        if key not in loaded:  # a variant with other tasks or data gets its own data (and word ids)
            loaded[key] = load_task_data(config)
        data = loaded[key]
        print(f"variant {name}: {' '.join(overrides) or '(config as is)'}", flush=True)
        started = time.perf_counter()
        records = run_variant(config, data, args.steps, lambda line: print(line, flush=True))
        rows = summarize(records, args.window, config.tasks)
        result["variants"][name] = {"overrides": overrides, "seconds": round(time.perf_counter() - started, 1),
                                    "windows": rows, "steps": records}
        print_table(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
