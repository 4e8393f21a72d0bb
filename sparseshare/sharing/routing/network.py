"""The routing network: ``model.routing.blocks`` copies of every encoder layer (plus PASS), a router that picks one
block per layer for each sentence, sentences grouped by block so that a block runs once per batch on its rows.
The method, the rewards and the routers are described in :mod:`sparseshare.sharing.routing`."""
from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...encoders import ENCODER_KINDS, encoder_kind
from ...errors import ConfigError
from ..base import SharingStrategy, layerwise_encoder, register
from ..hf_layers import RoutedLayer, layer_stack, plain_state, rows_by_choice
from .maps import ROUTING_FILE, WHOSE_ROUTES, final_map, task_block_information
from .routers import ROUTERS, RoutedPass
from .rl import all_reduce, process_rank, returns_to_go, sample_choices

WARMUP_ROUTES = ("per_task", "random")  # model.routing.warmup


def dispatch(run_layer, blocks: list, x: torch.Tensor, mask: torch.Tensor, choice: torch.Tensor,
             out_dim: int) -> torch.Tensor:
    """Run each sentence through its chosen block: ``run_layer(blocks[j], ...)`` (an encoder layer, or None for
    PASS) on the sub-batch of the sentences with ``choice == j``, with that sub-batch's mask; vectorised per block.
    BiLSTM sub-batches keep the batch's longest-first order (indices ascend), so packing needs no sort."""
    out = None
    for j, index in rows_by_choice(choice, len(blocks)):
        block = blocks[j]
        if index is None:  # the whole batch took this block: no gather/scatter
            return x if block is None else run_layer(block, x, mask)
        sub = x.index_select(0, index)
        y = sub if block is None else run_layer(block, sub, mask.index_select(0, index))
        out = (x.new_zeros(x.shape[0], x.shape[1], out_dim) if out is None else out).index_copy(0, index, y)
    return out


def routing_blocks_per_layer(blocks: int | list[int], depth: int | None, depth_key: str = "") -> list[int]:
    """``model.routing.blocks`` as one count per layer (``depth`` layers; None: only checks the counts)."""
    counts = [blocks] * (depth or 1) if isinstance(blocks, int) else list(blocks)
    if depth is not None and len(counts) != depth:
        where = f" ({depth_key})" if depth_key else ""
        raise ConfigError(f"config key 'model.routing.blocks' lists {len(counts)} layer(s) but the encoder has "
                          f"{depth}{where}; give one block count per layer, or one int for all")
    bad = [k for k in counts if k < 1]
    if bad or not counts:
        raise ConfigError(f"config key 'model.routing.blocks' must give every layer >= 1 block(s), got {blocks!r}")
    return counts


def mix(run_layer, blocks: list, x: torch.Tensor, mask: torch.Tensor, choice: torch.Tensor,
        probs: torch.Tensor) -> torch.Tensor:
    """``sum_j (onehot_j + p_j - sg(p_j)) y_j`` over every block's output ``y_j`` on the whole batch (``probs``: the
    (k,) choice probabilities ``p``): in value each sentence's chosen block's output, as :func:`dispatch` gives it;
    a block's weights, and the layers below, get gradients only through the sentences that chose it. Every
    block's output enters the ``p - sg(p)`` term, whose value is 0 and whose gradient reaches the route logits, in
    float32 (the logits' gradient is a small difference of the blocks' contributions) and with non-finite values
    zeroed (a block no sentence chose must not turn the output into NaN)."""
    out, probe = None, None
    for j, block in enumerate(blocks):
        chosen = choice == j
        if block is None:
            y = x
        elif bool(chosen.any()):
            y = run_layer(block, x, mask)
        else:
            with torch.no_grad():
                y = run_layer(block, x, mask)
        value = torch.where(chosen.view(-1, 1, 1), y, torch.zeros((), dtype=y.dtype, device=y.device))
        term = (probs[j] - probs[j].detach()).float() * torch.nan_to_num(y.detach().float(), nan=0.0, posinf=0.0,
                                                                          neginf=0.0)
        out = value if out is None else out + value
        probe = term if probe is None else probe + term
    return out + probe.to(out.dtype)


