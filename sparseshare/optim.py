"""SGD and AdamW whose step touches only the weights inside the active task's mask.

Masking the forward pass (``weight * mask``) makes the gradient outside the mask exactly zero, but a
stock optimizer still moves those weights: SGD's momentum buffer and Adam's moments keep pushing them
with the history of *other* tasks (the official sparse-sharing code has this flaw), and decoupled
weight decay shrinks them. Here a masked parameter is updated *lazily*: on a step of task t, the
weights outside mask_t keep their value and their optimizer state (momentum, moments) untouched, as if
the step had not happened for them. Inside the mask the update is torch's single-tensor formula, operation
for operation. Parameters without a mask (embeddings, biases, heads) are updated by torch's own step
(``torch.optim.SGD`` / ``AdamW``, fused if asked for), and so is a parameter whose mask keeps every weight
while that is exactly torch's update (always for SGD; for AdamW until a partial mask has given the weights
step counts of their own), e.g. in the mask search's dense round.

Before each step the training loop calls :meth:`set_masks` with the active task's ``{parameter: mask}``.
With all-ones masks both optimizers reproduce torch's single-tensor optimizers bit for bit (tested); against
torch's fused AdamW the results agree up to float rounding.
"""
from __future__ import annotations

import math
from collections import defaultdict
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
        # A fused optimiser tells torch's GradScaler that it skips overflowing steps itself (found_inf); the
        # masked updates do not read found_inf, so the scaler must unscale and skip for us, as for any optimiser.
        self._step_supports_amp_scaling = False

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
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        masks = self._masks
        masked = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and id(p) in masks:
                    inside = self._inside(masks[id(p)])
                    # a mask that keeps every weight is no mask, unless the lazy state already differs per weight
                    if len(inside) < p.numel() or not self._same_as_unmasked(p):
                        masked.append((group, p, inside))
        # torch's own step (fused where the optimiser was built so) updates every other parameter; the masked
        # ones are hidden from it by taking their gradients away for its duration
        grads = [p.grad for _, p, _ in masked]
        for _, p, _ in masked:
            p.grad = None
        try:
            super().step()
        finally:
            for (_, p, _), grad in zip(masked, grads):
                p.grad = grad
        for group, p, inside in masked:
            self._update(group, p, inside)
        return loss

    def _same_as_unmasked(self, p: torch.Tensor) -> bool:
        """Whether an all-ones mask's update of ``p`` is exactly torch's unmasked update."""
        return True

    def _update(self, group: dict, p: torch.Tensor, inside: torch.Tensor) -> None:
        """One masked parameter's update: only its flat indices ``inside`` change."""
        raise NotImplementedError


class MaskedSGD(_Masked, torch.optim.SGD):
    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=False)

    def _update(self, group, p, inside):
        lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
        grad = p.grad if not decay else p.grad.add(p, alpha=decay)
        update = grad.reshape(-1).index_select(0, inside)
        if momentum:
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:  # torch starts the buffer at the first gradient; weights outside the mask at 0
                buf = state["momentum_buffer"] = torch.zeros_like(p)
            else:
                update = buf.view(-1).index_select(0, inside).mul_(momentum).add_(update)
            buf.view(-1).scatter_(0, inside, update)
        flat = p.view(-1)  # a view, never a copy: the writes below must reach p
        flat.scatter_(0, inside, flat.index_select(0, inside).add_(update, alpha=-lr))


