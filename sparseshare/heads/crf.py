"""A batched linear-chain CRF with transitions constrained to the tag scheme.

The forward algorithm and Viterbi run vectorised over the batch and the tag set (one loop over time).
Transitions that the scheme forbids (``O -> I-PER`` in IOB2, ``B-PER -> O`` in BIOES, ...) get a large
negative score, so they can neither be decoded nor carry probability mass.
"""
from __future__ import annotations

import torch
from torch import nn

from ..data.batching import IGNORE
from ..data.schemes import allowed_transition

FORBIDDEN = -1e4


def transition_constraints(labels: list[str], scheme: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boolean ``allowed`` matrices: (K, K) between tags, (K,) from the start, (K,) to the end."""
    pairs = torch.tensor([[allowed_transition(a, b, scheme) for b in labels] for a in labels], dtype=torch.bool)
    start = torch.tensor([allowed_transition("<s>", b, scheme) for b in labels], dtype=torch.bool)
    end = torch.tensor([allowed_transition(a, "</s>", scheme) for a in labels], dtype=torch.bool)
    return pairs, start, end


class CRF(nn.Module):
    def __init__(self, num_tags: int, allowed: torch.Tensor | None = None, start_allowed: torch.Tensor | None = None,
                 end_allowed: torch.Tensor | None = None):
        super().__init__()
        self.num_tags = num_tags
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))  # [from, to]
        self.start = nn.Parameter(torch.zeros(num_tags))
        self.end = nn.Parameter(torch.zeros(num_tags))

        def penalty(ok, shape):
            ok = torch.ones(shape, dtype=torch.bool) if ok is None else ok
            return torch.where(ok, 0.0, FORBIDDEN)

        self.register_buffer("transition_penalty", penalty(allowed, (num_tags, num_tags)), persistent=False)
        self.register_buffer("start_penalty", penalty(start_allowed, (num_tags,)), persistent=False)
        self.register_buffer("end_penalty", penalty(end_allowed, (num_tags,)), persistent=False)

    def _scores(self):
        return (self.transitions + self.transition_penalty, self.start + self.start_penalty, self.end + self.end_penalty)

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log Z for each sentence, shape (B,). ``mask`` must be a left-aligned prefix mask."""
        return _log_partition(emissions, mask, *self._scores())

    def marginals(self, emissions: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior of each sentence's tag sequence, as the statistics its score is linear in: ``unary``
        (B, T, K), P(y_t = k) (0 at padding), and ``pairwise`` (B, K, K), sum over t of P(y_t-1 = i, y_t = j).
        They are the gradients of log Z with respect to the emissions and to a per-sentence copy of the
        transitions (forward-backward by autograd)."""
        trans, start, end = (x.detach() for x in self._scores())
        with torch.enable_grad():
            emissions = emissions.detach().requires_grad_(True)
            per_sentence = trans.expand(emissions.shape[0], *trans.shape).clone().requires_grad_(True)
            log_z = _log_partition(emissions, mask, per_sentence, start, end)
            unary, pairwise = torch.autograd.grad(log_z.sum(), (emissions, per_sentence))
        return unary, pairwise

    def cross_entropy(self, emissions: torch.Tensor, mask: torch.Tensor, unary: torch.Tensor,
                      pairwise: torch.Tensor) -> torch.Tensor:
        """The cross-entropy -E_q[log p(y)] of this CRF's sequence distribution p under another linear-chain
        distribution q given by its :meth:`marginals` (a teacher's), per sentence, shape (B,). Exact: a path's
        score is linear in its tags and transitions, so E_q[score] needs only q's marginals."""
        trans, start, end = self._scores()
        lengths = mask.sum(1)
        last = unary.gather(1, (lengths - 1).view(-1, 1, 1).expand(-1, 1, unary.shape[2])).squeeze(1)
        expected = ((unary * emissions).sum((1, 2)) + (pairwise * trans).sum((1, 2)) + unary[:, 0] @ start
                    + last @ end)
        return _log_partition(emissions, mask, trans, start, end) - expected

    def path_score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        trans, start, end = self._scores()
        tags = tags.masked_fill(~mask, 0)
        maskf = mask.to(emissions.dtype)
        emit = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)  # (B, T)
        score = start[tags[:, 0]] + (emit * maskf).sum(1)
        score = score + (trans[tags[:, :-1], tags[:, 1:]] * maskf[:, 1:]).sum(1)
        last = tags.gather(1, (mask.sum(1) - 1).unsqueeze(1)).squeeze(1)
        return score + end[last]

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of each sentence's gold path, shape (B,)."""
        return self.log_partition(emissions, mask) - self.path_score(emissions, tags, mask)

    @torch.no_grad()
    def viterbi(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        trans, start, end = self._scores()
        batch, length, _ = emissions.shape
        score = start + emissions[:, 0]
        history = []
        for t in range(1, length):
            best, idx = (score.unsqueeze(2) + trans.unsqueeze(0)).max(dim=1)  # over `from`
            history.append(idx)
            score = torch.where(mask[:, t].unsqueeze(1), best + emissions[:, t], score)
        last = (score + end).argmax(1)  # the tag at each sentence's last real token
        lengths = mask.sum(1)
        # Backtrack for the whole batch at once: positions past a sentence's end hold its last tag, so the
        # pointer chain starts at the right place for every length.
        tags = last.unsqueeze(1).repeat(1, length)
        for t in range(length - 1, 0, -1):
            previous = history[t - 1].gather(1, tags[:, t: t + 1]).squeeze(1)
            tags[:, t - 1] = torch.where(t < lengths, previous, last)
        return [row[:n] for row, n in zip(tags.tolist(), lengths.tolist())]


def _log_partition(emissions: torch.Tensor, mask: torch.Tensor, trans: torch.Tensor, start: torch.Tensor,
                   end: torch.Tensor) -> torch.Tensor:
    """The forward algorithm; ``trans`` is (K, K), or (B, K, K) for one copy per sentence."""
    alpha = start + emissions[:, 0]  # (B, K)
    for t in range(1, emissions.shape[1]):
        step = torch.logsumexp(alpha.unsqueeze(2) + trans, dim=1) + emissions[:, t]
        alpha = torch.where(mask[:, t].unsqueeze(1), step, alpha)
    return torch.logsumexp(alpha + end, dim=1)


class CRFHead(nn.Module):
    def __init__(self, input_dim: int, labels: list[str], scheme: str = "none"):
        super().__init__()
        self.proj = nn.Linear(input_dim, len(labels))
        self.crf = CRF(len(labels), *transition_constraints(labels, scheme))

    def loss(self, features: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Unscored positions (IGNORE inside a sentence) cannot be expressed in a chain; they are rare
        # (labels unseen in train never reach training), so they fall back to tag 0.
        tags = labels.masked_fill(labels == IGNORE, 0)
        return self.crf.nll(self.proj(features), tags, mask)

    def decode(self, features: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        return self.crf.viterbi(self.proj(features), mask)

    # -- distillation: a teacher's posterior as soft targets ------------------------------------------------
    def soft_targets(self, features: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per sentence of the batch: ``unary`` (T, K) and ``pairwise`` (K, K) marginals (see :meth:`CRF.marginals`)."""
        unary, pairwise = self.crf.marginals(self.proj(features), mask)
        return {"unary": unary, "pairwise": pairwise}

    def soft_loss(self, features: torch.Tensor, targets: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of this head's sequence distribution under the teacher's, per sentence, shape (B,)."""
        return self.crf.cross_entropy(self.proj(features), mask, targets["unary"], targets["pairwise"])
