"""Encoders turn a :class:`~sparseshare.data.batching.Batch` into per-layer word representations.

Every encoder exposes ``num_layers``, ``output_dim`` and ``forward(batch) -> list[Tensor]`` (one
``(B, T, H)`` tensor per layer, last = top). Sharing strategies choose which layer a task reads and,
through the modules' weights, which parameters a task uses.
"""
from .bilstm import BiLSTMEncoder, CharCNN, WordEmbedder
from .scratch import ScratchTransformerEncoder
from .transformer import TransformerEncoder, resolve_model_path

__all__ = ["BiLSTMEncoder", "CharCNN", "WordEmbedder", "ScratchTransformerEncoder", "TransformerEncoder",
           "resolve_model_path"]
