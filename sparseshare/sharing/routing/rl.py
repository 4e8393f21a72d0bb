"""The reinforcement-learning pieces of the routers, as functions (each tested on its own): the Weighted Policy
Learner step, returns-to-go, sampling by the inverse CDF, the routers' own SGD step with its all-reduce, and the
REINFORCE router MLP."""
from __future__ import annotations

import math

import torch
from torch import nn

VALUE_RATE = 0.1  # running-mean rate of the WPL action values and of the REINFORCE baselines
ROUTER_HIDDEN = 64  # hidden units of the REINFORCE router MLPs


def wpl_update(policy: torch.Tensor, q: torch.Tensor, returns_sum: torch.Tensor, counts: torch.Tensor,
               valid: torch.Tensor, lr: float, value_rate: float = VALUE_RATE,
               seen: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One Weighted Policy Learner step for tabular policies ``(..., K)`` (rows: e.g. layers).

    ``returns_sum`` / ``counts``: the returns observed after each choice in this batch and how many. A chosen
    action's value moves towards its mean return (``q += value_rate x (mean - q)``; set to the mean where ``seen``
    is False). Then ``delta = q - sum(pi x q)``, the step ``delta x (1 - pi)`` where delta > 0 and ``delta x pi``
    elsewhere, ``pi += lr x step``, clipped to [0, 1] and renormalised over the ``valid`` choices. A row without
    any observation keeps its policy. Returns ``(policy, q)``."""
    taken = counts > 0
    mean = returns_sum / counts.clamp(min=1)
    rate = torch.full_like(q, value_rate) if seen is None else torch.where(seen, value_rate, 1.0).to(q.dtype)
    q = torch.where(taken, q + rate * (mean - q), q)
    value = (policy * q).sum(-1, keepdim=True)
    delta = (q - value) * valid
    step = torch.where(delta > 0, delta * (1 - policy), delta * policy)
    new = (policy + lr * step).clamp(0.0, 1.0) * valid
    new = new / new.sum(-1, keepdim=True).clamp(min=1e-12)
    return torch.where(taken.any(-1, keepdim=True), new, policy), q


def returns_to_go(final: torch.Tensor, immediate: torch.Tensor) -> torch.Tensor:
    """(L, B): the undiscounted return of the decision at layer l, ``final + sum_{l' >= l} immediate[l']``."""
    return final.unsqueeze(0) + immediate.flip(0).cumsum(0).flip(0)


def sample_choices(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """(B,) choice indices drawn from the rows of ``probs`` (B, K) by inverting the CDF at ``uniforms`` (B,)."""
    cdf = probs.cumsum(-1)
    return (uniforms.unsqueeze(-1) >= cdf).sum(-1).clamp(max=probs.shape[-1] - 1)


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def process_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def router_sgd_step(weights: list[torch.Tensor], objective_of, lr: float,
                    scale_stats: list[torch.Tensor]) -> torch.Tensor:
    """One SGD step of router buffers ``weights`` on ``objective_of(copies)`` (None: this process has no sentences),
    with the gradient summed over processes and divided by the number of sentences ``n`` over all processes.
    ``scale_stats`` are further statistics to sum over processes in the same all-reduce; their first element must be
    ``n``. Returns the all-reduced statistics. The routers train themselves rather than through the optimiser
    because their gradient is a policy gradient on the returns, not a gradient of the tagging loss."""
    copies = [w.detach().clone().requires_grad_() for w in weights]
    grads = [torch.zeros_like(w) for w in copies]
    with torch.enable_grad():
        objective = objective_of(copies)
    if objective is not None:
        grads = list(torch.autograd.grad(objective, copies))
    sizes = sum(g.numel() for g in grads)
    device = grads[0].device  # one device for the all-reduce (NCCL reduces GPU tensors only)
    reduced = all_reduce(torch.cat([g.flatten().double() for g in grads]
                                    + [x.flatten().to(device, torch.float64) for x in scale_stats]))
    stats, n = reduced[sizes:], float(reduced[sizes])
    if n > 0:
        offset = 0
        for w in weights:
            w -= lr * reduced[offset:offset + w.numel()].view_as(w).to(w.dtype) / n
            offset += w.numel()
    return stats


class RouterMLP(nn.Module):
    """One layer's REINFORCE router: ``[pooled input, task one-hot] -> hidden (ReLU) -> choice logits``. The
    weights are buffers: the router trains itself (:meth:`routers.Router.step`), not the optimiser."""

    def __init__(self, in_dim: int, choices: int, hidden: int = ROUTER_HIDDEN):
        super().__init__()
        self.register_buffer("w1", torch.zeros(in_dim, hidden))
        self.register_buffer("b1", torch.zeros(hidden))
        self.register_buffer("w2", torch.zeros(hidden, choices))
        self.register_buffer("b2", torch.zeros(choices))

    def weights(self) -> list[torch.Tensor]:
        return [self.w1, self.b1, self.w2, self.b2]

    @torch.no_grad()
    def reset(self, generator: torch.Generator) -> None:
        """Uniform(+-1/sqrt(fan_in)) hidden layer from ``generator``; a zero output layer (a uniform policy)."""
        bound = 1.0 / math.sqrt(self.w1.shape[0])
        self.w1.copy_((torch.rand(self.w1.shape, generator=generator) * 2 - 1) * bound)
        self.b1.copy_((torch.rand(self.b1.shape, generator=generator) * 2 - 1) * bound)
        self.w2.zero_()
        self.b2.zero_()

    @staticmethod
    def logits(weights, inputs: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = weights
        return torch.relu(inputs @ w1 + b1) @ w2 + b2
