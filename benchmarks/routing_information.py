"""I(task; block) of recorded routing runs: per layer, in the first and last epoch, and its highest value in any
epoch (sparseshare.sharing.routing.task_block_information; 0 bits: every task takes the same routes).

    python benchmarks/routing_information.py benchmarks/results/conll03/routing*
"""
from __future__ import annotations

import argparse
from pathlib import Path

from sparseshare.sharing.routing import load_routing_map, task_block_information


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (or model folders) holding a routing.json")
    args = parser.parse_args()
    print("| run | router | epochs | I first epoch (bits, per layer) | I last epoch | highest I in any epoch |")
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        routing = load_routing_map(run)
        per_epoch = [task_block_information(epoch) for epoch in routing["epochs"]]
        if not per_epoch:
            print(f"| {run.name} | {routing['router']} | 0 | – | – | – |")
            continue
        show = lambda bits: " / ".join(f"{b:.3f}" for b in bits)  # noqa: E731
        peak = max((max(bits) for bits in per_epoch if bits), default=0.0)
        print(f"| {run.name} | {routing['router']} | {len(per_epoch)} | {show(per_epoch[0])} | {show(per_epoch[-1])} | "
              f"{peak:.3f} |")


if __name__ == "__main__":
    main()