class MaskedAdamW(_Masked, torch.optim.AdamW):
    """AdamW with lazy per-weight state: each weight counts its own steps for the bias correction, so a
    weight that only one task uses is corrected as if that task's steps were the only ones."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8,
                 fused: bool | None = None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)
        self._correction_tables: dict[tuple, dict] = {}

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's ``load_state_dict`` casts every tensor of a parameter's state to that parameter's dtype. For
        the per-weight step counts that is lossy in half precision (bf16 counts exactly only to 256), so they
        are set aside before and put back as int32 after (a checkpoint from before the counts were int32 holds
        them as floats, exact in fp32)."""
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        counts = {position: state_dict["state"][i]["masked_steps"] for position, i in enumerate(saved_ids)
                  if "masked_steps" in state_dict["state"].get(i, {})}
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for position, steps in counts.items():
            p = params[position]
            self.state[p]["masked_steps"] = steps.to(device=p.device, dtype=torch.int32, copy=True)  # not shared

    def _same_as_unmasked(self, p):
        # once a weight has skipped a step, its own step count (bias correction) differs from the shared one
        return "masked_steps" not in self.state[p]

    def _update(self, group, p, inside):
        lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        state = self.state[p]
        if not state:
            # torch's own keys and step tensor, so that a masked and an unmasked step can follow each other
            state["step"] = (torch.zeros((), dtype=torch.float32, device=p.device) if group["fused"]
                             else torch.tensor(0.0))
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        if "masked_steps" not in state:  # per-weight step counts, from the shared count so far
            state["masked_steps"] = torch.full(p.shape, int(state["step"]), dtype=torch.int32, device=p.device)
        self._masked_step(p, state, inside, lr, beta1, beta2, eps, decay)
        state["step"] += 1

    def _masked_step(self, p, state, inside, lr, beta1, beta2, eps, decay):
        """torch.optim.AdamW's single-tensor update of the weights ``inside``, each with the bias corrections
        of its own step count; the other weights and their moments are left as they are. Written back with
        ``scatter_``: on CPU ~6x faster than ``index_copy_``, and the same for unique indices."""
        if not len(inside):
            return
        steps = state["masked_steps"].view(-1)
        counts = steps.index_select(0, inside).add_(1)
        steps.scatter_(0, inside, counts)
        # a weight's count never exceeds the shared count of this step: each step adds at most 1 to both
        most = int(state["step"]) + 1
        step_sizes, corrections2_sqrt = self._corrections(lr, beta1, beta2, most, p.dtype, p.device)
        grad = p.grad.reshape(-1).index_select(0, inside)
        exp_avg = state["exp_avg"].view(-1).index_select(0, inside).lerp_(grad, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"].view(-1).index_select(0, inside).mul_(beta2)
        exp_avg_sq.addcmul_(grad, grad, value=1 - beta2)
        state["exp_avg"].view(-1).scatter_(0, inside, exp_avg)
        state["exp_avg_sq"].view(-1).scatter_(0, inside, exp_avg_sq)
        # torch: denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps); the stored moments are written,
        # so their gathered copies can be reused in place
        denom = exp_avg_sq.sqrt_().div_(corrections2_sqrt.index_select(0, counts)).add_(eps)
        # torch: param.addcdiv_(exp_avg, denom, value=-step_size), i.e. param - step_size * exp_avg / denom
        update = exp_avg.mul_(step_sizes.index_select(0, counts)).div_(denom)
        flat = p.view(-1)  # a view, never a copy: the writes below must reach p
        weights = flat.index_select(0, inside)
        if decay:
            weights.mul_(1 - lr * decay)
        flat.scatter_(0, inside, weights.sub_(update))

    def _corrections(self, lr: float, beta1: float, beta2: float, most: int, dtype, device
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """For step counts k = 0 .. at least ``most``, in ``dtype``: torch's ``step_size = lr / (1 - beta1 ** k)``
        and ``sqrt(1 - beta2 ** k)``, each computed in double precision with Python floats exactly as torch's
        AdamW computes them for its step count ``k``, then rounded once, as torch applies them. A step looks
        each weight's value up by its own count."""
        tables = self._correction_tables
        key = (beta1, beta2, dtype, str(device))
        table = tables.get(key)
        if table is None or len(table["corrections2_sqrt"]) <= most:
            size = max(2 * most, 1024)
            table = tables[key] = {
                "corrections1": torch.tensor([1 - beta1 ** k for k in range(size)], dtype=torch.float64),
                "corrections2_sqrt": torch.tensor([math.sqrt(1 - beta2 ** k) for k in range(size)],
                                                  dtype=torch.float64).to(device=device, dtype=dtype),
                "lr": None}
        lr = float(lr)  # a tensor lr is changed in place by schedulers: compare values, not the object
        if table["lr"] != lr:  # a new lr (the schedule): the step sizes once per step, not once per weight
            table["lr"], table["step_sizes"] = lr, (lr / table["corrections1"]).to(device=device, dtype=dtype)
        return table["step_sizes"], table["corrections2_sqrt"]


class StepMasks:
    """The ``{parameter: mask}`` of a step that trains several tasks at once (the joint schedule): a weight moves if
    any of the tasks' masks keeps it, and a parameter that one of the tasks moves whole (it has no mask for it) moves
    whole. A step of one task gets that task's masks. The union is built again only when one of the tasks' masks
    has changed (Maximum Roaming moves its masks in place), so that the masked optimisers' caches keep working."""

    def __init__(self, parameter_masks):
        self.parameter_masks = parameter_masks  # task -> {parameter: mask}
        self._unions: dict[tuple[str, ...], tuple] = {}

    def __call__(self, tasks: list[str]) -> dict[torch.Tensor, torch.Tensor]:
        per_task = [self.parameter_masks(task) for task in tasks]
        if len(per_task) == 1:
            return per_task[0]
        signature = [(id(p), id(m), m._version) for masks in per_task for p, m in masks.items()]
        cached = self._unions.get(tuple(tasks))
        if cached is not None and cached[0] == signature:
            return cached[2]
        union = {}
        for parameter in per_task[0]:
            if all(parameter in masks for masks in per_task):
                kept = per_task[0][parameter].clone()
                for masks in per_task[1:]:
                    kept |= masks[parameter].to(kept.device)
                union[parameter] = kept
        self._unions[tuple(tasks)] = (signature, per_task, union)  # per_task: keeps the ids of the signature valid
        return union


class PerTaskState:
    """One optimiser state (momentum buffers, Adam's moments and step counts) per task, as if each task had its
    own optimiser over the parameters it uses (HMTL keeps one optimiser per task), with one set of param groups,
    so that one LR schedule drives them all.

    With a state shared by the tasks, Adam's moments on a shared weight mix every task's gradients: in
    round-robin training the first moment at a step of task t is partly the other tasks' recent gradients, and
    the second moment grows with whichever task has the largest gradients. With a state per task, each task's
    step on a shared weight is normalised by that task's own gradient history, as in single-task training. (On
    CoNLL-2003 with the BiLSTM the shared state did not starve NER: benchmarks/task_gradients.py and
    benchmarks/RESULTS.md.)

    Before each step the training loop calls :meth:`set_task`. A parameter no task has stepped has no state."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._task_states: dict[str, dict] = {}
        self._task: str | None = None

    def set_task(self, task: str) -> None:
        if task != self._task:
            self._task = task
            self.state = self._task_states.setdefault(task, defaultdict(dict))

    def step(self, closure=None):
        if self._task is None:
            raise RuntimeError("per-task optimizer state: call set_task(task) before step()")
        return super().step(closure)

    def state_dict(self) -> dict:
        """torch's state dict with an empty ``state`` and every task's packed state under ``task_states``."""
        current = self.state
        packed = {}
        try:
            for task, state in self._task_states.items():
                self.state = state
                packed[task] = super().state_dict()["state"]
        finally:
            self.state = current
        return {**super().state_dict(), "state": {}, "task_states": packed, "task": self._task}

    def load_state_dict(self, state_dict: dict) -> None:
        if "task_states" not in state_dict:
            raise ValueError("this optimizer state was saved with train.optimizer_state=shared (one state for all "
                             "tasks); resume with the same setting")
        self._task_states = {}
        for task, packed in state_dict["task_states"].items():
            super().load_state_dict({"state": packed, "param_groups": state_dict["param_groups"]})
            self._task_states[task] = self.state
        self._task = None
        self.state = defaultdict(dict)
        if state_dict.get("task") is not None:
            self.set_task(state_dict["task"])


class PerTaskSGD(PerTaskState, torch.optim.SGD):
    pass


class PerTaskAdamW(PerTaskState, torch.optim.AdamW):
    pass


class PerTaskMaskedSGD(PerTaskState, MaskedSGD):
    pass


class PerTaskMaskedAdamW(PerTaskState, MaskedAdamW):
    pass


# -- building the optimiser and schedule a config asks for -----------------------------------------
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def build_optimizer(config: Config, model: MultiTaskTagger, device_type: str = "cpu") -> torch.optim.Optimizer:
    """One parameter group, split only as the config asks: heads at ``train.head_lr``, embedding tables (words,
    characters; a Transformer's embeddings) at ``train.embedding_lr``, the sharing strategy's parameters with a rate
    of their own (:meth:`~sparseshare.sharing.base.SharingStrategy.learning_rates`) at that rate, and with weight decay
    the usual exemptions (biases, LayerNorm weights, CRF transition scores) as in transformers' Trainer.

    AdamW runs torch's fused kernel on the devices that have one (``device_type``: where training will run):
    on CPU one step of the BiLSTM model (3.3 M embedding weights) takes about 1/7 of the single-tensor
    step's time, with the same update up to float rounding."""
    from transformers.trainer_pt_utils import get_parameter_names

    t = config.train
    heads = {id(p) for p in model.heads.parameters()}
    tables = {id(m.weight) for m in model.sharing.modules() if isinstance(m, torch.nn.Embedding)}
    decayed = set()
    if t.weight_decay:
        names = set(get_parameter_names(model, [torch.nn.LayerNorm], ["bias", "crf."]))
        decayed = {id(p) for n, p in model.named_parameters() if n in names}
    # groups by role, not by rate (a checkpoint's groups must match whatever the rates are)
    rates = {"head": t.head_lr, "embedding": t.embedding_lr, "other": t.lr}
    own = {id(p): lr for p, lr in model.sharing.learning_rates().items()}
    groups: dict[tuple, list] = {}
    for p in model.parameters():
        if p.requires_grad:
            role = (f"strategy {own[id(p)]}" if id(p) in own else
                    "head" if id(p) in heads and t.head_lr is not None else
                    "embedding" if id(p) in tables and t.embedding_lr is not None else "other")
            if id(p) in own:
                rates[role] = own[id(p)]
            groups.setdefault((role, id(p) in decayed or not t.weight_decay), []).append(p)
    param_groups = [{"params": params, "lr": rates[role], "weight_decay": t.weight_decay if decays else 0.0}
                    for (role, decays), params in groups.items()]
    fused = device_type in FUSED_ADAMW_DEVICES or None
    per_task = t.optimizer_state == "per_task"
    masked = model.sharing.masked_optimizer  # steps must leave weights outside the active mask alone
    if t.optimizer == "sgd":
        sgd = {(False, False): torch.optim.SGD, (False, True): MaskedSGD,
               (True, False): PerTaskSGD, (True, True): PerTaskMaskedSGD}[per_task, masked]
        return sgd(param_groups, lr=t.lr, momentum=t.momentum)
    adamw = {(False, False): torch.optim.AdamW, (False, True): MaskedAdamW,
             (True, False): PerTaskAdamW, (True, True): PerTaskMaskedAdamW}[per_task, masked]
    return adamw(param_groups, lr=t.lr, fused=fused)


def build_scheduler(config: Config, optimizer, steps_per_epoch: int):
    t = config.train
    if t.lr_schedule == "inverse_time":  # Ma & Hovy (2016): lr / (1 + decay * epoch)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 1.0 / (1.0 + t.lr_decay * (step // steps_per_epoch)))
    return get_scheduler(t.lr_schedule, optimizer, num_warmup_steps=t.warmup_steps,
                         num_training_steps=t.epochs * steps_per_epoch)
