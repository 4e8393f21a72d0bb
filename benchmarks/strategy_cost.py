"""Training step time of the sharing strategies as tasks and routed blocks are added, as ratios to hard
sharing measured in one run.

    python benchmarks/strategy_cost.py --steps 20 --repeats 3 --output benchmarks/results/strategy_cost.json

The CoNLL-2003 BiLSTM-CNN-CRF (conll03_hard.yaml) on real batches of 32 sentences. One step = collate,
forward, backward, clip, SGD step, for the tasks in turn (round robin). Settings:
- tasks: 2 (pos, chunk), 3 (+ ner), 4 (+ chunk2000) for hard, cross_stitch, routing (k = 2);
- routed blocks: k = 1, 2, 4, 8 per layer for routing with 3 tasks.
Within a setting, blocks of steps alternate between the strategies so that machine noise hits all
alike; each strategy's time is divided by hard sharing's time for the same batches.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from step_timing import alternating_seconds, round_robin_plan, run_block

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["pos", "chunk", "ner", "chunk2000"]


def build(data, tasks, sharing, extra, args):
    from sparseshare.config import load_config
    from sparseshare.training import build_model

    overrides = [f"data.root={args.data_root}", f"model.bilstm.embeddings={args.data_root}/glove/glove.6B.50d.filtered.txt",
                 f"tasks=[{','.join(tasks)}]", f"model.sharing={sharing}", *extra]
    config = load_config(ROOT / "recipes" / "configs" / "conll03_hard.yaml", overrides)
    torch.manual_seed(1)
    model = build_model(config, {t: data[t] for t in tasks})
    model.sharing.initialize(1)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def measure(data, tasks, variants, args) -> dict:
    """Seconds per step of each variant (name -> (sharing, overrides)) on the same round-robin batches."""
    runs = {name: build(data, tasks, sharing, extra, args) for name, (sharing, extra) in variants.items()}
    plan = round_robin_plan(data, tasks, args.steps * args.repeats + 8)

    def run(name, block):  # word ids are cached per vocabulary, and the task subsets' vocabularies differ
        return run_block(*runs[name], data, block, word_ids=False)

    seconds = alternating_seconds(run, list(runs), plan, args.steps, args.repeats, warmup=plan[-8:])
    steps = args.steps * args.repeats
    return {name: {"s_per_step": s / steps, "ratio_to_hard": s / seconds["hard"]} for name, s in seconds.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="steps per block")
    parser.add_argument("--repeats", type=int, default=3, help="blocks per strategy")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--output", help="write the JSON result here as well")
    args = parser.parse_args()

    from sparseshare.config import load_config
    from sparseshare.training import load_task_data

    config = load_config(ROOT / "recipes" / "configs" / "conll03_hard.yaml",
                         [f"data.root={args.data_root}", f"tasks=[{','.join(TASKS)}]"])
    data = load_task_data(config, log=lambda *a: None)
    result = {"threads": torch.get_num_threads(), "steps_per_strategy": args.steps * args.repeats, "tasks": {},
              "routing_blocks": {}}
    for n in (2, 3, 4):
        variants = {"hard": ("hard", []), "cross_stitch": ("cross_stitch", []),
                    "routing_k2": ("routing", ["model.routing_blocks=2"])}
        result["tasks"][n] = measure(data, TASKS[:n], variants, args)
        print(f"{n} tasks:", json.dumps(result["tasks"][n]), flush=True)
    variants = {"hard": ("hard", []), **{f"routing_k{k}": ("routing", [f"model.routing_blocks={k}"]) for k in (1, 2, 4, 8)}}
    result["routing_blocks"] = measure(data, TASKS[:3], variants, args)
    print("routing blocks:", json.dumps(result["routing_blocks"]), flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
