"""Training step time of the sharing strategies as tasks and routed blocks are added, as ratios to hard
sharing measured in one run.

    python benchmarks/strategy_cost.py --steps 20 --repeats 3 --output benchmarks/results/strategy_cost.json

The CoNLL-2003 BiLSTM-CNN-CRF (conll03_hard.yaml, one embedder shared by all tasks) on real batches of 32
sentences. One step = collate, forward, backward, clip, SGD step, the strategy's own step (routers, roaming's
mask moves), for the tasks in turn (round robin). Settings (``--settings``):
- tasks: 2 (pos, chunk), 3 (+ ner), 4 (+ chunk2000) for hard, cross_stitch, routing (k = 2);
- blocks: k = 1, 2, 4, 8 routed blocks per layer with 3 tasks, for routing with an untrained router (near-uniform
  policies: a batch splits over ~k blocks) and with a converged one (one-hot policies on block 0, as the trained
  WPL routers of the CoNLL-2003 runs ended: one block per layer);
- strategies: every strategy of the CoNLL-2003 comparison with 3 tasks, with the run_grid.py settings (sparse
  sharing's masked step is measured by sparse_speed.py).
Within a setting, blocks of steps alternate between the strategies so that machine noise hits all
alike; each strategy's time is divided by hard sharing's time for the same batches.
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
from step_timing import alternating_seconds, round_robin_plan, run_block

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["pos", "chunk", "ner", "chunk2000"]


def build(data, tasks, sharing, extra, args, converged=False):
    from sparseshare.config import load_config
    from sparseshare.training.data import build_model

    # one embedder for all tasks (routing and roaming offer no private ones), as in the recorded ratios
    overrides = [f"data.root={args.data_root}", f"model.bilstm.embeddings={args.data_root}/glove/glove.6B.50d.filtered.txt",
                 f"tasks=[{','.join(tasks)}]", f"model.sharing={sharing}", "model.private_embedder=none", *extra]
    config = load_config(ROOT / "recipes" / "configs" / "conll03_hard.yaml", overrides)
    torch.manual_seed(1)
    model = build_model(config, {t: data[t] for t in tasks})
    model.sharing.initialize(1)
    if converged:  # every task's policy on block 0 of every layer; a tiny router step keeps it there
        model.sharing.policy.zero_()
        model.sharing.policy[..., 0] = 1.0
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def measure(data, tasks, variants, args) -> dict:
    """Seconds per step of each variant (name -> (sharing, overrides)) on the same round-robin batches; a name
    ending in ``_converged`` starts its WPL router converged."""
    runs = {name: build(data, tasks, sharing, extra, args, converged=name.endswith("_converged"))
            for name, (sharing, extra) in variants.items()}
    plan = round_robin_plan(data, tasks, args.steps * args.repeats + 8)

    counters = {name: itertools.count(1) for name in runs}  # step numbers across blocks (roaming moves every delta)

    def run(name, block):  # word ids are cached per vocabulary, and the task subsets' vocabularies differ
        return run_block(*runs[name], data, block, word_ids=False, steps=counters[name])

    seconds = alternating_seconds(run, list(runs), plan, args.steps, args.repeats, warmup=plan[-8:])
    steps = args.steps * args.repeats
    return {name: {"s_per_step": s / steps, "ratio_to_hard": s / seconds["hard"]} for name, s in seconds.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="steps per block")
    parser.add_argument("--repeats", type=int, default=3, help="blocks per strategy")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--output", help="write the JSON result here as well")
    parser.add_argument("--settings", nargs="+", default=["tasks", "blocks", "strategies"],
                        choices=["tasks", "blocks", "strategies"])
    args = parser.parse_args()

    from sparseshare.config import load_config
    from sparseshare.training.data import load_task_data

    config = load_config(ROOT / "recipes" / "configs" / "conll03_hard.yaml",
                         [f"data.root={args.data_root}", f"tasks=[{','.join(TASKS)}]"])
    data = load_task_data(config)
    result = {"threads": torch.get_num_threads(), "steps_per_strategy": args.steps * args.repeats}
    if "tasks" in args.settings:
        result["tasks"] = {}
        for n in (2, 3, 4):
            variants = {"hard": ("hard", []), "cross_stitch": ("cross_stitch", []),
                        "routing_k2": ("routing", ["model.routing.blocks=2"])}
            result["tasks"][n] = measure(data, TASKS[:n], variants, args)
            print(f"{n} tasks:", json.dumps(result["tasks"][n]), flush=True)
    if "blocks" in args.settings:
        converged = ["model.routing.lr=1e-9"]
        variants = {"hard": ("hard", []),
                    **{f"routing_k{k}": ("routing", [f"model.routing.blocks={k}"]) for k in (1, 2, 4, 8)},
                    **{f"routing_k{k}_converged": ("routing", [f"model.routing.blocks={k}", *converged])
                       for k in (2, 4, 8)}}
        result["routing_blocks"] = measure(data, TASKS[:3], variants, args)
        print("routing blocks:", json.dumps(result["routing_blocks"]), flush=True)
    if "strategies" in args.settings:
        from run_grid import RUNS

        variants = {"hard": ("hard", [])}
        for name in ("hierarchical", "bottom", "cross_stitch", "routing", "roaming", "roaming_fixed"):
            sharing = [o for o in RUNS[name][1] if o.startswith("model.sharing=")]
            variants[name] = (sharing[0].split("=", 1)[1], [o for o in RUNS[name][1] if o not in sharing])
        result["strategies"] = measure(data, TASKS[:3], variants, args)
        print("strategies:", json.dumps(result["strategies"]), flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
