"""Word embeddings + char-CNN + stacked BiLSTM (Ma & Hovy 2016; the sparse-sharing paper's base network)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .layerwise import LayerwiseEncoder


class CharCNN(nn.Module):
    """Character embeddings -> 1-D convolution -> max over the word's characters."""

    def __init__(self, num_chars: int, char_dim: int = 30, filters: int = 30, kernel: int = 3):
        super().__init__()
        self.embedding = nn.Embedding(num_chars, char_dim, padding_idx=0)
        self.conv = nn.Conv1d(char_dim, filters, kernel, padding=kernel // 2)
        self.output_dim = filters

    def forward(self, char_ids: torch.Tensor) -> torch.Tensor:
        """(W, C) character ids of W words -> (W, filters)."""
        x = self.conv(self.embedding(char_ids).transpose(1, 2))  # (W, F, C)
        x = x.masked_fill((char_ids == 0).unsqueeze(1), float("-inf")).amax(dim=2)
        return torch.nan_to_num(x, neginf=0.0)  # the padding word has no characters


class WordEmbedder(nn.Module):
    def __init__(self, num_words: int, word_dim: int, num_chars: int, char_dim: int, char_filters: int,
                 char_kernel: int, dropout: float, pretrained: torch.Tensor | None = None, freeze: bool = False,
                 word_dropout: float = 0.0):
        super().__init__()
        self.words = nn.Embedding(num_words, word_dim, padding_idx=0)
        # Every training word is in the vocabulary, so without word dropout the UNK row (id 1) that
        # unseen dev/test words use would never be trained.
        self.word_dropout = word_dropout
        if pretrained is not None:
            if tuple(pretrained.shape) != (num_words, word_dim):
                raise ValueError(f"pretrained embeddings have shape {tuple(pretrained.shape)}, expected {(num_words, word_dim)}")
            self.words.weight.data.copy_(pretrained)
        self.words.weight.requires_grad_(not freeze)
        self.chars = CharCNN(num_chars, char_dim, char_filters, char_kernel) if char_filters > 0 else None
        self.dropout = nn.Dropout(dropout)
        self.output_dim = word_dim + (char_filters if self.chars is not None else 0)

    def forward(self, batch) -> torch.Tensor:
        word_ids = batch.word_ids
        if self.training and self.word_dropout > 0:
            drop = (torch.rand(word_ids.shape, device=word_ids.device) < self.word_dropout) & (word_ids > 1)
            word_ids = word_ids.masked_fill(drop, 1)
        x = self.words(word_ids)
        if self.chars is not None:
            x = torch.cat([x, self.chars(batch.char_ids)[batch.char_index]], dim=-1)
        return self.dropout(x)


class BiLSTMLayer(nn.Module):
    """One bidirectional LSTM layer over packed sequences, followed by dropout."""

    def __init__(self, input_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.lstm = nn.LSTM(input_dim, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1).cpu()
        # Length-bucketed batches arrive sorted longest first; then packing needs no sort and unsort.
        already_sorted = bool((lengths[:-1] >= lengths[1:]).all())
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=already_sorted)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.dropout(out)


class BiLSTMEncoder(LayerwiseEncoder):
    # the layer-wise interface (see sparseshare/encoders/__init__.py)
    depth_key = "model.bilstm.layers"
    unit_kind = "output units"
    norm = None  # nothing is applied after the top layer

    def __init__(self, num_words: int, num_chars: int, word_dim: int = 50, char_dim: int = 30,
                 char_filters: int = 30, char_kernel: int = 3, hidden: int = 200, layers: int = 2,
                 dropout: float = 0.5, pretrained: torch.Tensor | None = None, freeze_embeddings: bool = False,
                 word_dropout: float = 0.0):
        super().__init__()
        if layers < 1:
            raise ValueError(f"model.bilstm.layers must be >= 1, got {layers}")
        self.embedder = WordEmbedder(num_words, word_dim, num_chars, char_dim, char_filters, char_kernel, dropout,
                                     pretrained, freeze_embeddings, word_dropout)
        dims = [self.embedder.output_dim] + [2 * hidden] * layers
        self.layers = nn.ModuleList(BiLSTMLayer(dims[i], hidden, dropout) for i in range(layers))
        self.num_layers, self.output_dim = layers, 2 * hidden
        self.units = self.output_dim  # a unit mask addresses a layer's output units

    def embed(self, batch) -> torch.Tensor:
        return self.embedder(batch)

    @staticmethod
    def run_layer(layer: BiLSTMLayer, x: torch.Tensor, mask: torch.Tensor,
                  unit_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``layer`` (one of this encoder's layers or a copy) over ``x``; with ``unit_mask`` (``units``,) its output
        units are multiplied by the mask. Inside the layer the recurrence still sees every unit: cuDNN's LSTM
        cannot mask a unit's state."""
        y = layer(x, mask)
        return y if unit_mask is None else y * unit_mask.to(x.dtype)

    def finish(self, x: torch.Tensor, mask: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
        return x

    @staticmethod
    def layer_input_dim(layer: BiLSTMLayer) -> int:
        return layer.lstm.input_size