@dataclass
class RoutingOptions:
    """``model.routing`` (Rosenbaum et al. 2018)."""
    # function blocks (copies of the encoder layer) per routed layer, one int for every layer or a list with one entry
    # per layer; each >= 1
    blocks: int | list[int] = 2
    # also offer a PASS block (the identity) at every layer whose input and output widths agree
    pass_block: bool = False
    # wpl (one tabular agent per task, Weighted Policy Learner) | reinforce (one agent, an MLP per layer over the layer
    # input and the task, REINFORCE with a running-mean baseline) | dispatched (a REINFORCE dispatcher assigns each
    # sentence to one of `agents` tabular WPL agents) | gumbel (per-task route logits trained by backprop: categorical
    # draws, straight-through gradient of the chosen block's scale; bilstm and scratch only) | gumbel_mix (the same
    # draws; in training every block runs and the logits' gradient compares their outputs, the Gumbel-softmax
    # straight-through estimator of Jang et al. 2017 / Maziarz et al. 2019)
    router: str = "wpl"
    # router dispatched only: the number of WPL agents (0: one per task)
    agents: int = 0
    # weight rho of the collaboration reward rho x (historical probability of the chosen block); a negative rho pays
    # for the less-used blocks instead (a diversity bonus), 0 switches the reward off
    rho: float = 0.3
    # whose routes the historical probability counts: all_tasks (the paper's: every task's sentences, so a task is
    # paid for following the others) | per_task (the same task's sentences only)
    collaboration: str = "all_tasks"
    # the historical probability of the collaboration reward counts the routes of the last `history` training batches
    # (all tasks; the official code keeps the last 256 decisions); 0 counts every batch since the start of training
    history: int = 0
    # the router's step size (WPL policy step / REINFORCE SGD learning rate)
    lr: float = 0.05
    # routers gumbel / gumbel_mix: the learning rate of the route logits, which the optimiser trains with the model
    # (null: train.lr; the reference code of routing networks gives its router 0.3x the modules' rate)
    logit_lr: float | None = None
    # an exploration floor: in training, routes are drawn from (1 - e) x the router's probabilities + e x uniform
    # over the layer's choices, e falling linearly from `exploration` to 0 over the first `exploration_steps`
    # training steps (0: e stays; the steps count from the first, a warm-up's included); in [0, 1). The routers
    # learn from these routes as if their own probabilities had drawn them (no importance weights: REINFORCE's
    # update is then biased towards the uniform routes)
    exploration: float = 0.0
    exploration_steps: int = 0
    # training steps at the start in which the router does not learn and the routes are set: `warmup` per_task (task
    # t takes block t mod k at every layer, so that blocks specialise before the router chooses among them; evaluation
    # follows them too) | random (each sentence a uniformly drawn choice)
    warmup_steps: int = 0
    warmup: str = "per_task"


