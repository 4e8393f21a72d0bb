"""A small Transformer encoder trained from scratch over word embeddings + char-CNN (no pretrained model)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .bilstm import WordEmbedder


class ScratchTransformerEncoder(nn.Module):
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

    def forward(self, batch) -> list[torch.Tensor]:
        length = batch.mask.shape[1]
        if length > self.max_positions:
            raise ValueError(f"sentence of {length} tokens exceeds model.scratch.max_positions={self.max_positions}")
        x = self.project(self.embedder(batch)) * math.sqrt(self.output_dim)
        x = x + self.positions(torch.arange(length, device=x.device)).unsqueeze(0)
        outputs = []
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=~batch.mask)
            outputs.append(self.norm(x) * batch.mask.unsqueeze(-1))
        return outputs
