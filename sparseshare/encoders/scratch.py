"""A small Transformer encoder trained from scratch over word embeddings + char-CNN (no pretrained model)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .bilstm import WordEmbedder, word_embedder, word_embedder_size_checks
from .layerwise import LayerwiseEncoder
from ..errors import ConfigError
from .registry import EncoderKind, register_encoder


class ScratchTransformerEncoder(LayerwiseEncoder):
    # the layer-wise interface (see sparseshare/encoders/__init__.py)
    depth_key = "model.scratch.layers"
    unit_kind = "feed-forward units"

    def __init__(self, embedder: WordEmbedder, dim: int = 256, layers: int = 2, heads: int = 4, ff: int = 512,
                 dropout: float = 0.1, max_positions: int = 512):
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.scratch.dim ({dim}) must be divisible by model.scratch.heads ({heads})")
        self.embedder = embedder
        self.project = nn.Linear(embedder.output_dim, dim)
        self.positions = nn.Embedding(max_positions, dim)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, ff, dropout, batch_first=True, norm_first=True) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.max_positions = max_positions
        self.num_layers, self.output_dim = layers, dim
        self.units = ff  # a unit mask addresses a layer's feed-forward units

    def embed(self, batch) -> torch.Tensor:
        """The first layer's input: embeddings -> projection -> scaled + positions."""
        length = batch.mask.shape[1]
        if length > self.max_positions:
            raise ValueError(f"sentence of {length} tokens exceeds model.scratch.max_positions={self.max_positions}")
        x = self.project(self.embedder(batch)) * math.sqrt(self.output_dim)
        return x + self.positions(torch.arange(length, device=x.device)).unsqueeze(0)

    @staticmethod
    def run_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor, mask: torch.Tensor,
                  unit_mask: torch.Tensor | None = None, cut_recurrence: bool = False) -> torch.Tensor:
        """``layer`` (one of this encoder's layers or a copy) over ``x``; with ``unit_mask`` (``units``,) the
        feed-forward activations are multiplied by the mask between the layer's two linear maps, so a dropped unit
        takes no part in the pass (``cut_recurrence``: nothing to cut, there is no recurrence). The residual
        stream is not masked (that would also cut the embeddings and attention passing through it)."""
        if unit_mask is None:
            return layer(x, src_key_padding_mask=~mask)
        # the pre-norm layer's forward written out with its public submodules, the mask inside the feed-forward
        h = layer.norm1(x)
        x = x + layer.dropout1(layer.self_attn(h, h, h, key_padding_mask=~mask, need_weights=False)[0])
        hidden = layer.activation(layer.linear1(layer.norm2(x))) * unit_mask.to(x.dtype)
        return x + layer.dropout2(layer.linear2(layer.dropout(hidden)))

    @staticmethod
    def unit_parameter_masks(layer: nn.TransformerEncoderLayer,
                             unit_mask: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
        """The weights of ``layer`` that belong to the feed-forward units ``unit_mask`` keeps (their rows of
        ``linear1`` and its bias, their columns of ``linear2``), as ``{parameter: bool mask}`` for the masked
        optimisers. Attention, norms and ``linear2``'s bias belong to no unit."""
        units = unit_mask.to(torch.bool)
        first, second = layer.linear1, layer.linear2
        return {first.weight: units[:, None].expand(first.weight.shape).to(first.weight.device),
                first.bias: units.to(first.bias.device),
                second.weight: units[None, :].expand(second.weight.shape).to(second.weight.device)}

    def finish(self, x: torch.Tensor, mask: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
        """A layer's output as word features: the final LayerNorm (``norm``, e.g. a task's own copy, or the
        encoder's), padding zeroed."""
        return (self.norm if norm is None else norm)(x) * mask.unsqueeze(-1)

    @staticmethod
    def layer_input_dim(layer: nn.TransformerEncoderLayer) -> int:
        return layer.self_attn.embed_dim


@register_encoder
class ScratchKind(EncoderKind):
    """A small Transformer trained from scratch; its word table and char-CNN are those of ``model.bilstm``."""
    name = "scratch"
    word_features = True
    layer_access = "direct"
    default_prunable = ("layers.*.self_attn.in_proj_weight", "layers.*.self_attn.out_proj.weight",
                        "layers.*.linear1.weight", "layers.*.linear2.weight")
    layer_tensor = r"^(.*)\.(?:self_attn|linear1|linear2)\."

    @classmethod
    def build(cls, model, num_words, num_chars, pretrained_embeddings=None, checkpoint_parts=None):
        s = model.scratch
        embedder = word_embedder(model, num_words, num_chars, pretrained_embeddings, dropout=s.dropout)
        return ScratchTransformerEncoder(embedder, s.dim, s.layers, s.heads, s.ff, s.dropout, s.max_positions)

    @classmethod
    def check_options(cls, model):
        if model.scratch.dim % model.scratch.heads:
            raise ConfigError(f"config key 'model.scratch.dim' ({model.scratch.dim}) must be divisible by "
                              f"model.scratch.heads ({model.scratch.heads})")

    @classmethod
    def depth(cls, model):
        return "model.scratch.layers", model.scratch.layers

    @classmethod
    def describe(cls, model):
        return f"Transformer trained from scratch ({model.scratch.layers} layers, {model.scratch.dim}-d)"

    @classmethod
    def layer_widths(cls, model):
        return [model.scratch.dim] * model.scratch.layers, model.scratch.dim

    @classmethod
    def size_checks(cls, model):
        s = model.scratch
        return [*word_embedder_size_checks(model),
                ("*project.weight", r"(^|\.)project\.weight$", 2, 0, "model.scratch.dim", s.dim),
                ("*positions.weight", r"(^|\.)positions\.weight$", 2, 0, "model.scratch.max_positions",
                 s.max_positions),
                ("*.self_attn.in_proj_weight", r"\.self_attn\.in_proj_weight$", 2, 1, "model.scratch.dim", s.dim),
                ("*.linear1.weight", r"\.linear1\.weight$", 2, 0, "model.scratch.ff", s.ff)]

    @classmethod
    def input_files(cls, model):
        return {"model.bilstm.embeddings": model.bilstm.embeddings} if model.bilstm.embeddings else {}