@register("routing")
class RoutingNetwork(SharingStrategy):
    Options = RoutingOptions
    files = (ROUTING_FILE,)
    citation = """@inproceedings{rosenbaum2018routing,
  title = {Routing Networks: Adaptive Selection of Non-linear Functions for Multi-Task Learning},
  author = {Rosenbaum, Clemens and Klinger, Tim and Riemer, Matthew},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year = {2018}
}"""

    @classmethod
    def flat_keys(cls):
        return {**super().flat_keys(), "routing_pass": "pass_block"}

    @classmethod
    def check_options(cls, config, tasks, depth, depth_key=""):
        if config.routing.router not in ROUTERS:
            raise ConfigError(f"config key 'model.routing.router': {config.routing.router!r} is not one of "
                              f"{list(ROUTERS)}")
        if config.routing.collaboration not in WHOSE_ROUTES:
            raise ConfigError(f"config key 'model.routing.collaboration': {config.routing.collaboration!r} is not one "
                              f"of {list(WHOSE_ROUTES)}")
        if config.routing.lr <= 0:
            raise ConfigError(f"config key 'model.routing.lr' must be > 0, got {config.routing.lr}")
        widths = encoder_kind(config.encoder).layer_widths(config)
        if config.routing.pass_block and widths is not None:
            inputs, output = widths
            if output not in inputs:
                raise ConfigError(f"config key 'model.routing.pass_block': no encoder layer can be skipped (PASS "
                                  f"needs a layer whose input width equals its output width {output}; the layers' "
                                  f"inputs are {inputs}): add a layer or set it to false")
        if config.routing.history < 0:
            raise ConfigError(f"config key 'model.routing.history' must be >= 0 (0 = every batch since the start), "
                              f"got {config.routing.history}")
        if config.routing.agents < 0:
            raise ConfigError(f"config key 'model.routing.agents' must be >= 0 (0 = one agent per task), "
                              f"got {config.routing.agents}")
        if config.routing.agents and config.routing.router != "dispatched":
            raise ConfigError(f"config key 'model.routing.agents' only applies to model.routing.router=dispatched "
                              f"(model.routing.router is {config.routing.router!r})")
        if not 0.0 <= config.routing.exploration < 1.0:
            raise ConfigError(f"config key 'model.routing.exploration' must be in [0, 1), "
                              f"got {config.routing.exploration}")
        for key in ("exploration_steps", "warmup_steps"):
            if getattr(config.routing, key) < 0:
                raise ConfigError(f"config key 'model.routing.{key}' must be >= 0, got {getattr(config.routing, key)}")
        if config.routing.warmup not in WARMUP_ROUTES:
            raise ConfigError(f"config key 'model.routing.warmup': {config.routing.warmup!r} is not one of "
                              f"{list(WARMUP_ROUTES)}")
        if not ROUTERS[config.routing.router].learns_from_returns:
            router = config.routing.router
            if encoder_kind(config.encoder).layer_access != "direct":
                direct = [name for name, kind in ENCODER_KINDS.items() if kind.layer_access == "direct"]
                raise ConfigError(f"config key 'model.routing.router' = {router!r} serves the {' and '.join(direct)} "
                                  f"encoders (it weights each block's output inside the layer loop), not "
                                  f"model.encoder = {config.encoder!r}")
            defaults = RoutingOptions()
            for key in ("rho", "collaboration", "history", "lr"):
                if getattr(config.routing, key) != getattr(defaults, key):
                    raise ConfigError(f"config key 'model.routing.{key}' sets the reward or the step of a router that "
                                      f"learns from rewards; model.routing.router = {router!r} learns by backprop at "
                                      f"the optimiser's learning rate (model.routing.logit_lr sets one of its own)")
        if config.routing.logit_lr is not None:
            if ROUTERS[config.routing.router].learns_from_returns:
                raise ConfigError(f"config key 'model.routing.logit_lr' is the learning rate of the route logits that "
                                  f"model.routing.router gumbel / gumbel_mix train by backprop; "
                                  f"{config.routing.router!r} learns from rewards at model.routing.lr")
            if not config.routing.logit_lr > 0:
                raise ConfigError(f"config key 'model.routing.logit_lr' must be > 0, got {config.routing.logit_lr}")
        if config.routing.exploration_steps and not config.routing.exploration:
            raise ConfigError("config key 'model.routing.exploration_steps' anneals model.routing.exploration, "
                              "which is 0")
        if config.routing.warmup != RoutingOptions().warmup and not config.routing.warmup_steps:
            raise ConfigError(f"config key 'model.routing.warmup' = {config.routing.warmup!r} sets the routes of a "
                              f"warm-up, but model.routing.warmup_steps is 0")
        routing_blocks_per_layer(config.routing.blocks, depth, depth_key)

    @classmethod
    def layer_copies(cls, config, depth):
        blocks = config.routing.blocks  # every block a copy of its layer
        total = blocks * depth if isinstance(blocks, int) else sum(blocks)
        return "model.routing.blocks", total, f"config key 'model.routing.blocks' ({blocks!r}) asks for {total} blocks"

    @classmethod
    def size_checks(cls, config, tasks):
        checks = []  # its window of recent routes and its agents' tables
        if config.routing.history:
            checks.append(("sharing.recent", r"^sharing\.recent$", 3, 0, "model.routing.history",
                           config.routing.history))
        if config.routing.router == "dispatched":
            agents = config.routing.agents or len(tasks)
            checks.append(("sharing.policy", r"^sharing\.policy$", 3, 0, "model.routing.agents", agents,
                           f"config key 'model.routing.agents' is {config.routing.agents} ({agents} agents)"))
        return checks

    def __init__(self, build_encoder, tasks, config):
        super().__init__(build_encoder, tasks, config)
        encoder = layerwise_encoder("routing", build_encoder, config)
        self.encoder = encoder
        self.stand_ins = encoder.layer_access == "stand_in"
        self.num_layers = encoder.num_layers
        depth_key = encoder.depth_key
        self.check_options(config, self.tasks, self.num_layers, depth_key)
        self.copies = routing_blocks_per_layer(config.routing.blocks, self.num_layers, depth_key)
        if self.stand_ins:  # the model's layers become RoutedLayers; its embeddings and forward pass stay
            self.in_dims = [encoder.output_dim] * self.num_layers
            self.has_pass = [bool(config.routing.pass_block)] * self.num_layers
            stack = layer_stack(encoder, "routing")
            for i, k in enumerate(self.copies):
                stack[i] = RoutedLayer(stack[i], k, self.has_pass[i])
            self.routed = list(stack)
        else:
            layers = list(encoder.layers)
            encoder.layers = nn.ModuleList()  # the blocks own the layers now: no unused originals
            self.in_dims = [encoder.layer_input_dim(layer) for layer in layers]
            self.has_pass = [bool(config.routing.pass_block) and d == encoder.output_dim for d in self.in_dims]
            # block 0 is the encoder's own layer, the others copies of its initialisation
            self.blocks = nn.ModuleList(nn.ModuleList([layer] + [copy.deepcopy(layer) for _ in range(k - 1)])
                                        for layer, k in zip(layers, self.copies))
        self.choices = [k + int(p) for k, p in zip(self.copies, self.has_pass)]
        self.rho, self.lr, self.logit_lr = config.routing.rho, config.routing.lr, config.routing.logit_lr
        self.per_task_reward = config.routing.collaboration == "per_task"
        self.exploration, self.exploration_steps = config.routing.exploration, config.routing.exploration_steps
        self.warmup_steps, self.warmup = config.routing.warmup_steps, config.routing.warmup
        T, L, K = len(self.tasks), self.num_layers, max(self.choices)
        self.agents = 0  # the dispatched router's agent count
        self.router = ROUTERS[config.routing.router](self, config)
        valid = torch.zeros(L, K)
        for i, k in enumerate(self.choices):
            valid[i, :k] = 1.0
        self.register_buffer("valid", valid, persistent=False)
        self.register_buffer("rng_state", torch.Generator().get_state())
        self.register_buffer("usage", torch.zeros(L, K, dtype=torch.float64))  # all tasks, all of training
        # the routes of the last model.routing.history batches (a ring, next slot recent_next), for the collaboration
        # reward; none: the reward reads `usage`
        self.history = config.routing.history
        self.register_buffer("recent", torch.zeros(self.history, L, K, dtype=torch.float64))
        self.register_buffer("recent_next", torch.zeros((), dtype=torch.long))
        # per task: its routes over all of training, and the task of each slot of the ring (-1: empty), for
        # model.routing.collaboration=per_task
        self.register_buffer("task_usage", torch.zeros(T, L, K, dtype=torch.float64))
        # (not saved without a ring: an empty tensor shares its null storage with `recent`, and a checkpoint keeps one)
        self.register_buffer("recent_task", torch.full((self.history,), -1, dtype=torch.long),
                             persistent=self.history > 0)
        self.register_buffer("epoch_counts", torch.zeros(T, L, K, dtype=torch.float64))
        self.register_buffer("map_history", torch.zeros(0, T, L, K))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # training steps observed
        self.router.register()  # its policies, values, baselines, MLPs: buffers of this network
        self._pending: RoutedPass | None = None  # the last training pass's routes, until observe_losses scores them
        self.last_routes: torch.Tensor | None = None  # (L, B) choices of the last forward pass, for inspection
        self.last_agents: torch.Tensor | None = None  # (B,) dispatched agents of the last forward pass
        self.initialize(0)

    @property
    def output_dim(self) -> int:
        return self.encoder.output_dim

    def choice_names(self, layer: int) -> list[str]:
        return [f"block {j}" for j in range(self.copies[layer])] + (["PASS"] if self.has_pass[layer] else [])

    # -- state -------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def initialize(self, seed: int) -> None:
        """Uniform policies, empty statistics, REINFORCE weights drawn from a generator seeded with ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        self.usage.zero_()
        self.recent.zero_()
        self.recent_next.zero_()
        self.task_usage.zero_()
        self.recent_task.fill_(-1)
        self.epoch_counts.zero_()
        self.steps.zero_()
        self.map_history = self.map_history.new_zeros(0, *self.map_history.shape[1:])
        self.router.reset(generator)
        self.rng_state.copy_(generator.get_state())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the map history grows by one entry per epoch: take the saved length
        key = prefix + "map_history"
        # before the first epoch end it is empty, and a checkpoint then holds none (safetensors files hold no empty
        # tensor): no epoch to take
        if key not in state_dict and self.map_history.shape[0] == 0:
            state_dict[key] = self.map_history.new_zeros(0, *self.map_history.shape[1:])
        if key in state_dict and state_dict[key].shape != self.map_history.shape:
            self.map_history = self.map_history.new_zeros(state_dict[key].shape)
        if not self.history:  # models saved before model.routing.history existed have no (empty) window to load
            for name in ("recent", "recent_next"):
                state_dict.setdefault(prefix + name, getattr(self, name))
        # models saved before model.routing.collaboration existed trained with all_tasks and kept no per-task counts
        for name in ("task_usage", "recent_task") if self.history else ("task_usage",):
            state_dict.setdefault(prefix + name, getattr(self, name))
        # ... nor a step count (before model.routing.exploration / warmup_steps, nothing read it)
        state_dict.setdefault(prefix + "steps", self.steps)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def historical_probs(self, task: int | None = None) -> torch.Tensor:
        """(L, K): the share of the routed training sentences (all tasks, or task ``task``'s only; of the last
        ``model.routing.history`` batches, or of all of training) that took each choice; uniform over the valid choices
        before the first step."""
        if task is None:
            counts = self.recent.sum(0) if self.history else self.usage
        else:
            counts = self.recent[self.recent_task == task].sum(0) if self.history else self.task_usage[task]
        total = counts.sum(-1, keepdim=True)
        uniform = (self.valid / self.valid.sum(-1, keepdim=True)).to(counts.dtype)
        return torch.where(total > 0, counts / total.clamp(min=1), uniform)

    # -- routing -----------------------------------------------------------------------------------------------------
    @staticmethod
    def _pool(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, H): the mean of ``x`` (B, T, H) over the positions ``mask`` marks."""
        m = mask.unsqueeze(-1).to(x.dtype)
        return (x.detach() * m).sum(1) / m.sum(1).clamp(min=1)

    def router_input(self, pooled: torch.Tensor, t: int) -> torch.Tensor:
        """A router's input: the pooled layer input, standardised, and the task one-hot."""
        pooled = F.layer_norm(pooled.float(), pooled.shape[-1:])
        onehot = F.one_hot(torch.full((pooled.shape[0],), t, device=pooled.device), len(self.tasks)).float()
        return torch.cat([pooled, onehot], dim=-1)

    def _reads_input(self, layer: int) -> bool:
        return self.router.reads_input(layer)

    def _uniforms(self, batch_size: int) -> torch.Tensor:
        """(L, B) uniforms for this training pass (dispatched: (L + 1, B), the last row for the dispatcher): one draw
        from the persistent generator (the pass's seed, the same on every process), then this process's own
        stream."""
        generator = torch.Generator()
        generator.set_state(self.rng_state.cpu())
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        self.rng_state.copy_(generator.get_state())
        stream = torch.Generator().manual_seed(seed + process_rank())
        return torch.rand(self.num_layers + self.router.extra_draws, batch_size, generator=stream)

    @torch.no_grad()
    def _choose(self, layer: int, t: int, pooled: torch.Tensor | None, uniforms: torch.Tensor | None,
                batch_size: int, record: dict) -> torch.Tensor:
        """(B,) the choice at ``layer`` for each sentence (``pooled``: the sentences' pooled layer input, where
        :meth:`_reads_input`); sampled when ``uniforms`` are given, else greedy. Kept in ``record``."""
        def pick(probs, row):
            return sample_choices(probs, uniforms[row]) if uniforms is not None else probs.argmax(-1)

        k = self.choices[layer]
        if record["set_routes"]:  # the router is not asked
            record["inputs"].append(None)
            if self.warmup == "per_task":
                choice = torch.full((batch_size,), t % self.copies[layer], dtype=torch.long, device=self.valid.device)
            else:
                choice = pick(uniforms.new_full((batch_size, k), 1.0 / k), layer)
            record["choices"].append(choice)
            return choice
        probs = self.router.probs(layer, t, pooled, batch_size, record, pick)
        e = record["exploration"] if uniforms is not None else 0.0
        if e > 0:
            probs = (1.0 - e) * probs + e / k
        choice = pick(probs, layer)
        record["choices"].append(choice)
        return choice

    def learning_rates(self):
        if self.logit_lr is None:  # (only the backprop routers' logits may have one: check_options)
            return {}
        return {self.route_logits: self.logit_lr}

    def warming_up(self) -> bool:
        """Whether the routes are still set (``model.routing.warmup_steps``) and the router does not learn."""
        return int(self.steps) < self.warmup_steps

    def follows_set_routes(self) -> bool:
        """Whether a pass in the current mode takes the warm-up's set routes. In training: throughout the warm-up.
        In evaluation: throughout a per-task warm-up, since the router has not learnt yet and its greedy routes
        would send each task through blocks trained by the others; a random warm-up has no route to follow, so
        evaluation asks the (untrained) router."""
        return self.warming_up() if self.training else self.evaluation_follows_set_routes()

    def evaluation_follows_set_routes(self) -> bool:
        """Whether evaluation (and export, ``routing.json``, the model card) takes the set routes: during a per-task
        warm-up."""
        return self.warmup == "per_task" and self.warming_up()

    def greedy_route(self, t: int) -> list[int] | None:
        """Task ``t``'s route in evaluation where it is one block per layer whatever the sentence (None: the router
        chooses per sentence)."""
        if self.evaluation_follows_set_routes():
            return [t % k for k in self.copies]
        return self.router.greedy_route(t)

    def exploration_rate(self) -> float:
        """The share of a training route drawn uniformly: ``model.routing.exploration``, falling linearly to 0 over the
        first ``model.routing.exploration_steps`` steps (0 steps: constant)."""
        if not self.exploration_steps:
            return self.exploration
        return self.exploration * max(0.0, 1.0 - int(self.steps) / self.exploration_steps)

    def _routed(self, t: int, record: dict, words: torch.Tensor) -> None:
        """Keep the routes of a forward pass: for inspection, and for the next observe_losses in training."""
        self.last_routes = torch.stack(record["choices"])
        self.last_agents = record.get("agents")
        if self.training:
            self._pending = RoutedPass(t, self.last_routes, words, record["inputs"], record.get("agents"),
                                       record.get("dispatch_in"))

    def encode(self, x: torch.Tensor, batch, task: str) -> torch.Tensor:
        """Top-layer features of ``task`` from the shared embeddings ``x``, each sentence along its route."""
        t, mask, batch_size = self.tasks.index(task), batch.mask, batch.mask.shape[0]
        uniforms = self._uniforms(batch_size).to(mask.device) if self.training else None
        words = mask.sum(1).clamp(min=1).to(torch.float64)
        # the step count read once per pass (a buffer: on a GPU each read waits for the device), not at every layer
        warming_up = self.training and self.warming_up()
        record = {"choices": [], "inputs": [], "set_routes": self.follows_set_routes(),
                  "exploration": self.exploration_rate() if self.training else 0.0}
        if self.stand_ins:
            x = self._encode_hf(batch, t, uniforms, record)
        else:
            for layer in range(self.num_layers):
                pooled = self._pool(x, mask) if self._reads_input(layer) else None
                choice = self._choose(layer, t, pooled, uniforms, batch_size, record)
                blocks = list(self.blocks[layer]) + ([None] if self.has_pass[layer] else [])
                # the loss reaches the route logits (not during the warm-up: the routes were set)
                learns = self.training and not self.router.learns_from_returns and not warming_up
                if learns and self.router.mixes_blocks:
                    x = mix(self.encoder.run_layer, blocks, x, mask, choice, self.router.mix_probs(layer, t))
                    continue
                x = dispatch(self.encoder.run_layer, blocks, x, mask, choice, self.output_dim)
                if learns:
                    x = x * self.router.straight_through(layer, t, choice).to(x.dtype).view(-1, 1, 1)
        self._routed(t, record, words)
        return x if self.stand_ins else self.encoder.finish(x, mask)

    def _encode_hf(self, batch, t: int, uniforms, record: dict) -> torch.Tensor:
        """The Transformer runs as a whole; each RoutedLayer asks for its sentences' choices with its input. A
        sentence longer than the model input spans several rows, which all follow the sentence's route; a router
        that reads the input (REINFORCE, the dispatcher) reads the mean of the sentence's subword states
        (special tokens included)."""
        rows = self.encoder.subword_rows(batch)
        batch_size = batch.mask.shape[0]

        def router(layer):
            def route(hidden: torch.Tensor) -> torch.Tensor:
                pooled = None
                if self._reads_input(layer):
                    m = rows.attention_mask.unsqueeze(-1).to(hidden.dtype)
                    sums = hidden.new_zeros(batch_size, hidden.shape[-1]).index_add(
                        0, rows.row_sentence, (hidden.detach() * m).sum(1))
                    counts = hidden.new_zeros(batch_size, 1).index_add(0, rows.row_sentence, m.sum(1))
                    pooled = sums / counts.clamp(min=1)
                return self._choose(layer, t, pooled, uniforms, batch_size, record)[rows.row_sentence]
            return route

        for layer, routed in enumerate(self.routed):
            routed.route = router(layer)
        try:
            return self.encoder.top_features(batch, rows=rows)[0]
        finally:
            for routed in self.routed:
                routed.route = None

    def task_encoder_state(self, task):
        """WPL on a Hugging Face Transformer: the greedy route of a task is one block per layer whatever the
        sentence, so the task runs through one plain model (its blocks). The other routers choose per sentence."""
        greedy = self.greedy_route(self.tasks.index(task))
        if greedy is None:
            raise NotImplementedError(f"routing with the {self.router.name!r} router chooses each sentence's route "
                                      f"from the sentence, so task {task!r} has no single encoder to export")
        if not self.stand_ins:
            return super().task_encoder_state(task)
        passes = [layer + 1 for layer, j in enumerate(greedy) if j == self.copies[layer]]
        if passes:
            raise NotImplementedError(f"task {task!r}'s greedy route skips layer(s) {passes} (PASS): the exported "
                                      f"model would need fewer layers than the Transformer it is built from")
        return plain_state(self.encoder, {routed: f"blocks.{j}" for routed, j in zip(self.routed, greedy)})

    def forward(self, batch, task):
        return self.encode(None if self.stand_ins else self.encoder.embed(batch), batch, task)

    def features_for_tasks(self, batch, tasks):
        x = None if self.stand_ins else self.encoder.embed(batch)  # embeddings once per batch; routes per task
        return {task: self.encode(x, batch, task) for task in tasks}

    # -- learning the router -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def observe_losses(self, task: str, losses: torch.Tensor) -> None:
        """Score the routes of the last training forward pass with its per-sentence losses and update the router.
        Empty ``losses``: this process had no sentences at this step (it still joins the all-reduce)."""
        if self._pending is None:
            raise RuntimeError("routing: observe_losses() without a training forward pass before it")
        p, self._pending = self._pending, None
        t, routes, words = p.task, p.routes, p.words
        if self.tasks[t] != task:
            raise RuntimeError(f"routing: losses of task {task!r} for routes of task {self.tasks[t]!r}")
        L, K = self.usage.shape
        device = self.usage.device
        counts = torch.zeros(L, K, dtype=torch.float64, device=device)
        sums = torch.zeros(L, K, dtype=torch.float64, device=device)
        returns = None
        if losses.numel():
            final = -losses.to(device=device, dtype=torch.float64) / words.to(device)
            shares = self.historical_probs(t if self.per_task_reward else None)
            immediate = self.rho * shares.gather(1, routes.to(device))
            returns = returns_to_go(final, immediate)
            onehot = F.one_hot(routes.to(device), K).to(torch.float64)  # (L, B, K)
            counts = onehot.sum(1)
            sums = (onehot * returns.unsqueeze(-1)).sum(1)
        if self.warming_up():  # the routes were set: nothing to learn; the counts still go to the maps
            counts = all_reduce(counts)
        else:
            counts = self.router.step(p, returns, sums, counts)
        self.steps += 1
        self.usage += counts
        self.task_usage[t] += counts
        self.epoch_counts[t] += counts
        if self.history and counts.sum() > 0:  # counts are summed over processes: every process moves the ring alike
            self.recent[int(self.recent_next) % self.history] = counts
            self.recent_task[int(self.recent_next) % self.history] = t
            self.recent_next += 1

    # -- the routing map ---------------------------------------------------------------------------------------------
    def epoch_map(self) -> torch.Tensor:
        """(T, L, K): the share of each task's training sentences routed through each choice since the last epoch
        end (zeros for a task not trained since)."""
        total = self.epoch_counts.sum(-1, keepdim=True)
        return (self.epoch_counts / total.clamp(min=1)).float()

    @torch.no_grad()
    def log_values(self) -> dict[str, float]:
        """Close the epoch: append its routing map to ``map_history``; log the routes' mean normalised entropy."""
        current = self.epoch_map()
        self.map_history = torch.cat([self.map_history, current.unsqueeze(0).to(self.map_history)])
        self.epoch_counts.zero_()
        entropies = []
        for t in range(len(self.tasks)):
            for layer, k in enumerate(self.choices):
                p = current[t, layer, :k]
                if k > 1 and p.sum() > 0:
                    entropies.append(float(-(p * p.clamp(min=1e-12).log()).sum()) / math.log(k))
        values = {"routing/entropy": sum(entropies) / len(entropies)} if entropies else {}
        # does the task decide the block? 0 bits: every task takes the same routes (hard sharing with unused blocks)
        epoch_shares = {task: [row[:k] for row, k in zip(current[t].tolist(), self.choices)]
                        for t, task in enumerate(self.tasks)}
        for layer, bits in enumerate(task_block_information(epoch_shares)):
            values[f"routing/information_layer{layer + 1}"] = bits
        return values

    def routing_map(self) -> dict:
        """Everything ``routing.json`` holds (JSON-ready)."""
        def table(values):  # (L, K) -> per layer, the valid choices only
            return [[round(float(v), 6) for v in row[:k]] for row, k in zip(values, self.choices)]

        result = {
            "router": self.router.name, "tasks": list(self.tasks), "layers": self.num_layers,
            "choices": [self.choice_names(layer) for layer in range(self.num_layers)],
            "rho": self.rho, "collaboration": "per_task" if self.per_task_reward else "all_tasks",
            "epochs": [{task: table(epoch[t]) for t, task in enumerate(self.tasks)} for epoch in self.map_history],
            "usage": table(self.historical_probs()),
        }
        # per epoch, per layer: I(task; block) in bits, the tasks equally likely (maps.task_block_information)
        result["information_bits"] = [[round(b, 6) for b in task_block_information(epoch)] for epoch in result["epochs"]]
        result.update(self.router.map_fields(table))
        if self.evaluation_follows_set_routes():
            result["set_routes"] = {task: self.greedy_route(t) for t, task in enumerate(self.tasks)}
        return result

    def save_files(self, directory: Path) -> None:
        text = json.dumps(self.routing_map(), indent=1)
        # one line per innermost list (a layer's shares, a layer's choice names)
        text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
        (Path(directory) / ROUTING_FILE).write_text(text + "\n", encoding="utf-8")

    def card_section(self, model) -> list[str]:
        routing = self.routing_map()
        blocks = ", ".join(f"{k}{' + PASS' if p else ''}" for k, p in zip(self.copies, self.has_pass))
        lines = ["## Routing", "",
                 "Every encoder layer offers several blocks (copies of the layer; PASS is the identity) and a router "
                 "picks one per layer for each sentence.", "",
                 f"- Router: `{self.router.name}` ({self.router.description})" + (
                     f"; collaboration reward rho {self.rho} over {WHOSE_ROUTES[routing['collaboration']]} routes."
                     if self.router.learns_from_returns else "."),
                 f"- Blocks per layer: {blocks}."]
        if self.warmup_steps:
            lines.append(f"- The first {self.warmup_steps} training steps took set routes ("
                         + ("task t on block t mod k" if self.warmup == "per_task" else "uniformly drawn")
                         + ") while the router did not learn.")
        if self.exploration:
            lines.append(f"- Exploration floor: a share {self.exploration} of each training route drawn uniformly"
                         + (f", falling to 0 over {self.exploration_steps} steps." if self.exploration_steps else "."))
        if routing["information_bits"] and routing["information_bits"][-1]:
            lines.append("- How much the task decides the block, I(task; block) in the last epoch (0 bits: every task "
                         "takes the same routes): " + ", ".join(
                             f"layer {n + 1} {b:.3f} bits" for n, b in enumerate(routing["information_bits"][-1])) + ".")
        if routing.get("dispatch") and any(any(shares) for shares in routing["dispatch"].values()):
            shares = "; ".join(f"{task} " + ", ".join(f"{p:.3f}" for p in task_shares)
                               for task, task_shares in routing["dispatch"].items())
            lines.append(f"- Dispatch (share of each task's training sentences per agent): {shares}.")
        try:
            table, what = final_map(routing)
        except ValueError:  # REINFORCE before any epoch: no routes to show
            lines += ["", "No routes were recorded yet (the model was not trained)."]
        else:
            layers, greedy = range(self.num_layers), routing.get("greedy")
            title = f"Most-used block per task and layer ({what})" if routing["epochs"] else \
                "Most likely block per task and layer (no epoch recorded yet: the policy)"
            lines += ["", f"{title}:", "",
                      "| task | " + " | ".join(f"layer {n + 1}" for n in layers) + " |",
                      "|---" * (len(layers) + 1) + "|"]
            for task in self.tasks:
                cells = []
                for n in layers:
                    top = max(range(len(table[task][n])), key=table[task][n].__getitem__)
                    cell = f"{routing['choices'][n][top]} ({table[task][n][top]:.3f})"
                    if greedy and greedy[task][n] != top:
                        cell += f" / greedy {routing['choices'][n][greedy[task][n]]}"
                    cells.append(cell)
                lines.append(f"| {task} | " + " | ".join(cells) + " |")
            lines += ["", "The per-task warm-up's set routes still hold: at inference task t takes block t mod k at "
                          "every layer." if routing.get("set_routes") else
                          "At inference each task takes its greedy route (the policy's argmax; shown where it is not "
                          "the most-used block)." if greedy else
                          "At inference each sentence takes the router's argmax for its input."]
        held = "every epoch's routing map and the historical block usage" + self.router.holds
        lines += ["", f"`{ROUTING_FILE}` holds {held}; draw it with "
                      f"`sparseshare routing show <repo id or folder> --png routing.png`."]
        return lines
