"""Training throughput and peak memory: our training loop vs a bare PyTorch loop of the same model.

    python benchmarks/throughput.py --steps 150 --repeats 2

Both loops train the same BiLSTM(2x200)-CNN-CRF NER model (GloVe 50d) on CoNLL-2003 with the shipped
recipes/configs/conll03_ner.yaml settings: batch 32, AdamW (torch's fused kernel, as build_optimizer
makes it on CPU) at the config's lr, clip 5. The bare loop gets its batches pre-collated as tensors and has no
Accelerate, schedule, checkpointing or logging; ours is `run_training` exactly as users run it (batches
collated on the fly). Each measurement runs in its own process (so peak RSS is its own), alternating
bare / ours, and the reported ratio is ours / bare sentences per second over the same runs.

    python benchmarks/throughput.py --steps 150 --repeats 2 --compare /path/to/worktree-at-an-older-commit

adds a third loop to the alternation: ours as the checkout at that path runs it (its own benchmarks/
throughput.py and package), to measure a speed-up against an earlier commit in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _config(data_root: str, output_dir: str, steps: int):
    from sparseshare.config import load_config

    return load_config(ROOT / "recipes" / "configs" / "conll03_ner.yaml", [
        f"output_dir={output_dir}", f"data.root={data_root}",
        f"model.bilstm.embeddings={Path(data_root) / 'glove' / 'glove.6B.50d.filtered.txt'}",
        "train.progress_bar=false", "train.log_with=none", f"train.checkpoint_every={10 * steps}"])


class _Done(Exception):
    pass


def measure_ours(data_root: str, steps: int, warmup: int) -> dict:
    from sparseshare.recipes.train import run_training

    stamps = {}

    def clock(step):
        if step == warmup:
            stamps["start"] = time.perf_counter()
        if step == warmup + steps:
            stamps["end"] = time.perf_counter()
            raise _Done

    with tempfile.TemporaryDirectory() as out:
        try:
            run_training(_config(data_root, out, steps), callbacks=[clock], log=lambda *a: None)
        except _Done:
            pass
    return {"seconds": stamps["end"] - stamps["start"], "sentences": steps * 32}


def measure_bare(data_root: str, steps: int, warmup: int) -> dict:
    import numpy as np
    import torch

    from sparseshare.data.batching import bucketed_batches
    from sparseshare.training.data import build_model, load_task_data

    with tempfile.TemporaryDirectory() as out:
        config = _config(data_root, out, steps)
        torch.manual_seed(config.train.seed)
        data = load_task_data(config)
        model = build_model(config, data)
    ner = data["ner"]
    # the same batches, in the same order, as run_training's first epoch (rng seeded by [seed, epoch])
    order = bucketed_batches([len(s) for s in ner.train_tokens], 32, np.random.default_rng([config.train.seed, 0]))
    batches = [model.featurizer.collate([ner.train_tokens[i] for i in b], [ner.train_labels[i] for i in b])
               for b in order[: warmup + steps]]
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, fused=True)
    model.train()
    for i, batch in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        loss = model(batch, "ner").sum() / len(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"seconds": time.perf_counter() - start, "sentences": steps * 32}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--compare", type=Path, help="a checkout of another commit: its loop is timed as 'compared'")
    parser.add_argument("--one", choices=["ours", "bare"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        fn = measure_ours if args.one == "ours" else measure_bare
        result = fn(args.data_root, args.steps, args.warmup)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    loops = {"bare": (ROOT, "bare"), "ours": (ROOT, "ours")}
    if args.compare:
        loops["compared"] = (args.compare.resolve(), "ours")
    runs = {name: [] for name in loops}
    for _ in range(args.repeats):
        for name, (root, kind) in loops.items():
            env = {**os.environ, "PYTHONPATH": str(root)}  # that checkout's package, not the installed one
            out = subprocess.run([sys.executable, str(root / "benchmarks" / "throughput.py"), "--one", kind,
                                  "--steps", str(args.steps), "--warmup", str(args.warmup), "--data-root",
                                  args.data_root], capture_output=True, text=True, check=True, cwd=root, env=env)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    summary = {}
    for kind, results in runs.items():
        sentences = sum(r["sentences"] for r in results)
        seconds = sum(r["seconds"] for r in results)
        summary[kind] = {"sentences_per_s": sentences / seconds, "peak_rss_mb": max(r["peak_rss_mb"] for r in results)}
    summary["ratio_ours_over_bare"] = summary["ours"]["sentences_per_s"] / summary["bare"]["sentences_per_s"]
    if args.compare:
        summary["compared_checkout"] = str(args.compare)
        summary["speedup_ours_over_compared"] = (summary["ours"]["sentences_per_s"]
                                                 / summary["compared"]["sentences_per_s"])
    summary["runs"] = runs
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
