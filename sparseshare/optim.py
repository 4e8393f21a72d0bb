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
    def set_masks(self, masks: dict[torch.Tensor, torch.Tensor] | None) -> None:
        """``{parameter: bool mask}`` for the next step(s); None = no parameter is masked."""
        self._masks = {id(p): m for p, m in (masks or {}).items()}

    @torch.no_grad()
    def step(self, closure=None):
        masks = getattr(self, "_masks", None)
        if not masks:
            return super().step(closure)  # torch's own step
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(group, p, masks.get(id(p)))
        return loss

    def _update(self, group: dict, p: torch.Tensor, mask: torch.Tensor | None) -> None:
        """One parameter's update; ``mask`` None = update it as torch would."""
        raise NotImplementedError


class MaskedSGD(_Masked, torch.optim.SGD):
    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=False)

    def _update(self, group, p, mask):
        lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
        grad = p.grad if not decay else p.grad.add(p, alpha=decay)
        update = grad
        if momentum:
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:  # torch starts the buffer at the first gradient
                buf = grad.clone() if mask is None else torch.where(mask, grad, torch.zeros_like(grad))
                state["momentum_buffer"] = buf
            elif mask is None:
                buf.mul_(momentum).add_(grad)
            else:
                buf.copy_(torch.where(mask, buf * momentum + grad, buf))
            update = buf
        p.add_(update if mask is None else update * mask, alpha=-lr)


class MaskedAdamW(_Masked, torch.optim.AdamW):
    """AdamW with lazy per-weight state: each weight counts its own steps for the bias correction, so a
    weight that only one task uses is corrected as if that task's steps were the only ones."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=False)

    def _update(self, group, p, mask):
        lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        state = self.state[p]
        if not state:
            # torch's own keys, so that a masked and an unmasked step can follow each other
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        if mask is None:
            self._dense_step(p, state, lr, beta1, beta2, eps, decay)
            return
        if "masked_steps" not in state:  # per-weight step counts, from the shared count so far
            state["masked_steps"] = torch.full(p.shape, float(state["step"]), dtype=torch.float64,
                                               device=p.device)
        self._masked_step(p, state, mask, lr, beta1, beta2, eps, decay)
        state["step"] += 1

    @staticmethod
    def _masked_step(p, state, mask, lr, beta1, beta2, eps, decay):
        """torch's update, computed for the whole tensor and kept only inside ``mask``; the operations
        are torch's own (lerp, addcmul, bias corrections in double precision), so all-ones masks give
        torch's result bit for bit."""
        steps = state["masked_steps"].add_(mask)
        grad = p.grad
        exp_avg = torch.where(mask, state["exp_avg"].lerp(grad, 1 - beta1), state["exp_avg"])
        exp_avg_sq = torch.where(mask, (state["exp_avg_sq"] * beta2).addcmul_(grad, grad, value=1 - beta2),
                                 state["exp_avg_sq"])
        state["exp_avg"].copy_(exp_avg)
        state["exp_avg_sq"].copy_(exp_avg_sq)
        counts = steps.clamp(min=1)  # a weight never inside a mask has no update to correct
        step_size = (lr / (1 - beta1 ** counts)).to(p.dtype)
        denom = (exp_avg_sq.sqrt() / ((1 - beta2 ** counts) ** 0.5).to(p.dtype)).add_(eps)
        candidate = p * (1 - lr * decay) - step_size * exp_avg / denom
        p.copy_(torch.where(mask, candidate, p))

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
