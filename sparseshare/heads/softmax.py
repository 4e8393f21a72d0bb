from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..data.batching import IGNORE


class SoftmaxHead(nn.Module):
    """Independent per-token classification."""

    def __init__(self, input_dim: int, labels: list[str], scheme: str = "none"):
        super().__init__()
        self.proj = nn.Linear(input_dim, len(labels))

    def loss(self, features: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-sentence summed cross-entropy, shape (B,)."""
        logits = self.proj(features)
        token_loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
        return token_loss.sum(1)

    def decode(self, features: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        best = self.proj(features).argmax(-1)
        lengths = mask.sum(1).tolist()
        return [row[:n] for row, n in zip(best.tolist(), lengths)]

    # -- distillation: a teacher's distribution as soft targets -----------------------------------------------
    def soft_targets(self, features: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per sentence of the batch: ``unary`` (T, K), the label distribution of every token."""
        return {"unary": self.proj(features).softmax(-1) * mask.unsqueeze(-1)}

    def soft_loss(self, features: torch.Tensor, targets: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Per-sentence summed cross-entropy against the teacher's distributions, shape (B,)."""
        log_probs = self.proj(features).log_softmax(-1)
        return -(targets["unary"] * log_probs * mask.unsqueeze(-1)).sum((1, 2))
