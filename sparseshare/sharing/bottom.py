"""Separate bottom layers (Zhang et al., "Rethinking Hard-Parameter Sharing in Multi-Task Learning", 2021):
each task owns the lowest ``model.bottom_layers`` encoder layers, the layers above are shared.

The word/char embeddings (and, for the scratch Transformer, the input projection, positions and final
LayerNorm) stay shared. Each task's bottom layers start as copies of the built encoder's layers, whose
originals are moved out of the encoder, so the model has ``(tasks - 1) x bottom-layer`` parameters more than
hard sharing. The strategy composes the encoder's parts itself (embeddings once per batch -> the task's
bottom layers -> the shared upper layers); the encoder classes are unchanged, but the encoder instance
kept here holds no layers of its own and is not run as a whole.

A Hugging Face Transformer runs as a whole, once per task: its ``bottom_layers`` lowest layers are replaced by
:class:`~.hf_layers.TaskLayers` (one copy per task; the active task's runs), the embeddings and upper layers are
the model's own.

Parameter names: ``encoder.*`` (shared embeddings), ``bottom.<task>.<i>.*`` (layer i of the task's bottom,
0-based), ``top.<j>.*`` (shared layer ``bottom_layers + j``). Hugging Face Transformer: task t's layer i is
``encoder.model.<layer list>.<i>.copies.<task>.*``.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..errors import ConfigError
from ..encoders import BiLSTMEncoder, ScratchTransformerEncoder, TransformerEncoder
from .base import SharingStrategy, config_depth, register
from .hf_layers import TaskLayers, layer_stack, plain_state


def check_bottom_layers(k: int, depth: int, depth_key: str = "") -> None:
    where = f" ({depth_key})" if depth_key else ""
    if not 1 <= k < depth:
        raise ConfigError(f"config key 'model.bottom_layers' must be >= 1 and < the encoder depth {depth}{where}, "
                          f"so that each task owns at least one layer and at least one is shared; got {k}")


@register("bottom")
class BottomSharing(SharingStrategy):
    options = ("bottom_layers",)
    citation = """@misc{zhang2021rethinking,
  title = {Rethinking Hard-Parameter Sharing in Multi-Task Learning},
  author = {Zhang and others},
  year = {2021}
}"""

    @classmethod
    def check_options(cls, config, tasks, depth, depth_key=""):
        if depth is not None:  # a Transformer's depth: checked by the constructor once it is loaded
            check_bottom_layers(config.bottom_layers, depth, depth_key)

    def __init__(self, build_encoder, tasks, config):
        super().__init__(build_encoder, tasks, config)
        encoder = layerwise_encoder("bottom", build_encoder, config)
        k = config.bottom_layers
        depth = config_depth(config)
        self.check_options(config, self.tasks, encoder.num_layers, depth[0] if depth else "the Transformer's "
                                                                                          "num_hidden_layers")
        self.bottom_layers, self.num_layers = k, encoder.num_layers
        self.hf = isinstance(encoder, TransformerEncoder)
        if self.hf:  # the model's k lowest layers become one copy per task
            self.encoder, self.scratch = encoder, False
            stack = layer_stack(encoder, "bottom")
            for i in range(k):
                stack[i] = TaskLayers(stack[i], self.tasks)
            self.task_switches = list(stack)[:k]
            return
        layers = list(encoder.layers)
        encoder.layers = nn.ModuleList()  # its layers live in bottom/top now: no unused originals
        self.encoder = encoder
        self.bottom = nn.ModuleDict({task: nn.ModuleList(copy.deepcopy(layers[:k])) for task in self.tasks})
        self.top = nn.ModuleList(layers[k:])
        self.scratch = isinstance(encoder, ScratchTransformerEncoder)

    @property
    def output_dim(self) -> int:
        return self.encoder.output_dim

    # -- the encoder's forward pass, in parts -----------------------------------------------------
    def embed(self, batch) -> torch.Tensor:
        return encoder_input(self.encoder, batch)

    def _layer(self, layer, x, mask):
        return run_layer(layer, x, mask)

    def encode(self, x: torch.Tensor, batch, task: str) -> torch.Tensor:
        """Top-layer features of ``task`` from the shared embeddings ``x``."""
        for layer in (*self.bottom[task], *self.top):
            x = self._layer(layer, x, batch.mask)
        return self.encoder.norm(x) * batch.mask.unsqueeze(-1) if self.scratch else x

    def forward(self, batch, task):
        if self.hf:
            return self._hf_forward(batch, task, self.encoder.subword_rows(batch))
        return self.encode(self.embed(batch), batch, task)

    def _hf_forward(self, batch, task, rows):
        for layer in self.task_switches:
            layer.task = task
        return self.encoder.top_features(batch, rows=rows)[0]

    def own_parameters(self, task: str) -> int:
        """The number of parameters of ``task``'s own bottom layers."""
        own = [layer.copies[task] for layer in self.task_switches] if self.hf else [self.bottom[task]]
        return sum(p.numel() for module in own for p in module.parameters())

    def task_encoder_state(self, task):
        if not self.hf:
            return super().task_encoder_state(task)
        return plain_state(self.encoder, {layer: f"copies.{task}" for layer in self.task_switches})

    def features_for_tasks(self, batch, tasks):
        if self.hf:  # the model runs as a whole, once per task (the batch is tokenised once)
            rows = self.encoder.subword_rows(batch)
            return {task: self._hf_forward(batch, task, rows) for task in tasks}
        x = self.embed(batch)  # embeddings once per batch; layers per task, as they differ from the first
        return {task: self.encode(x, batch, task) for task in tasks}

    def card_section(self, model) -> list[str]:
        return ["## Separate bottom layers", "",
                f"Each task owns the lowest {self.bottom_layers} of the encoder's {self.num_layers} layers "
                f"({self.own_parameters(self.tasks[0]):,} parameters per task); the layers above and the embeddings "
                f"are shared by all tasks."]


