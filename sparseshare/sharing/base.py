"""The sharing-strategy interface.

A strategy owns the encoder(s) and answers one question: *what representation does task t read for
this batch?* It is told the active task at every forward pass, so it may route, mask or mix weights
per task. Adding a strategy = one module here that subclasses :class:`SharingStrategy` and registers
itself with ``@register("name")``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import ConfigError

STRATEGIES: dict[str, type["SharingStrategy"]] = {}


def config_depth(model) -> tuple[str, int] | None:
    """``(key, layers)`` of the encoder depth the config sets, or None when only the loaded model knows it
    (a Hugging Face Transformer)."""
    from ..encoders import encoder_kind

    return encoder_kind(model.encoder).depth(model)


def layerwise_encoder(sharing: str, build_encoder, config) -> nn.Module:
    """The built encoder, for strategies that act between or inside its layers: it must offer the layer-wise
    interface (``layer_access``, see :mod:`sparseshare.encoders`)."""
    from ..encoders import ENCODER_KINDS

    encoder = build_encoder()
    if getattr(encoder, "layer_access", None) not in ("direct", "stand_in"):
        serves = [name for name, kind in ENCODER_KINDS.items() if kind.layer_access in ("direct", "stand_in")]
        raise ConfigError(f"config key 'model.sharing' = {sharing!r} serves the {', '.join(serves)} encoders, not "
                          f"{type(encoder).__name__} (model.encoder = {config.encoder!r})")
    return encoder


def register(name: str):
    def decorate(cls):
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return decorate


class SharingStrategy(nn.Module):
    name = "?"
    # This strategy's own options: a dataclass whose fields are the keys of the config section model.<name> (e.g.
    # model.routing.rho), read as ``config.<name>`` (config: the ModelConfig); None: no options of its own.
    Options: type | None = None
    # The flat ModelConfig fields this strategy reads that other strategies read too (the private embedders). A config
    # that sets an option of a strategy it does not select (flat or in a section) to a value other than its default
    # is refused by name (config.validate), so that no setting is silently ignored.
    shared_options: tuple[str, ...] = ()
    # BibTeX of the method, for the model card (None: no citation applies).
    citation: str | None = None
    # Whether a step of task t must leave the weights outside t's mask, and their optimiser state, alone
    # (MaskedSGD / MaskedAdamW instead of torch's optimisers).
    masked_optimizer = False

    @classmethod
    def check_options(cls, config, tasks: list[str], depth: int | None, depth_key: str = "") -> None:
        """Reject bad values of this strategy's options with a ConfigError naming the key. Called when a config is
        loaded, with the encoder depth the config sets (None for a Hugging Face model, whose depth only the loaded
        model knows; ``depth_key`` names where the depth comes from), and by the strategy's constructor with the
        built encoder's depth: one check for both."""

    @classmethod
    def upgrade_saved_options(cls, options: dict) -> dict:
        """This strategy's section (``model.<name>``) of a config saved by an earlier sparseshare (a model folder's
        config.json, a checkpointed run's config.yaml) in today's spelling: an option added later gets the value that
        reproduces what the saved run computed, which need not be today's default."""
        return options

    @classmethod
    def flat_keys(cls) -> dict[str, str]:
        """``{former flat key of model: field of Options}``: how the options were spelt before each strategy had a
        section of its own (``model.<name>_<field>``, before 2026-12-05); such configs are upgraded when loaded."""
        if cls.Options is None:
            return {}
        return {f"{cls.name}_{f.name}": f.name for f in dataclasses.fields(cls.Options)}

    @classmethod
    def layer_copies(cls, config, depth: int) -> tuple[str, int, str] | None:
        """For loading a saved model: ``(config key, count, words)`` when this strategy holds more encoder layers
        than the encoder's depth (e.g. a block per route), so that a config.json asking for more layers than
        model.safetensors holds is refused before anything is built."""
        return None

    @classmethod
    def size_checks(cls, config, tasks: list[str]) -> list[tuple]:
        """For loading a saved model: the sizes of this strategy's own tensors that its options set, as
        ``(tensors, name pattern, ndim, dim, config key, value[, words])`` (sparseshare/model_folder.py compares
        them with model.safetensors' header before anything is built, so a config.json cannot ask for more
        memory than the file shapes)."""
        return []

    def card_section(self, model) -> list[str]:
        """Markdown lines for the model card about this strategy's state (masks, routes, ...); ``model`` is the
        MultiTaskTagger that holds it."""
        return []

    def prepare_training(self, config, tasks: list[str]) -> None:
        """Called by the training loop on the freshly built model with the whole run config, before anything is
        trained (e.g. sparse sharing loads ``sparse.masks`` and checks that every trained task has a mask)."""

    def __init__(self, build_encoder: Callable[[], nn.Module], tasks: list[str], config):
        """``config`` is the :class:`~sparseshare.config.ModelConfig`: a strategy reads its own options there,
        and ``config.encoder`` lets it reject combinations it cannot serve."""
        super().__init__()
        self.tasks = list(tasks)
        self.encoder_kind = config.encoder

    @property
    def output_dim(self) -> int:
        raise NotImplementedError

    def forward(self, batch, task: str) -> torch.Tensor:
        """Features (B, T, H) that ``task``'s head reads."""
        raise NotImplementedError

    def missing_state(self, state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        """The tensors of this strategy that ``state``, a state dict of a model with another strategy or options
        (the sparse pipeline's stages start from a hard-sharing warm-up), lacks and that follow from the tensors it
        has (``prefix``: where this strategy sits in it, e.g. ``"sharing."``). Sparse sharing's rewind copy is the
        rewind point's weights themselves."""
        return {}

    def learning_rates(self) -> dict[nn.Parameter, float]:
        """Parameters of this strategy that train at a learning rate of their own instead of ``train.lr`` (e.g. a
        router's route logits), with that rate; the optimiser puts them in a group of their own, and the learning-rate
        schedule scales it as every other group."""
        return {}

    def features_for_tasks(self, batch, tasks: list[str]) -> dict[str, torch.Tensor]:
        """Features for several tasks at once; strategies override this to compute what tasks share once."""
        return {task: self(batch, task) for task in tasks}

    def task_encoder_state(self, task: str) -> dict[str, torch.Tensor]:
        """The weights of the one plain encoder that ``task`` runs through (``encoder.state_dict()`` names),
        for exporting a task as a standalone model. Strategies whose task path is not one plain encoder
        (several encoders, routing) cannot be exported and say so."""
        raise NotImplementedError(f"sharing {self.name!r} cannot export a single task's encoder")

    # Strategies whose structure changes during training (Maximum Roaming's masks, routers) hook into the training loop.
    # Their state must live in persistent buffers (or parameters): then it is part of model.safetensors and of
    # every checkpoint, and a resumed run continues exactly.
    def initialize(self, seed: int) -> None:
        """Called once by the training loop on a freshly built model, with ``train.seed`` (before a resumed
        checkpoint is loaded over it). Randomness here must come from a generator seeded with ``seed``."""

    def after_step(self, global_step: int) -> None:
        """Called by the training loop after every optimiser step; ``global_step`` counts steps from 1."""

    def observe_losses(self, task: str, losses: torch.Tensor) -> None:
        """Called by the training loop after every optimiser step with the detached per-sentence losses (B,) of
        the step's forward pass ``model(batch, task)`` on this process's slice of the global batch (empty when the
        process had no sentences at this step), e.g. as rewards for a router. Under a distributed launch every
        process calls it at every step; a strategy that learns from them must combine the processes' statistics
        (``torch.distributed.all_reduce``) so that their states stay identical."""

    def log_values(self) -> dict[str, float]:
        """Numbers the training loop logs at every epoch end (tracker, epoch line, results.json history); called
        once per epoch, after the dev evaluation and before the epoch's model and checkpoint are saved."""
        return {}

    # Strategies with state outside the parameters (e.g. sparse masks) write and read it beside
    # model.safetensors; the model folder calls these on save and load. ``files`` names what they write: a folder
    # that holds another strategy's file is refused at load (masks.safetensors beside config.json's hard sharing
    # would otherwise load a dense model and ignore the masks).
    files: tuple[str, ...] = ()
    # Whether the run config's sparse.masks (task masks given instead of searched) is this strategy's to read: a run of
    # a strategy that does not read them is refused, so that a given mask file is never silently unused.
    reads_given_masks = False

    def save_files(self, directory: Path) -> None:
        pass

    def load_files(self, directory: Path) -> None:
        pass
