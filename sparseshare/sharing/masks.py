"""Task masks over the encoder's prunable weights: which tensors are prunable, mask files, densities,
overlap ratios and parameter counts.

Magnitude pruning (:func:`prune_by_magnitude`) makes a task's mask from trained weights.

A mask set is ``{task: {encoder parameter name: bool tensor}}``. On disk it is one safetensors file with
keys ``<task>/<parameter name>`` (bool), so a saved model's masks can be read without sparseshare.
"""
from __future__ import annotations

import fnmatch
import itertools
import math
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ModelFolderError, SparseshareError
from ..files import atomic_path

MaskSet = dict[str, dict[str, torch.Tensor]]


class MaskError(SparseshareError, ValueError):
    pass


class MissingMaskFileError(ModelFolderError, MaskError):
    """A sparse-sharing model folder without its mask file: a missing file of the folder (ModelFolderError), and a
    MaskError as before."""


def holds_only_0_and_1(tensor: torch.Tensor) -> bool:
    """Whether a bool tensor's bytes are all 0 or 1: a bool read from a file is a byte, which may hold anything."""
    return not tensor.numel() or int(tensor.contiguous().view(torch.uint8).max()) <= 1


def prunable_parameters(encoder: nn.Module, patterns: list[str]) -> dict[str, nn.Parameter]:
    """The encoder parameters matched by ``patterns``, in the encoder's order. Every pattern must match
    something and only weight matrices (no biases, norms or embedding tables) may be matched."""
    named = dict(encoder.named_parameters())
    embedding_tables = {f"{name}.weight" for name, module in encoder.named_modules() if isinstance(module, nn.Embedding)}
    chosen = {}
    for pattern in patterns:
        hits = [name for name in named if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            examples = ", ".join(list(named)[:6])
            raise MaskError(f"config key 'model.sparse.prunable': pattern {pattern!r} matches no encoder parameter "
                            f"(names look like: {examples}, ...)")
        for name in hits:
            if named[name].dim() < 2 or name in embedding_tables:
                raise MaskError(f"config key 'model.sparse.prunable': pattern {pattern!r} matches {name!r} "
                                f"({'an embedding table' if name in embedding_tables else 'not a weight matrix'}); "
                                f"only weight matrices are prunable")
            chosen[name] = named[name]
    return {name: named[name] for name in named if name in chosen}


def ones_like_parameters(parameters: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: torch.ones_like(p, dtype=torch.bool, device="cpu") for name, p in parameters.items()}


def check_masks(masks: MaskSet, parameters: dict[str, torch.Tensor], where: str = "masks") -> None:
    """Every task's mask covers exactly the prunable tensors, with their shapes, as bool tensors of 0s and 1s."""
    expected = set(parameters)
    for task, mask in masks.items():
        missing, extra = sorted(expected - set(mask)), sorted(set(mask) - expected)
        if missing:
            raise MaskError(f"{where}: task {task!r} has no mask for prunable tensor {missing[0]!r}"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        if extra:
            raise MaskError(f"{where}: task {task!r} has a mask for {extra[0]!r}, which is not a prunable tensor "
                            f"of this model (prunable: {sorted(expected)[:4]}...)")
        for name, m in mask.items():
            if m.dtype != torch.bool:
                raise MaskError(f"{where}: mask {task}/{name} has dtype {m.dtype}, expected torch.bool")
            if tuple(m.shape) != tuple(parameters[name].shape):
                raise MaskError(f"{where}: mask {task}/{name} has shape {tuple(m.shape)}, the tensor has "
                                f"{tuple(parameters[name].shape)}")
            if not holds_only_0_and_1(m):
                raise MaskError(f"{where}: mask {task}/{name} holds values other than 0 and 1")


def save_masks(masks: MaskSet, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    for task in masks:
        if "/" in task:
            raise MaskError(f"task name {task!r} contains '/', which mask files use as a separator")
    tensors = {f"{task}/{name}": m.contiguous().cpu() for task, mask in masks.items() for name, m in mask.items()}
    with atomic_path(path) as partial:  # a crash mid-write never leaves a truncated mask file
        save_file(tensors, str(partial), metadata=metadata)
    return Path(path)


def load_masks(path: str | Path) -> MaskSet:
    path = Path(path)
    if not path.is_file():
        raise MaskError(f"mask file not found: {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise MaskError(f"{path}: not a readable safetensors mask file ({err})") from None
    masks: MaskSet = {}
    for key, tensor in tensors.items():
        task, sep, name = key.partition("/")
        if not sep:
            raise MaskError(f"{path}: key {key!r} is not '<task>/<parameter name>'")
        masks.setdefault(task, {})[name] = tensor
    return masks


def random_masks_like(masks: MaskSet, seed: int) -> MaskSet:
    """Masks keeping, in every tensor, as many weights as ``masks`` does, at positions drawn uniformly at
    random (independently per task): the control that tells whether *which* weights a search keeps matters,
    or only how many."""
    generator = torch.Generator().manual_seed(seed)
    drawn = {}
    for task, mask in masks.items():
        drawn[task] = {}
        for name, m in mask.items():
            kept = torch.zeros(m.numel(), dtype=torch.bool)
            kept[torch.randperm(m.numel(), generator=generator)[:int(m.sum())]] = True
            drawn[task][name] = kept.view_as(m)
    return drawn


# -- magnitude pruning (Sun et al., 2020; Frankle & Carbin, 2019): one global threshold across all prunable tensors
def prune_by_magnitude(weights: dict[str, torch.Tensor], mask: dict[str, torch.Tensor],
                       fraction: float, signed: bool = False) -> dict[str, torch.Tensor]:
    """Remove ``fraction`` of the weights still kept by ``mask``: those of smallest |w| (``signed``: smallest w, for
    scores), ranked together across every tensor. Ties at the threshold are broken by position so the count is
    exact."""
    if not 0.0 < fraction < 1.0:
        raise MaskError(f"config key 'sparse.prune_fraction' must be in (0, 1), got {fraction}")
    names = list(mask)
    alive = torch.cat([(weights[n].detach() if signed else weights[n].detach().abs()).flatten().float().cpu()[
        mask[n].flatten()] for n in names])
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


# -- statistics -----------------------------------------------------------------------------------
def density(mask: dict[str, torch.Tensor]) -> float:
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())
    return kept / max(total, 1)


def tensor_densities(mask: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(m.float().mean()) for name, m in mask.items()}


def overlap_ratio(masks: list[dict[str, torch.Tensor]]) -> float:
    """Sun et al.'s OR: weights kept by all the masks / weights kept by any of them."""
    names = list(masks[0])
    both = sum(int(torch.stack([m[n] for m in masks]).all(0).sum()) for n in names)
    either = sum(int(torch.stack([m[n] for m in masks]).any(0).sum()) for n in names)
    return both / either if either else 1.0


def chance_overlap_ratio(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The overlap ratio two masks would have if each kept its own count of weights in every tensor at positions drawn
    independently at random: per tensor of n weights, a and b keep n·d_a·d_b in common and n·(d_a + d_b − d_a·d_b)
    between them, in expectation (summed over tensors, the ratio of the expectations). Masks chosen without regard to
    their task overlap about this much; Sun et al.'s task-dependent masks overlap more, but not all the way to 1."""
    da, db = tensor_densities(a), tensor_densities(b)
    both = sum(a[n].numel() * da[n] * db[n] for n in a)
    either = sum(a[n].numel() * (da[n] + db[n] - da[n] * db[n]) for n in a)
    return both / either if either else 1.0


def overlap_matrix(masks: MaskSet, ratio=None) -> dict[str, dict[str, float]]:
    """``ratio(mask_a, mask_b)`` (the overlap ratio by default) for every pair of tasks; 1 on the diagonal."""
    ratio = ratio or (lambda x, y: overlap_ratio([x, y]))
    tasks = list(masks)
    matrix = {a: {b: 1.0 for b in tasks} for a in tasks}
    for a, b in itertools.combinations(tasks, 2):
        matrix[a][b] = matrix[b][a] = ratio(masks[a], masks[b])
    return matrix


def chance_quotient(observed: float, chance: float) -> float:
    """observed / chance; nan where chance is 0 (a task's mask keeps nothing there: no overlap to compare)."""
    return observed / chance if chance else float("nan")


LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers?|h|block|blocks)\.(\d+)\.")


def layer_of(name: str) -> str:
    """The layer a prunable tensor belongs to, read from its name (``layers.1.lstm.weight_ih_l0``,
    ``model.encoder.layer.3.attention...``: "layer 1", "layer 3"), or "other" (a char-CNN, an embedding projection)."""
    found = LAYER_INDEX.search(name)
    return f"layer {found.group(1)}" if found else "other"


def overlap_by_layer(masks: MaskSet) -> dict[str, dict[str, dict[str, float]]]:
    """Per layer (:func:`layer_of`) and per pair of tasks ``"a/b"``: the overlap ratio, its chance value
    (:func:`chance_overlap_ratio`) and their quotient ``vs_chance`` (1: no more overlap than chance)."""
    tasks = list(masks)
    groups: dict[str, list[str]] = {}
    for name in masks[tasks[0]]:
        groups.setdefault(layer_of(name), []).append(name)
    table = {}
    for layer, names in groups.items():
        table[layer] = {}
        for a, b in itertools.combinations(tasks, 2):
            ma, mb = ({n: masks[t][n] for n in names} for t in (a, b))
            observed, chance = overlap_ratio([ma, mb]), chance_overlap_ratio(ma, mb)
            table[layer][f"{a}/{b}"] = {"overlap": observed, "chance": chance, "vs_chance": chance_quotient(observed, chance)}
    return table


def parameter_counts(masks: MaskSet, encoder_dense: int, heads: dict[str, int]) -> dict[str, int]:
    """Effective parameters of a sparse model. A prunable weight kept by >= 2 tasks is shared, by one task
    private, by none unused (it is never read, so it is not counted). Dense encoder parameters (embeddings,
    biases) are shared; ``heads`` are each task's own parameters (its head, and private embedder copies).
    ``separate_models`` = one dense single-task model per task."""
    names = list(next(iter(masks.values())))
    stacked = {n: torch.stack([m[n] for m in masks.values()]).sum(0) for n in names}
    shared_prunable = sum(int((c >= 2).sum()) for c in stacked.values())
    private_prunable = sum(int((c == 1).sum()) for c in stacked.values())
    unused = sum(int((c == 0).sum()) for c in stacked.values())
    prunable = shared_prunable + private_prunable + unused
    return {
        "shared": encoder_dense + shared_prunable,
        "private": private_prunable + sum(heads.values()),
        "total": encoder_dense + shared_prunable + private_prunable + sum(heads.values()),
        "unused_prunable": unused,
        "prunable": prunable,
        "separate_models": sum(encoder_dense + prunable + h for h in heads.values()),
    }


def format_report(masks: MaskSet, counts: dict[str, int] | None = None) -> str:
    """Densities per task and tensor, the OR matrix and parameter counts, as plain text."""
    tasks = list(masks)
    lines = ["density (share of prunable weights kept) per task:"]
    lines += [f"  {t:<12} {density(masks[t]) * 100:6.2f}%" for t in tasks]
    lines.append("per tensor:")
    names = list(masks[tasks[0]])
    width = max(len(n) for n in names)
    lines.append("  " + " " * width + "".join(f"{t[:10]:>11}" for t in tasks))
    for name in names:
        lines.append(f"  {name:<{width}}" + "".join(f"{float(masks[t][name].float().mean()) * 100:10.2f}%" for t in tasks))
    matrix = overlap_matrix(masks)
    lines.append("overlap ratio (kept by both / kept by either):")
    lines.append("  " + " " * 12 + "".join(f"{t[:10]:>11}" for t in tasks))
    for a in tasks:
        lines.append(f"  {a:<12}" + "".join(f"{matrix[a][b]:11.3f}" for b in tasks))
    if len(tasks) > 2:
        lines.append(f"  all {len(tasks)} tasks: {overlap_ratio([masks[t] for t in tasks]):.3f}")
    if len(tasks) > 1:
        chance = overlap_matrix(masks, chance_overlap_ratio)
        lines.append("overlap ratio / its chance value (masks of the same densities per tensor, drawn at random):")
        pairs = list(itertools.combinations(tasks, 2))
        lines.append("  " + " " * 12 + "".join(f"{f'{a[:5]}/{b[:5]}':>13}" for a, b in pairs))
        lines.append(f"  {'all layers':<12}" + "".join(f"{chance_quotient(matrix[a][b], chance[a][b]):13.3f}"
                                                        for a, b in pairs))
        for layer, row in overlap_by_layer(masks).items():
            lines.append(f"  {layer:<12}" + "".join(f"{row[f'{a}/{b}']['vs_chance']:13.3f}" for a, b in pairs))
    if counts:
        lines.append("parameters: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    return "\n".join(lines)


def draw_overlap(masks: MaskSet, path: str | Path, title: str = "Mask overlap ratio") -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    tasks = list(masks)
    matrix = overlap_matrix(masks)
    values = [[matrix[a][b] for b in tasks] for a in tasks]
    fig, ax = plt.subplots(figsize=(1.2 * len(tasks) + 2, 1.2 * len(tasks) + 1.5))
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(tasks)), labels=[f"{t}\n{density(masks[t]) * 100:.1f}%" for t in tasks])
    ax.set_yticks(range(len(tasks)), labels=tasks)
    for i, a in enumerate(tasks):
        for j, b in enumerate(tasks):
            ax.text(j, i, f"{matrix[a][b]:.2f}", ha="center", va="center",
                    color="black" if matrix[a][b] > 0.6 else "white")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(str(path), dpi=120)
    plt.close(fig)
    return Path(path)


def model_statistics(model) -> dict:
    """Densities, overlap ratios and parameter counts of a sparse-sharing model (report, card, ``masks show``)."""
    masks = model.sharing.masks
    prunable = set(model.sharing.prunable_names)
    dense = sum(p.numel() for n, p in model.sharing.encoder.named_parameters() if n not in prunable)
    # a task's own parameters outside the masks: its head, and its copy of the embedder parts it owns
    private = getattr(model.sharing, "private", None)
    heads = {t: sum(p.numel() for p in model.heads[t].parameters())
             + (sum(p.numel() for p in private[t].parameters()) if private is not None and t in private else 0)
             for t in model.tasks}
    return {
        "density": {t: density(m) for t, m in masks.items()},
        "tensor_density": {t: tensor_densities(m) for t, m in masks.items()},
        "overlap": overlap_matrix(masks),
        "overlap_chance": overlap_matrix(masks, chance_overlap_ratio),
        "overlap_by_layer": overlap_by_layer(masks),
        "parameters": parameter_counts(masks, dense, heads),
    }
