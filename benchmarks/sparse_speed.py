"""Step time of masked joint training vs hard sharing, same model, same batches, measured in one run.

    python benchmarks/sparse_speed.py [--masks runs/.../masks.safetensors] [--steps 60 --repeats 3]

Both models start from the same weights. Each step is what run_training does: collate a round-robin
batch (POS, chunk, NER in turn), forward, backward, clip, optimiser step (torch SGD for hard sharing;
MaskedSGD fed the task's masks for sparse sharing). Blocks of steps alternate between the two models so
that machine noise hits both alike. Prints JSON: seconds per step of each and the ratio sparse / hard.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--masks", help="a mask file (e.g. <run>/masks.safetensors); default: random 30%% masks")
    parser.add_argument("--steps", type=int, default=60, help="steps per block")
    parser.add_argument("--repeats", type=int, default=3, help="blocks per model")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--output", help="write the JSON result here as well")
    args = parser.parse_args()

    from sparseshare.config import load_config
    from sparseshare.data.batching import bucketed_batches
    from sparseshare.sparse.masks import density, load_masks
    from sparseshare.training import build_model, build_optimizer, load_task_data

    config = load_config(ROOT / "recipes" / "configs" / "conll03_sparse.yaml",
                         [f"data.root={args.data_root}", f"model.bilstm.embeddings={args.data_root}/glove/glove.6B.50d.filtered.txt"])
    data = load_task_data(config, log=lambda *a: None)
    torch.manual_seed(1)
    sparse = build_model(config, data)
    if args.masks:
        masks = load_masks(args.masks)
    else:
        g = torch.Generator().manual_seed(0)
        masks = {t: {n: torch.rand(p.shape, generator=g) < 0.3 for n, p in sparse.sharing.prunable().items()}
                 for t in sparse.tasks}
    sparse.sharing.set_masks(masks)
    hard_config = copy.deepcopy(config)
    hard_config.model.sharing = "hard"
    hard = type(sparse)(hard_config.model, [d.spec for d in data.values()], sparse.labels,
                        sparse.featurizer.lookup.vocab, sparse.featurizer.chars)
    hard.load_state_dict(sparse.state_dict())
    runs = {"hard": (hard, build_optimizer(hard_config, hard)), "sparse": (sparse, build_optimizer(config, sparse))}

    rng = np.random.default_rng(0)
    order = {t: bucketed_batches([len(s) for s in d.train_tokens], 32, rng) for t, d in data.items()}
    tasks = list(data)
    plan = [(tasks[i % 3], order[tasks[i % 3]][i // 3]) for i in range(args.steps * args.repeats)]

    def run_block(name, block):
        model, optimizer = runs[name]
        model.train()
        started = time.perf_counter()
        for task, index in block:
            d = data[task]
            batch = model.featurizer.collate([d.train_tokens[i] for i in index], [d.train_labels[i] for i in index],
                                             [d.train_word_ids[i] for i in index])
            loss = model(batch, task).sum() / len(index)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            if name == "sparse":
                optimizer.set_masks(model.sharing.parameter_masks(task))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    run_block("hard", plan[:6]), run_block("sparse", plan[:6])  # warm-up: allocator, thread pools
    seconds = {"hard": 0.0, "sparse": 0.0}
    for r in range(args.repeats):
        block = plan[r * args.steps:(r + 1) * args.steps]
        for name in (("hard", "sparse") if r % 2 == 0 else ("sparse", "hard")):
            seconds[name] += run_block(name, block)
    steps = args.steps * args.repeats
    result = {"steps": steps, "hard_s_per_step": seconds["hard"] / steps, "sparse_s_per_step": seconds["sparse"] / steps,
              "ratio_sparse_over_hard": seconds["sparse"] / seconds["hard"], "threads": torch.get_num_threads(),
              "mask_density": {t: round(density(m), 4) for t, m in masks.items()},
              "masks": args.masks or "random 30%"}
    print(json.dumps(result, indent=1))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
