"""Magnitude pruning with one global threshold across all prunable tensors (Sun et al., 2020; Frankle &
Carbin, 2019)."""
from __future__ import annotations

import math

import torch

from ..sharing.masks import MaskError


def prune_by_magnitude(weights: dict[str, torch.Tensor], mask: dict[str, torch.Tensor],
                       fraction: float) -> dict[str, torch.Tensor]:
    """Remove ``fraction`` of the weights still kept by ``mask``: those of smallest |w|, ranked together
    across every tensor. Ties at the threshold are broken by position so the count is exact."""
    if not 0.0 < fraction < 1.0:
        raise MaskError(f"config key 'sparse.prune_fraction' must be in (0, 1), got {fraction}")
    names = list(mask)
    alive = torch.cat([weights[n].detach().abs().flatten().float().cpu()[mask[n].flatten()] for n in names])
    remove = int(math.floor(fraction * alive.numel()))
    if remove == 0:
        return {n: m.clone() for n, m in mask.items()}
    # stable ranking of kept weights by magnitude; the `remove` smallest go
    order = torch.sort(alive, stable=True).indices
    drop = torch.zeros(alive.numel(), dtype=torch.bool)
    drop[order[:remove]] = True
    new_mask, offset = {}, 0
    for n in names:
        m = mask[n].flatten().clone()
        kept_positions = m.nonzero().squeeze(1)
        count = kept_positions.numel()
        m[kept_positions[drop[offset:offset + count]]] = False
        offset += count
        new_mask[n] = m.view_as(mask[n])
        if not new_mask[n].any():
            raise MaskError(f"pruning removed every weight of tensor {n!r}; lower sparse.prune_fraction or "
                            f"sparse.rounds (this round kept {1 - fraction:.0%} of {alive.numel():,} weights)")
    return new_mask


def density_after(rounds: int, fraction: float) -> float:
    return (1.0 - fraction) ** rounds
