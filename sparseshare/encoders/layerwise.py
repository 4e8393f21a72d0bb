"""The base of encoders whose layers a sharing strategy may run one by one (``layer_access = "direct"``)."""
from __future__ import annotations

import torch
from torch import nn


class LayerwiseEncoder(nn.Module):
    """``forward`` is exactly ``embed`` -> ``run_layer`` per layer -> ``finish`` per layer output, so a strategy
    composing these parts itself (per-task layer copies, unit masks, routed blocks) computes what the encoder would.
    Subclasses define ``layers``, ``embed``, ``run_layer``, ``finish``, ``layer_input_dim``, ``units``,
    ``unit_kind``, ``depth_key`` and ``norm`` (see :mod:`sparseshare.encoders`)."""

    layer_access = "direct"

    @staticmethod
    def unit_parameter_masks(layer, unit_mask):
        """``{parameter: bool mask}``: the weights of ``layer`` that belong to the units ``unit_mask`` keeps (Maximum
        Roaming's masked optimiser steps). An encoder that does not say which weights a unit owns cannot have them."""
        from ..errors import ConfigError

        raise ConfigError("config key 'model.roaming.masked_steps': this encoder does not say which weights belong to "
                          "a unit (no unit_parameter_masks); set it to false")

    def forward(self, batch, **embed_parts) -> list[torch.Tensor]:
        """``embed_parts``: a task's own embedder parts, for strategies with private embedders (BiLSTM only)."""
        x, outputs = self.embed(batch, **embed_parts), []
        for layer in self.layers:
            x = self.run_layer(layer, x, batch.mask)
            outputs.append(self.finish(x, batch.mask))
        return outputs
