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

    def forward(self, batch, **embed_parts) -> list[torch.Tensor]:
        """``embed_parts``: a task's own embedder parts, for strategies with private embedders (BiLSTM only)."""
        x, outputs = self.embed(batch, **embed_parts), []
        for layer in self.layers:
            x = self.run_layer(layer, x, batch.mask)
            outputs.append(self.finish(x, batch.mask))
        return outputs
