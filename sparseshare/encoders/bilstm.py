"""Word embeddings + char-CNN + stacked BiLSTM (Ma & Hovy 2016; the sparse-sharing paper's base network)."""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .layerwise import LayerwiseEncoder
from ..errors import ConfigError
from .registry import EncoderKind, register_encoder


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

    def forward(self, batch, words: nn.Embedding | None = None, chars: CharCNN | None = None) -> torch.Tensor:
        """``words`` / ``chars``: a task's own word table / char-CNN in place of this embedder's (private embedders,
        sharing/private_embedder.py, move them out of it)."""
        words = self.words if words is None else words
        chars = self.chars if chars is None else chars
        word_ids = batch.word_ids
        if self.training and self.word_dropout > 0:
            drop = (torch.rand(word_ids.shape, device=word_ids.device) < self.word_dropout) & (word_ids > 1)
            word_ids = word_ids.masked_fill(drop, 1)
        x = words(word_ids)
        if chars is not None:
            x = torch.cat([x, chars(batch.char_ids)[batch.char_index]], dim=-1)
        return self.dropout(x)


class BiLSTMLayer(nn.Module):
    """One bidirectional LSTM layer over right-padded sequences, followed by dropout.

    On CPU the two directions run as separate unidirectional passes over padded tensors (the backward one
    over each sentence reversed within its own length), not as one pass over a packed sequence: a packed LSTM
    runs a loop of small matrix products per time step there, while a padded one runs oneDNN's fused kernel
    (about 1.4x faster for one layer with its backward pass at batch 32; benchmarks/RESULTS.md, "Training
    throughput", for the whole training step). Elsewhere (cuDNN) the packed sequence is fast and used. Both
    give the packed bidirectional LSTM's outputs up to float rounding, zero on padding; the parameters are
    ``nn.LSTM``'s own."""

    _DIRECTION_WEIGHTS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")

    def __init__(self, input_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.lstm = nn.LSTM(input_dim, hidden, batch_first=True, bidirectional=True)
        # The module each direction runs through, always called with that direction's weights: it holds no
        # weights of its own (meta device) and stays out of the module tree (no parameters, no state-dict keys).
        self.__dict__["_one_direction"] = nn.LSTM(input_dim, hidden, batch_first=True, device="meta")
        self.dropout = nn.Dropout(dropout)

    def _direction(self, x: torch.Tensor, suffix: str) -> torch.Tensor:
        # getattr at call time: sparse sharing's functional_call substitutes masked weights for these names
        weights = {name: getattr(self.lstm, name + suffix) for name in self._DIRECTION_WEIGHTS}
        return functional_call(self._one_direction, weights, (x,))[0]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # oneDNN's LSTM has no reduced-precision kernel on every CPU, and autocast would ask it for one
        padded = x.device.type == "cpu" and not torch.is_autocast_enabled("cpu")
        out = self._padded(x, mask) if padded else self._packed(x, mask)
        return self.dropout(out)

    def _packed(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1).cpu()
        # Length-bucketed batches arrive sorted longest first; then packing needs no sort and unsort.
        already_sorted = bool((lengths[:-1] >= lengths[1:]).all())
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=already_sorted)
        out, _ = self.lstm(packed)
        return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]

    def _padded(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1, keepdim=True)
        positions = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
        # position t of a sentence of length n <-> position n - 1 - t; padding maps to itself
        reverse = torch.where(mask, lengths - 1 - positions, positions).unsqueeze(2)
        forward = self._direction(x, "")
        backward = self._direction(x.gather(1, reverse.expand(-1, -1, x.shape[2])), "_reverse")
        backward = backward.gather(1, reverse.expand(-1, -1, backward.shape[2]))
        return torch.cat([forward, backward], dim=2) * mask.unsqueeze(2).to(x.dtype)


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

    def embed(self, batch, **parts) -> torch.Tensor:
        return self.embedder(batch, **parts)

    @staticmethod
    def run_layer(layer: BiLSTMLayer, x: torch.Tensor, mask: torch.Tensor,
                  unit_mask: torch.Tensor | None = None, cut_recurrence: bool = False) -> torch.Tensor:
        """``layer`` (one of this encoder's layers or a copy) over ``x``; with ``unit_mask`` (``units``,) its output
        units are multiplied by the mask. With ``cut_recurrence`` too, the recurrent weights' columns of the units the
        mask drops are zero for this pass, so that a dropped unit's state reaches no gate either: it then takes no
        part in the pass at all (as a masked channel of a convolution), and its weights get no gradient."""
        if unit_mask is not None and cut_recurrence:
            hidden, keep = layer.lstm.hidden_size, unit_mask.to(x.dtype)
            recurrent = {f"lstm.weight_hh_l0{suffix}": getattr(layer.lstm, f"weight_hh_l0{suffix}") * units[None, :]
                         for suffix, units in (("", keep[:hidden]), ("_reverse", keep[hidden:]))}
            y = functional_call(layer, recurrent, (x, mask), strict=False)
        else:
            y = layer(x, mask)
        return y if unit_mask is None else y * unit_mask.to(x.dtype)

    @staticmethod
    def unit_parameter_masks(layer: BiLSTMLayer, unit_mask: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
        """The weights of ``layer`` that belong to the units ``unit_mask`` keeps (each unit's own rows of the four
        gates, in its direction's input, recurrent and bias weights), as ``{parameter: bool mask}`` for the masked
        optimisers: a step of a task then moves only its own units' weights."""
        hidden = layer.lstm.hidden_size
        masks = {}
        for suffix, units in (("", unit_mask[:hidden]), ("_reverse", unit_mask[hidden:])):
            rows = units.to(torch.bool).repeat(4)  # gates i, f, g, o: hidden rows each
            for name in BiLSTMLayer._DIRECTION_WEIGHTS:
                parameter = getattr(layer.lstm, name + suffix)
                shape = parameter.shape
                masks[parameter] = (rows if len(shape) == 1 else rows[:, None].expand(shape)).to(parameter.device)
        return masks

    def finish(self, x: torch.Tensor, mask: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
        return x

    @staticmethod
    def layer_input_dim(layer: BiLSTMLayer) -> int:
        return layer.lstm.input_size


def word_embedder(model, num_words: int, num_chars: int, pretrained: torch.Tensor | None = None,
                  dropout: float | None = None) -> WordEmbedder:
    """The word table and char-CNN that ``model.bilstm`` describes (the encoders with ``word_features`` read it)."""
    c = model.bilstm
    return WordEmbedder(num_words, c.word_dim, num_chars, c.char_dim, c.char_filters, c.char_kernel,
                        c.dropout if dropout is None else dropout, pretrained, c.freeze_embeddings, c.word_dropout)


def word_embedder_size_checks(model) -> list[tuple[str, str, int, int, str, int]]:
    """The char-CNN's sizes that ``model.bilstm`` sets (the tables' sizes depend on the vocabularies as well)."""
    b = model.bilstm
    if not b.char_filters:
        return []
    return [("*chars*.conv.weight", r"(^|\.)chars(\.[^.]+)?\.conv\.weight$", 3, dim, key, value)
            for dim, (key, value) in enumerate((("model.bilstm.char_filters", b.char_filters),
                                                ("model.bilstm.char_dim", b.char_dim),
                                                ("model.bilstm.char_kernel", b.char_kernel)))]


@register_encoder
class BiLSTMKind(EncoderKind):
    name = "bilstm"
    word_features = True
    layer_access = "direct"
    private_embedder = True
    default_prunable = ("embedder.chars.conv.weight", "layers.*.lstm.weight_*")
    layer_tensor = r"^(.*)\.lstm\."
    citation = """@inproceedings{ma2016end,
  title = {End-to-end Sequence Labeling via Bi-directional {LSTM-CNNs-CRF}},
  author = {Ma, Xuezhe and Hovy, Eduard},
  booktitle = {Proceedings of ACL},
  year = {2016}
}"""

    @classmethod
    def build(cls, model, num_words, num_chars, pretrained_embeddings=None, checkpoint_parts=None):
        c = model.bilstm
        return BiLSTMEncoder(num_words, num_chars, c.word_dim, c.char_dim, c.char_filters, c.char_kernel, c.hidden,
                             c.layers, c.dropout, pretrained_embeddings, c.freeze_embeddings, c.word_dropout)

    @classmethod
    def check_options(cls, model):
        if model.bilstm.char_kernel % 2 == 0:
            raise ConfigError(f"config key 'model.bilstm.char_kernel' must be odd (same-length convolution), "
                              f"got {model.bilstm.char_kernel}")

    @classmethod
    def depth(cls, model):
        return "model.bilstm.layers", model.bilstm.layers

    @classmethod
    def describe(cls, model):
        c = model.bilstm
        return f"BiLSTM ({c.layers}x{c.hidden}) + char-CNN, {c.word_dim}-d word embeddings"

    @classmethod
    def layer_widths(cls, model):
        # the first layer reads the word (+ char) embeddings, the others the 2 x hidden states
        b = model.bilstm
        return [b.word_dim + b.char_filters] + [2 * b.hidden] * (b.layers - 1), 2 * b.hidden

    @classmethod
    def size_checks(cls, model):
        return [*word_embedder_size_checks(model),
                ("*.lstm.weight_hh_l0", r"\.lstm\.weight_hh_l0(_reverse)?$", 2, 1, "model.bilstm.hidden",
                 model.bilstm.hidden)]

    @classmethod
    def input_files(cls, model):
        return {"model.bilstm.embeddings": model.bilstm.embeddings} if model.bilstm.embeddings else {}
