"""Encoder kinds: what the rest of the toolkit needs to know of each kind of encoder (``model.encoder``), so that
no module outside this package names one.

A kind is a subclass of :class:`EncoderKind` registered with :func:`register_encoder`. It builds its encoder from
the model config, says what the encoder reads (a word table and char-CNN built from the corpus, or a pretrained
checkpoint of its own), its default prunable weights, how deep the config makes it, which of its tensors belong to
which layer, and how the model card describes it. Its options live in the model config under the key it names
(``model.bilstm``, ``model.transformer``, ``model.scratch``). Registering a kind from any module (a test, a user's
script) makes ``model.encoder: <name>`` train, save, load and tag; a model folder only looks the name up, it never
imports anything it names.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from torch import nn

from ..errors import ConfigError

ENCODER_KINDS: dict[str, type["EncoderKind"]] = {}


def register_encoder(cls: type["EncoderKind"]) -> type["EncoderKind"]:
    if cls.name in ENCODER_KINDS and ENCODER_KINDS[cls.name] is not cls:
        raise ValueError(f"an encoder kind named {cls.name!r} is registered already ({ENCODER_KINDS[cls.name]})")
    ENCODER_KINDS[cls.name] = cls
    return cls


def encoder_kind(name: str) -> type["EncoderKind"]:
    if name not in ENCODER_KINDS:
        raise ConfigError(f"config key 'model.encoder': {name!r} is not one of {list(ENCODER_KINDS)}")
    return ENCODER_KINDS[name]


class EncoderKind:
    name: ClassVar[str]
    # reads words through the word table and char-CNN of model.bilstm (vocabularies built from the training corpus,
    # word vectors from model.bilstm.embeddings); false: tokenises the words itself
    word_features: ClassVar[bool] = False
    # starts from a pretrained Hugging Face checkpoint, whose tokenizer and config a model folder keeps in encoder/
    pretrained_checkpoint: ClassVar[bool] = False
    # each task may own a copy of the word table and char-CNN (model.private_embedder)
    private_embedder: ClassVar[bool] = False
    # how a layer-wise sharing strategy reaches the layers: "direct" | "stand_in" (see sparseshare/encoders/__init__.py,
    # the same as the encoder module's attribute, known here before the encoder is built) | None: not layer-wise
    layer_access: ClassVar[str | None] = None
    # fnmatch patterns over the encoder's parameter names: the weights sparse sharing prunes unless model.sparse.prunable
    # says otherwise. Weight matrices only: biases, LayerNorms, embedding tables and heads stay dense (fully shared),
    # as in Sun et al. (2020)
    default_prunable: ClassVar[tuple[str, ...]] = ()
    # a regular expression over the encoder's tensor names whose group 1 names the layer (or a strategy's copy of
    # it) a tensor belongs to: a model folder's loader counts the layers the weights hold before building the model
    layer_tensor: ClassVar[str | None] = None
    citation: ClassVar[str | None] = None  # BibTeX for the model card

    @classmethod
    def build(cls, model, num_words: int, num_chars: int, pretrained_embeddings=None,
              checkpoint_parts: tuple | None = None) -> nn.Module:
        """The encoder of ``model`` (a :class:`~sparseshare.config.ModelConfig`). ``checkpoint_parts`` (tokenizer,
        model) are a saved folder's, for kinds with ``pretrained_checkpoint``."""
        raise NotImplementedError

    @classmethod
    def check_options(cls, model) -> None:
        """Reject bad values of the options this kind reads (ConfigError naming the key); called for every kind,
        as every section of the model config is typed and checked whichever encoder is chosen."""

    @classmethod
    def depth(cls, model) -> tuple[str, int] | None:
        """``(config key, layers)`` of the depth the config sets, or None when only the built encoder knows it."""
        return None

    @classmethod
    def describe(cls, model) -> str:
        """A few words for the model card's title, e.g. "BiLSTM (2x200) + char-CNN"."""
        return cls.name

    @classmethod
    def layer_widths(cls, model) -> tuple[list[int], int] | None:
        """The input width of each layer and the output width, when the config sets them (None: unknown)."""
        return None

    @classmethod
    def size_checks(cls, model) -> list[tuple[str, str, int, int, str, int]]:
        """``(tensors, name pattern, ndim, dim, config key, value)``: tensors of the encoder whose size ``dim`` the
        config key sets, checked against a model folder's weights before anything is allocated."""
        return []

    @classmethod
    def input_files(cls, model) -> dict[str, str]:
        """``config key -> path`` of the files the encoder reads, which must exist before the corpora are read."""
        return {}

    @classmethod
    def inputs(cls, model) -> dict[str, str]:
        """``config key -> path`` of every file or local folder the encoder reads (a run never deletes them)."""
        return cls.input_files(model)

    @classmethod
    def checkpoint(cls, model) -> str | None:
        """The pretrained checkpoint the encoder starts from (kinds with ``pretrained_checkpoint``)."""
        return None

    @classmethod
    def save_files(cls, tagger: nn.Module, directory: Path) -> None:
        """Write what a model folder needs beside model.safetensors to rebuild the encoder (e.g. a tokenizer)."""

    @classmethod
    def load_parts(cls, directory: Path, header: dict | None = None) -> tuple | None:
        """What :meth:`save_files` wrote, loaded for :meth:`build` (``checkpoint_parts``) without running any code
        the folder names; ``header`` (tensor name -> (dtype, shape) of model.safetensors) lets it check sizes before
        it allocates."""
        return None
