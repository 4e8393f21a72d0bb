"""Maximum Roaming (Pascal et al., AAAI 2021): one shared encoder, per task a binary mask over the units of each
layer, and the masks move ("roam") during training until every task has used every unit.

Units: for the BiLSTM, the ``2 x hidden`` output units of each layer (the layer's output is multiplied by the
task's mask, so a switched-off unit reaches neither the next layer nor the head; with
``model.roaming.cut_recurrence``, the default, the recurrent weights' columns of the switched-off units are zero for
the task's pass too, so that their states reach no gate of the layer either). For the scratch Transformer, the
``model.scratch.ff`` feed-forward units of each layer (the activations between the two linear maps): a
switched-off unit's rows of ``linear1`` and column of ``linear2`` get no gradient from that task. The residual
stream itself is not masked, which would also cut the embeddings and attention passing through it. For a Hugging
Face Transformer, likewise its feed-forward units: the input of each layer's down projection (BERT's
``output.dense``) is multiplied by the mask (:class:`~.hf_layers.MaskedUnits`, which holds the projection:
its weights are named ``...output.dense.linear.*``).

* Initialisation: each task is active on ``k = round(model.roaming.ratio x units)`` units per layer, drawn so that
  every unit is covered by at least one task (a random permutation dealt out to the tasks, then each task filled
  up to k at random), hence ``k x tasks >= units``.
* Every ``model.roaming.delta`` training steps (``after_step``), for each layer and task that has not visited every
  unit yet: one unit it never visited is switched on and one of its active units is switched off, both at random.
  k stays constant. ``model.roaming.fixed: true`` never moves the masks: the paper's fixed random partition
  baseline.
* Progress r(c) = share of (task, layer, unit) triples visited so far (:meth:`roaming_progress`), logged per epoch,
  with the share of units no task is active on (``roaming/uncovered``): full coverage is drawn at initialisation,
  but an update may switch a unit off for the last task using it (the official code does not keep coverage either),
  unless ``model.roaming.keep_coverage``: then only a unit another task uses too is switched off.

Randomness comes from a ``torch.Generator`` seeded with ``train.seed`` (:meth:`initialize`), never from the global
RNG. Masks, visited sets and the generator state are persistent buffers (``masks``, ``visited``, ``rng_state``),
so they are saved in ``model.safetensors`` and in every training checkpoint: every process of a distributed run
and a resumed run draw exactly the masks of an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import SharingStrategy, layerwise_encoder, register
from .hf_layers import feed_forward_unit_parameter_masks, layer_stack, mask_feed_forward_units, plain_state


def initial_masks(layers: int, tasks: int, units: int, active: int, generator: torch.Generator) -> torch.Tensor:
    """(layers, tasks, units) bool: ``active`` units per task and layer, every unit covered by some task."""
    masks = torch.zeros(layers, tasks, units, dtype=torch.bool)
    for layer in range(layers):
        order = torch.randperm(units, generator=generator)
        for i, unit in enumerate(order.tolist()):  # deal every unit to one task: full coverage
            masks[layer, i % tasks, unit] = True
        for task in range(tasks):  # then fill each task up to `active` units at random
            free = (~masks[layer, task]).nonzero().squeeze(1)
            missing = active - int(masks[layer, task].sum())
            extra = free[torch.randperm(len(free), generator=generator)[:missing]]
            masks[layer, task, extra] = True
    return masks


@dataclass
class RoamingOptions:
    """``model.roaming``."""
    # share p in (0, 1] of each layer's units that each task is active on; every unit is covered by some task at
    # initialisation, so p * len(tasks) >= 1 (Pascal et al. 2021)
    ratio: float = 0.5
    # training steps Δ >= 1 between two mask updates
    delta: int = 100
    # switch roaming off: the initial random masks stay for the whole run (the paper's fixed random partition
    # baseline, from the same masks that roaming would start from)
    fixed: bool = False
    # a task's optimiser step moves only the weights of its active units (the masked optimisers; the paper's "a
    # task's parameters are those of its active units"); false: every weight, so that momentum and Adam's moments
    # also move the units switched off for the task (the official code's plain Adam), and in a BiLSTM with
    # cut_recurrence false the task's own gradient too
    masked_steps: bool = True
    # BiLSTM: a unit switched off for a task takes no part in the task's pass: its state reaches no gate (the
    # recurrent weights' columns of the task's inactive units are zero for the pass), as a masked channel of the
    # paper's convolutions; false: only the layer's output is masked, and the inactive units' states still feed the
    # active units through the recurrence (what runs before this option existed)
    cut_recurrence: bool = True
    # a move switches off only a unit that another task still uses, so every unit stays covered by some task (the
    # paper draws full coverage at initialisation; its official code, and false here, may switch a unit off for its
    # last task); a task with no such unit skips that move. Needs ratio x tasks > 1
    keep_coverage: bool = False


@register("roaming")
class MaximumRoaming(SharingStrategy):
    Options = RoamingOptions
    citation = """@inproceedings{pascal2021maximum,
  title = {Maximum Roaming Multi-Task Learning},
  author = {Pascal, Lucas and Michiardi, Pietro and Bost, Xavier and Huet, Benoit and Zuluaga, Maria A.},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  year = {2021}
}"""

    @classmethod
    def upgrade_saved_options(cls, options):
        """The fixed random partition was ``delta: 0`` before ``fixed`` existed (a new run's Δ < 1 is an error); a run
        moved every weight before ``masked_steps`` existed, and let the inactive units feed the recurrence before
        ``cut_recurrence`` did."""
        if options.get("delta") == 0 and "fixed" not in options:
            options = {**{k: v for k, v in options.items() if k != "delta"}, "fixed": True}  # Δ: default
        return {"masked_steps": False, "cut_recurrence": False, **options}

    @classmethod
    def check_options(cls, config, tasks, depth, depth_key=""):
        if not 0.0 < config.roaming.ratio <= 1.0:
            raise ConfigError(f"config key 'model.roaming.ratio' must be in (0, 1], got {config.roaming.ratio}")
        if config.roaming.delta < 1:
            raise ConfigError(f"config key 'model.roaming.delta' must be >= 1 (training steps between mask updates; "
                              f"model.roaming.fixed: true switches roaming off), got {config.roaming.delta}")
        if config.roaming.fixed and config.roaming.delta != RoamingOptions().delta:
            raise ConfigError(f"config key 'model.roaming.delta' ({config.roaming.delta}) has no effect with "
                              f"model.roaming.fixed: true (the masks never move); drop one of the two")
        if config.roaming.ratio * len(tasks) < 1:
            raise ConfigError(f"config key 'model.roaming.ratio' ({config.roaming.ratio}) times the number of tasks "
                              f"({len(tasks)}) must be >= 1, so that every unit can be covered by at least one task")

    def __init__(self, build_encoder, tasks, config):
        super().__init__(build_encoder, tasks, config)
        self.check_options(config, self.tasks, None)
        self.encoder = layerwise_encoder("roaming", build_encoder, config)
        self.stand_ins = self.encoder.layer_access == "stand_in"
        if self.stand_ins:  # each layer's feed-forward down projection gets its input units masked
            hidden = self.encoder.output_dim
            self.hf_layers = list(layer_stack(self.encoder, "roaming"))
            self.gates = [mask_feed_forward_units(layer, hidden) for layer in self.hf_layers]
            widths = {gate.linear.in_features for gate in self.gates}
            if len(widths) != 1:
                raise ConfigError(f"config key 'model.sharing' = 'roaming' needs feed-forward layers of one width, "
                                  f"the Transformer's have {sorted(widths)}")
            self.units = widths.pop()
        else:
            self.units = self.encoder.units
        self.active = round(config.roaming.ratio * self.units)
        self.delta = 0 if config.roaming.fixed else config.roaming.delta  # 0: the masks never move
        self.masked_optimizer = config.roaming.masked_steps
        self.cut_recurrence = config.roaming.cut_recurrence
        self.keep_coverage = config.roaming.keep_coverage
        self._parameter_masks: dict[str, tuple[int, dict]] = {}  # task -> (masks' version, {parameter: mask})
        if self.active < 1 or self.active * len(self.tasks) < self.units:
            raise ConfigError(
                f"config key 'model.roaming.ratio' ({config.roaming.ratio}) gives {self.active} of {self.units} units "
                f"per layer to each of {len(self.tasks)} task(s), too few to cover every unit")
        if self.keep_coverage and self.delta and self.active * len(self.tasks) == self.units:
            raise ConfigError(
                f"config key 'model.roaming.keep_coverage': {self.active} of {self.units} units per layer for each of "
                f"{len(self.tasks)} task(s) cover each unit exactly once, so no unit could be switched off while "
                f"keeping coverage; raise model.roaming.ratio or set it to false")
        shape = (self.encoder.num_layers, len(self.tasks), self.units)
        self.register_buffer("masks", torch.zeros(shape, dtype=torch.bool))
        self.register_buffer("visited", torch.zeros(shape, dtype=torch.bool))
        self.register_buffer("rng_state", torch.Generator().get_state())
        self.initialize(0)
        if self.masked_optimizer:  # an encoder whose units' weights are unknown is refused now, not at the first step
            if self.stand_ins:
                feed_forward_unit_parameter_masks(self.hf_layers[0], self.gates[0], self.masks[0, 0])
            else:
                self.encoder.unit_parameter_masks(self.encoder.layers[0], self.masks[0, 0])

    @property
    def output_dim(self) -> int:
        return self.encoder.output_dim

    # -- masks ----------------------------------------------------------------------------------
    @torch.no_grad()
    def initialize(self, seed: int) -> None:
        """Draw the initial masks from a generator seeded with ``seed`` (the training loop passes train.seed)."""
        generator = torch.Generator().manual_seed(seed)
        layers, tasks, units = self.masks.shape
        self.masks.copy_(initial_masks(layers, tasks, units, self.active, generator))
        self.visited.copy_(self.masks)
        self.rng_state.copy_(generator.get_state())

    @torch.no_grad()
    def roam(self) -> None:
        """One update: per layer and task, switch on a never-visited unit and switch off an active one."""
        generator = torch.Generator()
        generator.set_state(self.rng_state.cpu())
        masks, visited = self.masks.cpu(), self.visited.cpu()
        for layer in range(masks.shape[0]):
            for task in range(masks.shape[1]):
                unseen = (~visited[layer, task]).nonzero().squeeze(1)
                if len(unseen) == 0:
                    continue  # this task has visited every unit of the layer: its mask stays
                on = unseen[torch.randint(len(unseen), (1,), generator=generator)]
                current = masks[layer, task].nonzero().squeeze(1)
                if self.keep_coverage:  # only a unit that another task uses too may be switched off
                    others = masks[layer].sum(0) - masks[layer, task].to(torch.long)
                    current = current[others[current] > 0]
                    if len(current) == 0:
                        continue  # this move would leave a unit to no task: skipped
                off = current[torch.randint(len(current), (1,), generator=generator)]
                masks[layer, task, off] = False
                masks[layer, task, on] = True
                visited[layer, task, on] = True
        self.masks.copy_(masks)
        self.visited.copy_(visited)
        self.rng_state.copy_(generator.get_state())

    def parameter_masks(self, task: str) -> dict[torch.nn.Parameter, torch.Tensor]:
        """``{parameter: mask}`` of ``task``: the weights of its active units in every layer (for the masked
        optimisers, with ``model.roaming.masked_steps``). Built again only after the masks have moved."""
        version = self.masks._version
        cached = self._parameter_masks.get(task)
        if cached is not None and cached[0] == version:
            return cached[1]
        t, masks = self.tasks.index(task), {}
        for i in range(self.masks.shape[0]):
            if self.stand_ins:
                masks.update(feed_forward_unit_parameter_masks(self.hf_layers[i], self.gates[i], self.masks[i, t]))
            else:
                masks.update(self.encoder.unit_parameter_masks(self.encoder.layers[i], self.masks[i, t]))
        if cached is not None:  # the same tensors, changed in place: the optimiser's per-mask caches stay one each
            for parameter, mask in masks.items():
                cached[1][parameter].copy_(mask)
            masks = cached[1]
        else:
            masks = {parameter: mask.contiguous().clone() for parameter, mask in masks.items()}
        self._parameter_masks[task] = (self.masks._version, masks)
        return masks

    def after_step(self, global_step: int) -> None:
        if self.delta and global_step % self.delta == 0:
            self.roam()

    def roaming_progress(self) -> float:
        """r(c): the share of (task, layer, unit) triples visited so far (1.0 once roaming is complete)."""
        return float(self.visited.float().mean())

    def uncovered_units(self) -> int:
        """(layer, unit) pairs no task is active on now. Zero at initialisation; roaming may switch a unit off for
        its last task (as the official code does: the update keeps each task's count, not the coverage)."""
        return int((~self.masks.any(1)).sum())

    def log_values(self) -> dict[str, float]:
        return {"roaming/progress": self.roaming_progress(),
                "roaming/uncovered": self.uncovered_units() / (self.masks.shape[0] * self.units)}

    # -- forward --------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, batch, task: str) -> torch.Tensor:
        """Top-layer features of ``task`` from the shared embeddings ``x``."""
        t = self.tasks.index(task)
        if self.stand_ins:  # the model runs as a whole; x: the batch's subword rows (tokenised once per batch)
            for i, gate in enumerate(self.gates):
                gate.unit_mask = self.masks[i, t]
            return self.encoder.top_features(batch, rows=x)[0]
        for i, layer in enumerate(self.encoder.layers):
            x = self.encoder.run_layer(layer, x, batch.mask, unit_mask=self.masks[i, t],
                                       cut_recurrence=self.cut_recurrence)
        return self.encoder.finish(x, batch.mask)

    def task_encoder_state(self, task):
        """A Hugging Face Transformer only: the task's path is the plain model with the down projections' columns
        of its switched-off units zeroed (``(x * m) W^T = x (W * m)^T``)."""
        if not self.stand_ins:
            return super().task_encoder_state(task)
        t = self.tasks.index(task)
        state = plain_state(self.encoder, {gate: "linear" for gate in self.gates})
        names = {id(module): name for name, module in self.encoder.named_modules()}
        for i, gate in enumerate(self.gates):
            key = f"{names[id(gate)]}.weight"
            state[key] = state[key] * self.masks[i, t].to(state[key].dtype)
        return state

    def _input(self, batch):
        return self.encoder.subword_rows(batch) if self.stand_ins else self.encoder.embed(batch)

    def forward(self, batch, task):
        return self.encode(self._input(batch), batch, task)

    def features_for_tasks(self, batch, tasks):
        x = self._input(batch)  # embeddings once per batch; the masks differ from the first layer
        return {task: self.encode(x, batch, task) for task in tasks}

    def card_section(self, model) -> list[str]:
        kind = self.encoder.unit_kind
        steps = ("a task's step moves only the weights of its active units (model.roaming.masked_steps)"
                 if self.masked_optimizer else "a task's step moves every weight, the units switched off for it "
                 "through the optimiser's momentum or moments")
        moving = (f"- delta: {self.delta} (every {self.delta} training steps each task swaps one active unit for one "
                  f"it never visited)." if self.delta else
                  "- Roaming switched off (model.roaming.fixed): the masks never move, a fixed random partition.")
        return ["## Maximum Roaming", "",
                f"Each task runs every encoder layer through its own binary mask over the layer's {self.units} "
                f"{kind}.", "",
                f"- Sharing ratio p: {model.config.roaming.ratio} ({self.active} of {self.units} units per layer and "
                f"task).",
                moving,
                f"- Optimiser steps: {steps}.",
                f"- Roaming progress r(c): {self.roaming_progress():.3f} (share of the task x layer x unit triples "
                f"visited so far).",
                f"- Units no task is active on: {self.uncovered_units()} of {self.masks.shape[0] * self.units} (every "
                f"unit is covered at initialisation; an update may switch a unit off for the last task using it)."]

