"""Step time of masked joint training vs hard sharing, same model, same batches, measured in one run.

    python benchmarks/sparse_speed.py [--masks runs/.../masks.safetensors] [--steps 60 --repeats 3]

Both models start from the same weights. Each step is what run_training does: collate a round-robin
batch (POS, chunk, NER in turn), forward, backward, clip, optimiser step (the config's optimiser, as
``build_optimizer`` makes it: torch's AdamW for hard sharing, MaskedAdamW fed the task's masks for sparse
sharing). Blocks of steps alternate between the two models so that machine noise hits both alike. Prints
JSON: seconds per step of each and the ratio sparse / hard.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
from pathlib import Path

import torch
from step_timing import alternating_seconds, round_robin_plan, run_block

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
    from sparseshare.sharing.masks import density, load_masks
    from sparseshare.training.data import build_model, load_task_data
    from sparseshare.optim import build_optimizer

    config = load_config(ROOT / "recipes" / "configs" / "conll03_sparse.yaml",
                         [f"data.root={args.data_root}", f"model.bilstm.embeddings={args.data_root}/glove/glove.6B.50d.filtered.txt"])
    data = load_task_data(config)
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

    plan = round_robin_plan(data, list(data), args.steps * args.repeats)
    counters = {name: itertools.count(1) for name in runs}

    def run(name, block):
        model, optimizer = runs[name]
        def take_masks(task):  # the masked optimiser updates the task's masked weights only
            optimizer.set_masks(model.sharing.parameter_masks(task))

        return run_block(model, optimizer, data, block, steps=counters[name],
                         before_step=take_masks if name == "sparse" else None)

    seconds = alternating_seconds(run, ["hard", "sparse"], plan, args.steps, args.repeats, warmup=plan[:6])
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
