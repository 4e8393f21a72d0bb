"""SGD and AdamW whose step touches only the weights inside the active task's mask.

Masking the forward pass (``weight * mask``) makes the gradient outside the mask exactly zero, but a
stock optimizer still moves those weights: SGD's momentum buffer and Adam's moments keep pushing them
with the history of *other* tasks (the official sparse-sharing code has this flaw), and decoupled
weight decay shrinks them. Here a masked parameter is updated *lazily*: on a step of task t, the
weights outside mask_t keep their value and their optimizer state (momentum, moments) untouched, as if
the step had not happened for them. Inside the mask the update is exactly torch's. Parameters without a
mask (embeddings, biases, heads) are updated exactly as by ``torch.optim.SGD`` / ``AdamW``.

Before each step the training loop calls :meth:`set_masks` with the active task's ``{parameter: mask}``.
With all-ones masks both optimizers reproduce torch's results bit for bit (tested).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from transformers import get_scheduler

if TYPE_CHECKING:  # type hints only: the optimisers themselves know no config or model
    from .config import Config
    from .model import MultiTaskTagger


class _Masked:
    def __init__(self, params, **defaults):
        super().__init__(params, **defaults)
        self._masks: dict[int, torch.Tensor] = {}
        self._inside_cache: dict[int, tuple] = {}

    def set_masks(self, masks: dict[torch.Tensor, torch.Tensor] | None) -> None:
        """``{parameter: bool mask}`` for the next step(s); None = no parameter is masked."""
        self._masks = {id(p): m for p, m in (masks or {}).items()}

    def _inside(self, mask: torch.Tensor) -> torch.Tensor:
        """The flat indices of ``mask``'s kept weights. A step works on these only: gathering and scattering
        them is ~20x faster on CPU than ``torch.where`` over the whole tensor with a bool condition, and a
        training run reuses a few masks for thousands of steps, so they are computed once per mask."""
        cache = self._inside_cache
        hit = cache.get(id(mask))
        # holding the mask keeps its id from being reused; its version counter catches an in-place change
        if hit is not None and hit[0] is mask and hit[1] == mask._version:
            return hit[2]
        if len(cache) >= 256:  # masks of finished stages or rounds
            cache.clear()
        inside = mask.reshape(-1).nonzero().squeeze(1)
        cache[id(mask)] = (mask, mask._version, inside)
        return inside

    @torch.no_grad()
    def step(self, closure=None):
        masks = self._masks
        if not masks:
            return super().step(closure)  # torch's own step
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    mask = masks.get(id(p))
                    self._update(group, p, None if mask is None else self._inside(mask))
        return loss

    def _update(self, group: dict, p: torch.Tensor, inside: torch.Tensor | None) -> None:
        """One parameter's update: only the flat indices ``inside`` change (None = update it as torch would)."""
        raise NotImplementedError


class MaskedSGD(_Masked, torch.optim.SGD):
    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=False)

    def _update(self, group, p, inside):
        lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
        grad = p.grad if not decay else p.grad.add(p, alpha=decay)
        if inside is None:
            update = grad
            if momentum:
                state = self.state[p]
                if state.get("momentum_buffer") is None:  # torch starts the buffer at the first gradient
                    state["momentum_buffer"] = grad.clone()
                else:
                    state["momentum_buffer"].mul_(momentum).add_(grad)
                update = state["momentum_buffer"]
            p.add_(update, alpha=-lr)
            return
        update = grad.reshape(-1).index_select(0, inside)
        if momentum:
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:  # torch starts the buffer at the first gradient; weights outside the mask at 0
                buf = state["momentum_buffer"] = torch.zeros_like(p)
            else:
                update = buf.view(-1).index_select(0, inside).mul_(momentum).add_(update)
            buf.view(-1).index_copy_(0, inside, update)
        flat = p.view(-1)  # a view, never a copy: the writes below must reach p
        flat.index_copy_(0, inside, flat.index_select(0, inside).add_(update, alpha=-lr))