def layerwise_encoder(sharing: str, build_encoder, config) -> nn.Module:
    """The built encoder, for strategies that act between or inside its layers: the bilstm and scratch encoders'
    layers are run one by one by the strategy, a Hugging Face Transformer's are replaced by stand-ins
    (:mod:`.hf_layers`)."""
    encoder = build_encoder()
    if not isinstance(encoder, (BiLSTMEncoder, ScratchTransformerEncoder, TransformerEncoder)):
        raise ConfigError(f"config key 'model.sharing' = {sharing!r} serves the bilstm, scratch and transformer "
                          f"encoders, not {type(encoder).__name__} (model.encoder = {config.encoder!r})")
    return encoder


def encoder_input(encoder, batch) -> torch.Tensor:
    """The input of an encoder's first layer: ``BiLSTMEncoder.embed``, or for the scratch Transformer its
    embeddings -> projection -> scaled + positions (``ScratchTransformerEncoder.forward`` up to the layers).
    Strategies that run an encoder's layers themselves (bottom, cross_stitch, roaming) start here."""
    if not isinstance(encoder, ScratchTransformerEncoder):
        return encoder.embed(batch)
    length = batch.mask.shape[1]
    if length > encoder.max_positions:
        raise ValueError(f"sentence of {length} tokens exceeds model.scratch.max_positions={encoder.max_positions}")
    x = encoder.project(encoder.embedder(batch)) * math.sqrt(encoder.output_dim)
    return x + encoder.positions(torch.arange(length, device=x.device)).unsqueeze(0)


def run_layer(layer, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One encoder layer (a BiLSTMLayer or a scratch nn.TransformerEncoderLayer) over ``x``; ``mask`` marks words."""
    if isinstance(layer, nn.TransformerEncoderLayer):
        return layer(x, src_key_padding_mask=~mask)
    return layer(x, mask)
