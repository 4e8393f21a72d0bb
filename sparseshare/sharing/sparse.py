"""Sparse sharing (Sun et al., AAAI 2020): one encoder, one binary mask per task over its prunable weights.

A batch of task t runs the encoder with ``weight * mask_t`` substituted for each prunable weight
(``torch.func.functional_call``; no copies of the state dict, no weight backups), so the gradient
outside mask_t is exactly zero. Weights inside several masks are shared by those tasks, weights in one
mask are private to it. Which weights an optimizer step may move is the optimizer's business: see
:mod:`sparseshare.optim`, which the training loop feeds :meth:`parameter_masks`.

Masks are not part of ``model.safetensors``: they are saved beside it as ``masks.safetensors``.

With ``model.sparse.outside_mask: rewind`` a weight outside task t's mask is not zero for t but its value at the rewind
point (for a pretrained encoder, the checkpoint): t runs ``where(mask_t, weight, weight_at_rewind)``, so the tasks
share a sparse *update* of the pretrained network (LT-SFT, Ansell et al. 2022) instead of a subnetwork of it. The
rewind point's prunable weights are then buffers of the strategy (``rewind_weights.*`` in ``model.safetensors``).

With ``model.sparse.mask_scores`` (what the search rounds of ``sparse.criterion: learned`` set) each task also has a score per
prunable weight, a parameter trained with the straight-through estimator of movement pruning (Sanh et al. 2020):
the forward pass is unchanged, and a score's gradient is its masked weight's gradient times the weight (times its
change from the rewind point, with ``outside_mask: rewind``). The next round's mask keeps the highest scores.

With ``model.private_embedder: words`` each task also owns a copy of the word table; ``chars`` / ``all`` give it its
own char-CNN as well, when ``model.sparse.prunable`` leaves the char-CNN out (the default patterns split its convolution
among the tasks by their masks). The pipeline's warm-up and search run one shared embedder, and every task's copy
starts from its state at the rewind point.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from ..encoders import encoder_kind
from ..errors import ConfigError
from .masks import (MaskError, MaskSet, MissingMaskFileError, chance_quotient, check_masks, load_masks,
                    model_statistics, ones_like_parameters, prunable_parameters, save_masks)
from .base import SharingStrategy, register
from .private_embedder import PRIVATE_PARTS, PrivateEmbedders, check_private_embedder

MASK_FILE = "masks.safetensors"
CHAR_CONV = "embedder.chars.conv.weight"  # the char-CNN's one weight matrix (the default patterns mask it)
OUTSIDE_MASK = ("zero", "rewind")


@dataclass
class SparseOptions:
    """``model.sparse`` (the mask search's own options are the top-level section ``sparse``)."""
    # fnmatch patterns over encoder parameter names selecting the prunable weight matrices; null = the encoder's
    # default (its kind's default_prunable, sparseshare/encoders/)
    prunable: list[str] | None = None
    # what a task reads for a prunable weight outside its mask: zero (Sun et al.'s subnetwork) | rewind (the weight's
    # value at the rewind point, i.e. the pretrained checkpoint with sparse.warmup_epochs 0: the tasks then share a
    # sparse update of the pretrained network, as in LT-SFT, Ansell et al. 2022)
    outside_mask: str = "zero"
    # learn a score per prunable weight and task alongside the weights (straight-through; movement pruning, Sanh et
    # al. 2020): what the search rounds of sparse.criterion: learned set, so that their model folders hold the scores
    # the next round's mask is taken from
    mask_scores: bool = False


@register("sparse")
class SparseSharing(PrivateEmbedders, SharingStrategy):
    citation = """@inproceedings{sun2020sparse,
  title = {Learning Sparse Sharing Architectures for Multiple Tasks},
  author = {Sun, Tianxiang and Shao, Yunfan and Li, Xiaonan and Liu, Pengfei and Yan, Hang and Qiu, Xipeng and Huang, Xuanjing},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  year = {2020}
}"""
    masked_optimizer = True
    Options = SparseOptions
    shared_options = ("private_embedder", "private_embedder_tasks")
    files = (MASK_FILE,)
    reads_given_masks = True

    @classmethod
    def flat_keys(cls):
        return {key: key for key in ("prunable", "outside_mask", "mask_scores")}

    @classmethod
    def check_options(cls, config, tasks, depth, depth_key=""):
        check_private_embedder(config, "sparse", tasks)
        if config.sparse.outside_mask not in OUTSIDE_MASK:
            raise ConfigError(f"config key 'model.sparse.outside_mask': {config.sparse.outside_mask!r} is not one of "
                              f"{list(OUTSIDE_MASK)}")
        if "chars" not in PRIVATE_PARTS[config.private_embedder]:
            return
        patterns = config.sparse.prunable or encoder_kind(config.encoder).default_prunable
        masking = [p for p in patterns if fnmatch.fnmatchcase(CHAR_CONV, p)]
        if masking:  # a private char-CNN leaves the encoder, so a pattern for it would match nothing
            where = "model.sparse.prunable" if config.sparse.prunable else "the default prunable patterns (model.sparse.prunable unset)"
            raise ConfigError(f"config key 'model.private_embedder' = {config.private_embedder!r} gives each task its "
                              f"own char-CNN, but {where} split its convolution among the tasks by their masks "
                              f"({masking}); set model.sparse.prunable to patterns without it, e.g. [layers.*.lstm.weight_*]")

    def __init__(self, build_encoder, tasks, config):
        super().__init__(build_encoder, tasks, config)
        self.check_options(config, tasks, None)
        self.encoder = build_encoder()
        self.make_private_embedders(self.encoder, config)  # never masked: they leave the encoder
        self.prunable_patterns = list(config.sparse.prunable or encoder_kind(config.encoder).default_prunable)
        self.prunable_names = list(prunable_parameters(self.encoder, self.prunable_patterns))
        self.masks: MaskSet = {}
        self.outside_mask = config.sparse.outside_mask
        if self.outside_mask == "rewind":
            # the weights as built; whoever sets the rewind point (the pipeline's stages, a model folder) loads them
            self.rewind_weights = nn.Module()
            for name, parameter in self.prunable().items():
                self.rewind_weights.register_buffer(_buffer_name(name), parameter.detach().clone())
        if config.sparse.mask_scores:  # sparse.criterion: learned: the search rounds learn a score per weight and task
            self.mask_scores = nn.ParameterDict({
                score_name(task, name): nn.Parameter(torch.zeros_like(parameter, requires_grad=True))
                for task in self.tasks for name, parameter in self.prunable().items()})

    @property
    def output_dim(self) -> int:
        return self.encoder.output_dim

    # -- masks ----------------------------------------------------------------------------------
    def prunable(self) -> dict[str, torch.nn.Parameter]:
        named = dict(self.encoder.named_parameters())
        return {name: named[name] for name in self.prunable_names}

    def set_masks(self, masks: MaskSet, where: str = "masks") -> None:
        """Install masks for some or all tasks (other tasks' masks are kept)."""
        unknown = [t for t in masks if t not in self.tasks]
        if unknown:
            raise MaskError(f"{where}: mask for unknown task(s) {unknown}; this model has {self.tasks}")
        prunable = self.prunable()
        check_masks(masks, prunable, where)
        for task, mask in masks.items():
            self.masks[task] = {name: m.to(prunable[name].device) for name, m in mask.items()}

    def rewind_weight(self, name: str) -> torch.Tensor:
        return getattr(self.rewind_weights, _buffer_name(name))

    def missing_state(self, state, prefix):
        missing = {}
        if self.outside_mask == "rewind":  # the rewind point is the state's own weights
            missing.update({f"{prefix}rewind_weights.{_buffer_name(name)}": state[f"{prefix}encoder.{name}"]
                            for name in self.prunable_names})
        if hasattr(self, "mask_scores"):  # scores start at zero
            missing.update({f"{prefix}mask_scores.{key}": torch.zeros_like(score)
                            for key, score in self.mask_scores.items()})
        return {key: value for key, value in missing.items() if key not in state}

    def dense_masks(self, tasks: list[str] | None = None) -> MaskSet:
        return {task: ones_like_parameters(self.prunable()) for task in (tasks or self.tasks)}

    def mask_of(self, task: str) -> dict[str, torch.Tensor]:
        mask = self.masks.get(task)
        if mask is None:
            raise MaskError(f"task {task!r} has no mask (tasks with masks: {sorted(self.masks) or 'none'}); run the "
                            f"mask search (recipes/train_sparse.py) or give a mask file with sparse.masks")
        return mask

    def parameter_masks(self, task: str) -> dict[torch.nn.Parameter, torch.Tensor]:
        """``{parameter: mask}`` of ``task``, for :meth:`sparseshare.optim.MaskedSGD.set_masks`."""
        mask, prunable = self.mask_of(task), self.prunable()
        return {prunable[name]: self._on_device(mask, name, prunable[name]) for name in mask}

    def _on_device(self, mask, name, parameter):
        if mask[name].device != parameter.device:  # the model moved after the masks were set
            mask[name] = mask[name].to(parameter.device)
        return mask[name]

    # -- forward --------------------------------------------------------------------------------
    def forward(self, batch, task):
        mask, prunable = self.mask_of(task), self.prunable()
        if self.outside_mask == "rewind":
            masked = {name: torch.where(self._on_device(mask, name, p), p, self.rewind_weight(name))
                      for name, p in prunable.items()}
        else:
            masked = {name: p * self._on_device(mask, name, p) for name, p in prunable.items()}
        if hasattr(self, "mask_scores"):
            # straight-through (movement pruning, Sanh et al. 2020): the value stays the masked weight (+ exactly 0),
            # and a score's gradient is the masked weight's times the weight (minus the rewind point's)
            for name, p in prunable.items():
                score = self.mask_scores[score_name(task, name)]
                moved = p - self.rewind_weight(name) if self.outside_mask == "rewind" else p
                masked[name] = masked[name] + moved * (score - score.detach())
        return functional_call(self.encoder, masked, (batch,), self.own_embedder(task), strict=False)[-1]

    def task_encoder_state(self, task):
        mask = self.mask_of(task)
        state = self.with_own_embedder(dict(self.encoder.state_dict()), task)
        for name, m in mask.items():
            if self.outside_mask == "rewind":
                state[name] = torch.where(m.to(state[name].device), state[name], self.rewind_weight(name))
            else:
                state[name] = state[name] * m.to(state[name].device, state[name].dtype)
        return state

    # -- persistence ----------------------------------------------------------------------------
    def save_files(self, directory: Path) -> None:
        missing = [t for t in self.tasks if t not in self.masks]
        if missing:
            raise MaskError(f"cannot save a sparse model without masks for task(s) {missing}")
        save_masks({t: self.masks[t] for t in self.tasks}, Path(directory) / MASK_FILE)

    def load_files(self, directory: Path) -> None:
        path = Path(directory) / MASK_FILE
        if not path.is_file():
            raise MissingMaskFileError(f"model folder {directory} is missing {MASK_FILE}")
        masks = load_masks(path)
        missing = [t for t in self.tasks if t not in masks]
        if missing:
            raise MaskError(f"{path}: no mask for task(s) {missing}")
        extra = [t for t in masks if t not in self.tasks]
        if extra:
            raise MaskError(f"{path}: masks for task(s) {extra} that this model does not have (its tasks: "
                            f"{self.tasks})")
        self.set_masks({t: masks[t] for t in self.tasks}, where=str(path))  # the model's task order, not the file's

    def card_section(self, model) -> list[str]:
        stats = model_statistics(model)
        tasks = list(stats["density"])
        lines = ["## Sparse sharing masks", "",
                 "Each task runs the encoder through its own binary mask over the prunable weights "
                 f"(patterns: {', '.join(f'`{p}`' for p in model.sharing.prunable_patterns)}); "
                 + ("outside its mask a task reads zero." if self.outside_mask == "zero" else
                    "outside its mask a task reads the weight's value at the rewind point (the tasks share a sparse "
                    "update of it)."), "",
                 "| task | density |", "|---|---|"]
        lines += [f"| {t} | {100 * stats['density'][t]:.1f}% |" for t in tasks]
        lines += ["", "Overlap ratio (weights kept by both / kept by either):", "",
                  "| | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
        lines += [f"| {a} | " + " | ".join(f"{stats['overlap'][a][b]:.3f}" for b in tasks) + " |" for a in tasks]
        if len(tasks) > 1:
            lines += ["", "The same divided by its chance value (random masks of the same densities per tensor; 1 = "
                          "no more overlap than chance):", "",
                      "| | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
            lines += [f"| {a} | " + " | ".join(f"{chance_quotient(stats['overlap'][a][b], stats['overlap_chance'][a][b]):.3f}"
                                               for b in tasks) + " |" for a in tasks]
        counts = stats["parameters"]
        lines += ["", "Parameters: " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in counts.items()) + "."]
        if self.private_parts:
            lines += [""] + self.private_card_lines(
                "Sparse sharing", "the BiLSTM layers are shared through the masks", shared_how="shared through the masks")
        return lines

    def prepare_training(self, config, tasks):
        if config.sparse.masks:  # the file may hold masks of more tasks than this run trains
            masks = load_masks(config.sparse.masks)
            self.set_masks({task: masks[task] for task in tasks if task in masks}, where=config.sparse.masks)
        for task in tasks:
            self.mask_of(task)  # every trained task needs a mask before training starts



def _buffer_name(parameter_name: str) -> str:
    return parameter_name.replace(".", "__")  # a buffer's name holds no dots


def score_name(task: str, parameter_name: str) -> str:
    """The name of ``task``'s mask scores for a prunable tensor (``mask_scores.<this>`` in ``model.safetensors``)."""
    return f"{task}__{_buffer_name(parameter_name)}"