class MaskedAdamW(_Masked, torch.optim.AdamW):
    """AdamW with lazy per-weight state: each weight counts its own steps for the bias correction, so a
    weight that only one task uses is corrected as if that task's steps were the only ones."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=False)
        self._correction_tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _update(self, group, p, inside):
        lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        state = self.state[p]
        if not state:
            # torch's own keys, so that a masked and an unmasked step can follow each other
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        if inside is None:
            self._dense_step(p, state, lr, beta1, beta2, eps, decay)
            return
        if "masked_steps" not in state:  # per-weight step counts, from the shared count so far
            state["masked_steps"] = torch.full(p.shape, float(state["step"]), dtype=torch.float64,
                                               device=p.device)
        self._masked_step(p, state, inside, lr, beta1, beta2, eps, decay)
        state["step"] += 1

    def _masked_step(self, p, state, inside, lr, beta1, beta2, eps, decay):
        """torch.optim.AdamW's single-tensor update of the weights ``inside``, each with the bias corrections
        of its own step count; the other weights and their moments are left as they are."""
        if not len(inside):
            return
        steps = state["masked_steps"].view(-1)
        counts = steps.index_select(0, inside).add_(1)
        steps.index_copy_(0, inside, counts)
        # a weight's count never exceeds the shared count of this step: each step adds at most 1 to both
        correction1, correction2_sqrt = self._corrections(beta1, beta2, int(state["step"]) + 1, p.device)
        counts = counts.long()
        grad = p.grad.reshape(-1).index_select(0, inside)
        exp_avg = state["exp_avg"].view(-1).index_select(0, inside).lerp_(grad, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"].view(-1).index_select(0, inside).mul_(beta2)
        exp_avg_sq.addcmul_(grad, grad, value=1 - beta2)
        state["exp_avg"].view(-1).index_copy_(0, inside, exp_avg)
        state["exp_avg_sq"].view(-1).index_copy_(0, inside, exp_avg_sq)
        # torch: step_size = lr / correction1 (a Python float, applied in the parameter's dtype by addcdiv_)
        step_size = (lr / correction1.index_select(0, counts)).to(p.dtype)
        denom = (exp_avg_sq.sqrt() / correction2_sqrt.index_select(0, counts).to(p.dtype)).add_(eps)
        flat = p.view(-1)  # a view, never a copy: the writes below must reach p
        weights = flat.index_select(0, inside).mul_(1 - lr * decay)
        flat.index_copy_(0, inside, weights.sub_(step_size * exp_avg / denom))

    def _corrections(self, beta1: float, beta2: float, most: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """``1 - beta1 ** k`` and ``sqrt(1 - beta2 ** k)`` for k = 0 .. at least ``most``, in double precision,
        computed with Python floats exactly as torch's AdamW computes them for its step count ``k``."""
        tables = self._correction_tables
        key = (beta1, beta2, str(device))
        table = tables.get(key)
        if table is None or len(table[0]) <= most:
            size = max(2 * most, 1024)
            table = tables[key] = (
                torch.tensor([1 - beta1 ** k for k in range(size)], dtype=torch.float64, device=device),
                torch.tensor([math.sqrt(1 - beta2 ** k) for k in range(size)], dtype=torch.float64, device=device))
        return table

    @staticmethod
    def _dense_step(p, state, lr, beta1, beta2, eps, decay):
        """torch.optim.AdamW's single-tensor update (``amsgrad=False``)."""
        state["step"] += 1
        step = float(state["step"])
        p.mul_(1 - lr * decay)
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        correction1 = 1 - beta1 ** step
        correction2_sqrt = math.sqrt(1 - beta2 ** step)
        denom = (state["exp_avg_sq"].sqrt() / correction2_sqrt).add_(eps)
        p.addcdiv_(state["exp_avg"], denom, value=-lr / correction1)


# -- building the optimiser and schedule a config asks for -----------------------------------------
def build_optimizer(config: Config, model: MultiTaskTagger) -> torch.optim.Optimizer:
    """One parameter group, split only as the config asks: heads at ``train.head_lr``, and with weight decay
    the usual exemptions (biases, LayerNorm weights, CRF transition scores) as in transformers' Trainer."""
    from transformers.trainer_pt_utils import get_parameter_names

    t = config.train
    heads = {id(p) for p in model.heads.parameters()}
    decayed = set()
    if t.weight_decay:
        names = set(get_parameter_names(model, [torch.nn.LayerNorm], ["bias", "crf."]))
        decayed = {id(p) for n, p in model.named_parameters() if n in names}
    groups: dict[tuple, list] = {}
    for p in model.parameters():
        if p.requires_grad:
            key = (id(p) in heads and t.head_lr is not None, id(p) in decayed or not t.weight_decay)
            groups.setdefault(key, []).append(p)
    param_groups = [{"params": params, "lr": t.head_lr if is_head else t.lr,
                     "weight_decay": t.weight_decay if decays else 0.0}
                    for (is_head, decays), params in groups.items()]
    if model.sharing.masked_optimizer:  # steps must leave weights outside the active mask alone
        if t.optimizer == "sgd":
            return MaskedSGD(param_groups, lr=t.lr, momentum=t.momentum)
        return MaskedAdamW(param_groups, lr=t.lr)
    if t.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=t.lr, momentum=t.momentum)
    return torch.optim.AdamW(param_groups, lr=t.lr)

def build_scheduler(config: Config, optimizer, steps_per_epoch: int):
    t = config.train
    if t.lr_schedule == "inverse_time":  # Ma & Hovy (2016): lr / (1 + decay * epoch)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 1.0 / (1.0 + t.lr_decay * (step // steps_per_epoch)))
    return get_scheduler(t.lr_schedule, optimizer, num_warmup_steps=t.warmup_steps,
                         num_training_steps=t.epochs * steps_per_epoch)
