"""Mask overlap against chance: for each pair of masks, Sun et al.'s overlap ratio (kept by both / kept by
either) and what two independent random masks with the same per-tensor densities would give in expectation
(sum over tensors of n·a·b / sum of n·(a + b − a·b)).

    python benchmarks/mask_overlap.py runs/conll03_converged/sparse_seed1/masks.safetensors   # task pairs
    python benchmarks/mask_overlap.py runs/.../sparse_seed1/masks.safetensors runs/.../sparse_seed2/masks.safetensors \
        --across-files   # the same task in different files (seeds)
"""
from __future__ import annotations

import argparse
import itertools

from sparseshare.sharing.masks import chance_overlap_ratio, chance_quotient, load_masks, overlap_ratio


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("masks", nargs="+", help="mask files (a sparse run's masks.safetensors)")
    parser.add_argument("--across-files", action="store_true",
                        help="compare each task's masks between consecutive files instead of tasks within a file")
    args = parser.parse_args()
    files = [{task: {n: m.bool() for n, m in mask.items()} for task, mask in load_masks(path).items()}
             for path in args.masks]
    pairs = []
    if args.across_files:
        for (i, x), (j, y) in itertools.pairwise(enumerate(files)):
            pairs += [(f"{task} file{i + 1}-file{j + 1}", x[task], y[task]) for task in x if task in y]
    else:
        for i, masks in enumerate(files):
            pairs += [(f"{a}-{b} file{i + 1}", masks[a], masks[b]) for a, b in itertools.combinations(masks, 2)]
    print("| pair | overlap | chance | ratio |\n|---|---|---|---|")
    for name, a, b in pairs:
        observed, chance = overlap_ratio([a, b]), chance_overlap_ratio(a, b)
        print(f"| {name} | {observed:.3f} | {chance:.3f} | {chance_quotient(observed, chance):.2f} |")


if __name__ == "__main__":
    main()
