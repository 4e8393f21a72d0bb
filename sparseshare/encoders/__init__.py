"""Encoders turn a :class:`~sparseshare.data.batching.Batch` into per-layer word representations.

Every encoder exposes ``num_layers``, ``output_dim`` and ``forward(batch) -> list[Tensor]`` (one
``(B, T, H)`` tensor per layer, last = top). Sharing strategies choose which layer a task reads and,
through the modules' weights, which parameters a task uses.

Strategies that act between or inside layers (bottom, cross_stitch, roaming, routing) use the layer-wise
interface. ``layer_access`` says how:

- ``"direct"`` (bilstm, scratch): the strategy runs the parts itself. ``embed(batch)`` gives the first layer's
  input, ``layers`` the layers, ``run_layer(layer, x, mask, unit_mask=None)`` runs one of them (or a strategy's
  copy) with an optional mask over its ``units`` (``unit_kind``), and ``finish(x, mask, norm=None)`` turns a
  layer's output into word features; ``forward`` is exactly embed -> run_layer... -> finish. ``norm`` is the
  module ``finish`` applies (None: nothing), ``layer_input_dim(layer)`` a layer's input width.
- ``"stand_in"`` (Hugging Face models, which run their own layers): the strategy replaces entries of
  ``layer_stack()`` by the stand-ins of :mod:`sparseshare.sharing.hf_layers` and runs ``top_features``.

``depth_key`` names the config key that sets ``num_layers`` (for error messages).

What the rest of the toolkit knows of an encoder it asks its kind (:mod:`sparseshare.encoders.registry`):
``model.encoder`` names a registered :class:`EncoderKind`, and no module outside this package names one.
"""
from .bilstm import BiLSTMEncoder, CharCNN, WordEmbedder
from .registry import ENCODER_KINDS, EncoderKind, encoder_kind, register_encoder
from .scratch import ScratchTransformerEncoder
from .transformer import TransformerEncoder, resolve_model_path

__all__ = ["BiLSTMEncoder", "CharCNN", "WordEmbedder", "ScratchTransformerEncoder", "TransformerEncoder",
           "resolve_model_path", "ENCODER_KINDS", "EncoderKind", "encoder_kind", "register_encoder"]
