"""Time one optimiser step of MaskedAdamW (fed a task's masks) against torch's AdamW on the same parameters.

    python benchmarks/masked_optimizer_step.py benchmarks/runs/conll03_converged/sparse_seed1/masks.safetensors \
        --task ner --threads 1

The parameters have the shapes of the mask file's tensors (the prunable weights) plus a 20,000 x 50 embedding
and eight 800-element biases (updated densely by both). Gradients are random; 3 warm-up steps, then the mean
of ``--steps`` steps. Run it from a worktree of another commit (``PYTHONPATH=<worktree>``) to compare code.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from sparseshare.optim import MaskedAdamW
from sparseshare.sharing.masks import load_masks


def seconds_per_step(optimizer, params, masks, steps: int) -> float:
    for p in params:
        p.grad = torch.randn_like(p)
    if masks is not None:
        optimizer.set_masks(masks)
    for _ in range(3):
        optimizer.step()
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - started) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("masks", help="a mask file (a sparse run's masks.safetensors)")
    parser.add_argument("--task", default="ner")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--single-tensor", action="store_true",
                        help="both optimisers without torch's fused kernel (training fuses AdamW on CPU and CUDA)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mask = {name: m.bool() for name, m in load_masks(args.masks)[args.task].items()}
    prunable = {name: torch.nn.Parameter(torch.randn(m.shape)) for name, m in mask.items()}
    dense = [torch.nn.Parameter(torch.randn(20000, 50))] + [torch.nn.Parameter(torch.randn(800)) for _ in range(8)]
    params = [*prunable.values(), *dense]
    fused = not args.single_tensor
    masked = seconds_per_step(MaskedAdamW(params, lr=1e-3, fused=fused), params,
                              {prunable[name]: m for name, m in mask.items()}, args.steps)
    plain = seconds_per_step(torch.optim.AdamW(params, lr=1e-3, fused=fused), params, None, args.steps)
    print(json.dumps({"task": args.task, "masked_weights": sum(m.numel() for m in mask.values()),
                      "masked_adamw_ms": round(masked * 1000, 2), "torch_adamw_ms": round(plain * 1000, 2),
                      "ratio": round(masked / plain, 2), "threads": args.threads, "fused": fused}))


if __name__ == "__main__":
    main()
