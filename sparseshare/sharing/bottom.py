"""Separate bottom layers (Zhang et al., "Rethinking Hard-Parameter Sharing in Multi-Task Learning", 2021):
each task owns the lowest ``model.bottom_layers`` encoder layers, the layers above are shared.

The word/char embeddings (and, for the scratch Transformer, the input projection, positions and final
LayerNorm) stay shared. Each task's bottom layers start as copies of the built encoder's layers, whose
originals are moved out of the encoder, so the model has ``(tasks - 1) x bottom-layer`` parameters more than
hard sharing. The strategy composes the encoder's parts itself (embeddings once per batch -> the task's
bottom layers -> the shared upper layers); the encoder classes are unchanged, but the encoder instance
kept here holds no layers of its own and is not run as a whole. Served for the ``bilstm`` and ``scratch``
encoders; a Hugging Face AutoModel has no generic per-layer API and is refused before it is loaded.

Parameter names: ``encoder.*`` (shared embeddings), ``bottom.<task>.<i>.*`` (layer i of the task's bottom,
0-based), ``top.<j>.*`` (shared layer ``bottom_layers + j``).
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..config import ConfigError, check_bottom_layers, config_depth, layerwise_transformer_error
from ..encoders import BiLSTMEncoder, ScratchTransformerEncoder
from .base import SharingStrategy, register


@register("bottom")
class BottomSharing(SharingStrategy):
    def __init__(self, build_encoder, tasks, config):
        super().__init__(build_encoder, tasks, config)
        if config.encoder == "transformer":  # before build_encoder(): do not load a model we cannot serve
            raise ConfigError(layerwise_transformer_error("bottom"))
        encoder = build_encoder()
        if not isinstance(encoder, (BiLSTMEncoder, ScratchTransformerEncoder)):
            raise ConfigError(f"config key 'model.sharing' = 'bottom' serves the bilstm and scratch encoders, "
                              f"not {type(encoder).__name__} (model.encoder = {config.encoder!r})")
        k = config.bottom_layers
        check_bottom_layers(k, encoder.num_layers, config_depth(config)[0])
        layers = list(encoder.layers)
        encoder.layers = nn.ModuleList()  # its layers live in bottom/top now: no unused originals
        self.encoder = encoder
        self.bottom = nn.ModuleDict({task: nn.ModuleList(copy.deepcopy(layers[:k])) for task in self.tasks})
        self.top = nn.ModuleList(layers[k:])
        self.bottom_layers, self.num_layers = k, encoder.num_layers
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
        return self.encode(self.embed(batch), batch, task)

    def features_for_tasks(self, batch, tasks):
        x = self.embed(batch)  # embeddings once per batch; layers per task, as they differ from the first
        return {task: self.encode(x, batch, task) for task in tasks}


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
