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

Other models and settings (issue 24: MiniLM as fast as this CPU allows): ``--config`` names a config of
recipes/configs (its first task is trained), ``--set key=value`` overrides it in both loops (the bare loop honours
train.mixed_precision=bf16 with torch.autocast, train.batch_size and train.clip), ``--threads N`` gives each
measurement N threads, and ``--side-by-side K`` runs K measurements of each loop at once (one per core, say) and
reports their summed throughput::

    python benchmarks/throughput.py --config conll03_minilm_ner --steps 40 --warmup 5 --threads 2
    python benchmarks/throughput.py --config conll03_minilm_ner --steps 40 --warmup 5 --threads 2 --set train.mixed_precision=bf16
    python benchmarks/throughput.py --config conll03_minilm_ner --steps 40 --warmup 5 --threads 1 --side-by-side 2
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


def _config(data_root: str, output_dir: str, steps: int, name: str = "conll03_ner", overrides=(), threads=None):
    from sparseshare.config import load_config

    path = ROOT / "recipes" / "configs" / f"{name}.yaml"
    common = [f"output_dir={output_dir}", f"data.root={data_root}", "train.progress_bar=false",
              "train.log_with=none", f"train.checkpoint_every={10 * steps}",
              *([f"train.threads={threads}"] if threads else []), *overrides]
    first = load_config(path, common)
    common.append(f"tasks=[{first.tasks[0]}]")  # the bare loop trains one task: so does ours
    if first.model.encoder == "bilstm":
        common.append(f"model.bilstm.embeddings={Path(data_root) / 'glove' / 'glove.6B.50d.filtered.txt'}")
    return load_config(path, common)


class _Done(Exception):
    pass


def measure_ours(data_root: str, steps: int, warmup: int, **setting) -> dict:
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
            config = _config(data_root, out, steps, **setting)
            run_training(config, callbacks=[clock], log=lambda *a: None)
        except _Done:
            pass
    return {"seconds": stamps["end"] - stamps["start"], "sentences": steps * config.train.batch_size}


def measure_bare(data_root: str, steps: int, warmup: int, **setting) -> dict:
    import contextlib

    import numpy as np
    import torch

    from sparseshare.data.batching import bucketed_batches
    from sparseshare.training.data import add_word_ids, build_model, load_task_data
    from sparseshare.training.threads import use_training_threads

    with tempfile.TemporaryDirectory() as out:
        config = _config(data_root, out, steps, **setting)
        use_training_threads(config.train.threads)
        torch.manual_seed(config.train.seed)
        data = load_task_data(config)
        model = build_model(config, data)
        add_word_ids(model, data)  # a Transformer's subword ids, as run_training computes them
    name = next(iter(data))
    task, size = data[name], config.train.batch_size
    # the same batches, in the same order, as run_training's first epoch (rng seeded by [seed, epoch])
    order = bucketed_batches([len(s) for s in task.train_tokens], size, np.random.default_rng([config.train.seed, 0]))
    batches = [model.featurizer.collate([task.train_tokens[i] for i in b], [task.train_labels[i] for i in b],
                                        [task.train_word_ids[i] for i in b] if task.train_word_ids else None)
               for b in order[: warmup + steps]]
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, fused=True)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if config.train.mixed_precision == "bf16"
                else contextlib.nullcontext())
    model.train()
    for i, batch in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        with autocast:
            loss = model(batch, name).sum() / len(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"seconds": time.perf_counter() - start, "sentences": steps * size}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--compare", type=Path, help="a checkout of another commit: its loop is timed as 'compared'")
    parser.add_argument("--config", default="conll03_ner", help="a config of recipes/configs (its first task trains)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override (repeatable)")
    parser.add_argument("--threads", type=int, help="threads per measurement (default: the training default)")
    parser.add_argument("--side-by-side", type=int, default=1, help="measurements of a loop run at once")
    parser.add_argument("--out", type=Path, help="also write the summary to this JSON file")
    parser.add_argument("--one", choices=["ours", "bare"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compare and (args.config != "conll03_ner" or args.set):
        parser.error("--compare times the other checkout on its own default (conll03_ner); drop --config / --set")
    setting = {"name": args.config, "overrides": args.set, "threads": args.threads}
    if args.one:
        fn = measure_ours if args.one == "ours" else measure_bare
        result = fn(args.data_root, args.steps, args.warmup, **setting)
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
            if args.threads:
                env["OMP_NUM_THREADS"] = str(args.threads)
            command = [sys.executable, str(root / "benchmarks" / "throughput.py"), "--one", kind, "--steps",
                       str(args.steps), "--warmup", str(args.warmup), "--data-root", args.data_root]
            if root == ROOT:  # an older checkout's script may not know these
                command += ["--config", args.config, *(f"--set={o}" for o in args.set)]
                command += ["--threads", str(args.threads)] if args.threads else []
            children = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root,
                                         env=env) for _ in range(args.side_by_side)]
            results = []
            for child in children:
                stdout, stderr = child.communicate()
                if child.returncode:
                    raise SystemExit(f"{name} measurement failed:\n{stderr[-3000:]}")
                results.append(json.loads(stdout.strip().splitlines()[-1]))
            # side by side: the sentences of all of them in the time of the slowest
            runs[name].append({"seconds": max(r["seconds"] for r in results),
                               "sentences": sum(r["sentences"] for r in results),
                               "peak_rss_mb": max(r["peak_rss_mb"] for r in results)})
    summary = {"config": args.config, "overrides": args.set, "threads": args.threads, "side_by_side": args.side_by_side,
               "steps": args.steps, "warmup": args.warmup}
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
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
