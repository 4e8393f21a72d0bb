"""Routing networks (Rosenbaum, Klinger & Riemer, "Routing Networks: Adaptive Selection of Non-linear Functions for
Multi-Task Learning", ICLR 2018): every routed encoder layer offers k function blocks, and a router picks one block
per layer for each sentence.

Blocks. Layer l has ``model.routing_blocks`` (an int for every layer, or a list with one entry per layer) copies of
the encoder's layer l, all starting from the same initialisation, plus with ``model.routing_pass: true`` a PASS block
(the identity) at every layer whose input and output widths agree (every scratch layer; BiLSTM layers above the
first, whose input is the embeddings). Choice j < k is copy j, choice k is PASS. The word/char embeddings (for the
scratch Transformer also its input projection, positions and final LayerNorm) are shared, computed once per batch.
A batch's sentences are grouped by their chosen block (``index_select`` -> the block on that sub-batch with its own
mask -> ``index_copy``; a loop over blocks, never over sentences), so a block gets gradients only from the sentences
routed through it, and an unchosen block is not run at all: per-step cost stays that of one encoder whatever k is.
k = 1 without PASS is hard sharing. A Hugging Face Transformer keeps its own forward pass: each entry of its layer
list becomes a :class:`~.hf_layers.RoutedLayer` that holds the blocks and asks the router for its rows' choices
(all rows of a sentence follow the sentence's route); PASS is offered at every layer.

Routers (``model.routing_router``):

* ``wpl`` (the paper's multi-agent setting): one tabular agent per task. Its policy ``policy[task, layer]`` is a
  distribution over the layer's choices that does not look at the input. Each agent keeps action values
  ``q[task, layer, choice]`` (the running mean of the returns that followed the choice, rate ``VALUE_RATE``; the
  first observation sets it) and takes the Weighted Policy Learner step of Abdallah & Lesser (2008) after every
  training batch of its task: with the gradient ``delta(a) = q(a) - sum_b pi(b) q(b)``, ``pi(a) += lr x delta(a) x
  (1 - pi(a))`` where delta > 0 and ``pi(a) += lr x delta(a) x pi(a)`` where delta <= 0, then the policy is
  projected back onto the simplex (clipped to [0, 1], renormalised). See :func:`wpl_update`.
* ``reinforce``: a single agent for all tasks, one small MLP per layer (the layers' inputs differ in width and
  choice count) over [the layer input mean-pooled over the sentence's words and standardised, the task one-hot],
  softmax over the layer's choices, trained with REINFORCE against a running-mean baseline per task and layer
  (rate ``VALUE_RATE``, set by the first batch). Its last layer starts at zero: the initial policy is uniform.
* ``dispatched`` (the paper's dispatched routing): ``model.routing_agents`` tabular WPL agents (0: one per task),
  not tied to tasks, and a dispatcher, an MLP over [the first layer's pooled input, the task one-hot], that
  assigns each sentence to one agent; that agent's policy then routes the sentence through every layer. The
  agents take the WPL step on the returns of the sentences dispatched to them; the dispatcher is trained with
  REINFORCE on the sentence's whole return (the return of the first decision) against a running-mean baseline
  per task. Tasks may thus share an agent (and its routes) or not, as the dispatcher learns.

``model.routing_lr`` is the router's step size (the WPL policy step, the REINFORCE SGD learning rate). The routers'
state is kept in buffers, not parameters: the training optimiser never sees it, the router takes its own steps in
:meth:`observe_losses`.

Rewards. The final reward of a sentence is its negative per-token training loss, ``-loss / words`` (the
per-sentence loss ``model(batch, task)`` returns, which the training loop hands over through
:meth:`observe_losses`). Why not the paper's +1/-1 for a correct prediction: a tagger's prediction is a sequence,
"correct" would need a token-accuracy threshold (a new hyperparameter, and with an untrained model nearly every
sentence fails it, so the signal is flat at -1 early on), and it would need a decode (Viterbi for the CRF) of every
training batch; the loss is already computed, dense and graded, and the paper itself uses the negative loss for
objectives other than classification. Dividing by the sentence length keeps long sentences from looking like bad
routes. Every routing decision also gets the paper's immediate collaboration reward ``rho x`` the historical
probability of the chosen block at that layer (``model.routing_rho``; the share of all training sentences of all
tasks routed through that block so far, uniform before the first step), which rewards reuse. With
``model.routing_history: N`` the share counts the last N training batches only, like the official code's window of
recent decisions: a block that falls out of use stops being rewarded for its past. The return of the
decision at layer l is the undiscounted sum of the rewards from l on: the final reward plus the collaboration
rewards of layers l..L (:func:`returns_to_go`).

Randomness and resume. Routes are sampled in training mode only; in evaluation mode (``model.eval()``) the policy
is greedy (argmax; WPL: the same route for every sentence of a task; dispatched: the dispatcher's argmax agent,
then that agent's argmax route). Sampling uses a private generator: its state
is the persistent buffer ``rng_state``, seeded by :meth:`initialize` (``train.seed``), advanced by exactly one draw
per training forward pass (the seed of that pass's uniforms, plus the process rank), never the global RNG. Policies,
values, baselines, MLP weights, usage counts and the routing-map history are persistent buffers too, so they are
saved in ``model.safetensors`` and in every checkpoint, and a resumed run routes like an uninterrupted one.
Distributed runs: every process routes and scores its own slice of the global batch, and the router statistics
(return sums and counts per choice, the REINFORCE gradient) are summed over processes with
``torch.distributed.all_reduce`` before the update, so every process takes the same router step and the routers
never diverge.

Routing map. The share of each task's training sentences routed through each block of each layer is counted over
the epoch; :meth:`log_values` (called at every epoch end) closes the epoch: the epoch's map is appended to the
``map_history`` buffer and the mean normalised entropy of the routes is logged as ``routing/entropy``.
:meth:`save_files` writes ``routing.json`` into the model folder (per-epoch maps, the historical usage per layer,
the WPL policies and greedy routes); :func:`draw_routing_map` draws it into a PNG (``sparseshare routing show MODEL
--png out.png``).

Parameter names: ``encoder.*`` (shared embeddings), ``blocks.<layer>.<j>.*`` (block j of a layer, 0-based). Hugging
Face Transformer: ``encoder.model.<layer list>.<layer>.blocks.<j>.*``.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import SharingStrategy, layerwise_encoder, register
from .hf_layers import RoutedLayer, layer_stack, plain_state

VALUE_RATE = 0.1  # running-mean rate of the WPL action values and of the REINFORCE baselines
ROUTER_HIDDEN = 64  # hidden units of the REINFORCE router MLPs
ROUTING_FILE = "routing.json"
ROUTERS = ("wpl", "reinforce", "dispatched")  # model.routing_router


# -- the pieces, as functions (tested on their own) ------------------------------------------------------------------
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


def dispatch(run_layer, blocks: list, x: torch.Tensor, mask: torch.Tensor, choice: torch.Tensor,
             out_dim: int) -> torch.Tensor:
    """Run each sentence through its chosen block: ``run_layer(blocks[j], ...)`` (an encoder layer, or None for
    PASS) on the sub-batch of the sentences with ``choice == j``, with that sub-batch's mask; vectorised per block.
    BiLSTM sub-batches keep the batch's longest-first order (indices ascend), so packing needs no sort."""
    out = None
    for j, block in enumerate(blocks):
        index = (choice == j).nonzero().squeeze(1)
        if index.numel() == 0:
            continue
        if index.numel() == x.shape[0]:  # the whole batch took this block: no gather/scatter
            return x if block is None else run_layer(block, x, mask)
        sub = x.index_select(0, index)
        y = sub if block is None else run_layer(block, sub, mask.index_select(0, index))
        out = (x.new_zeros(x.shape[0], x.shape[1], out_dim) if out is None else out).index_copy(0, index, y)
    return out


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def _rank() -> int:
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
    reduced = _all_reduce(torch.cat([g.flatten().double() for g in grads]
                                    + [x.flatten().to(device, torch.float64) for x in scale_stats]))
    stats, n = reduced[sizes:], float(reduced[sizes])
    if n > 0:
        offset = 0
        for w in weights:
            w -= lr * reduced[offset:offset + w.numel()].view_as(w).to(w.dtype) / n
            offset += w.numel()
    return stats


def routing_blocks_per_layer(blocks: int | list[int], depth: int | None, depth_key: str = "") -> list[int]:
    """``model.routing_blocks`` as one count per layer (``depth`` layers; None: only checks the counts)."""
    counts = [blocks] * (depth or 1) if isinstance(blocks, int) else list(blocks)
    if depth is not None and len(counts) != depth:
        where = f" ({depth_key})" if depth_key else ""
        raise ConfigError(f"config key 'model.routing_blocks' lists {len(counts)} layer(s) but the encoder has "
                          f"{depth}{where}; give one block count per layer, or one int for all")
    bad = [k for k in counts if k < 1]
    if bad or not counts:
        raise ConfigError(f"config key 'model.routing_blocks' must give every layer >= 1 block(s), got {blocks!r}")
    return counts


class RouterMLP(nn.Module):
    """One layer's REINFORCE router: ``[pooled input, task one-hot] -> hidden (ReLU) -> choice logits``. The
    weights are buffers: the router trains itself (:meth:`RoutingNetwork.observe_losses`), not the optimiser."""

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


@register("routing")
class RoutingNetwork(SharingStrategy):
    options = ("routing_blocks", "routing_pass", "routing_router", "routing_rho", "routing_history", "routing_lr",
               "routing_agents")
    citation = """@inproceedings{rosenbaum2018routing,
  title = {Routing Networks: Adaptive Selection of Non-linear Functions for Multi-Task Learning},
  author = {Rosenbaum, Clemens and Klinger, Tim and Riemer, Matthew},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year = {2018}
}"""

    @classmethod
    def check_options(cls, config, tasks, depth, depth_key=""):
        if config.routing_router not in ROUTERS:
            raise ConfigError(f"config key 'model.routing_router': {config.routing_router!r} is not one of "
                              f"{list(ROUTERS)}")
        if config.routing_rho < 0:
            raise ConfigError(f"config key 'model.routing_rho' must be >= 0, got {config.routing_rho}")
        if config.routing_lr <= 0:
            raise ConfigError(f"config key 'model.routing_lr' must be > 0, got {config.routing_lr}")
        if config.routing_pass and config.encoder == "bilstm":
            b = config.bilstm  # the first layer reads the word (+ char) embeddings, the others the 2 x hidden states
            inputs = [b.word_dim + b.char_filters] + [2 * b.hidden] * (b.layers - 1)
            if 2 * b.hidden not in inputs:
                raise ConfigError(f"config key 'model.routing_pass': no encoder layer can be skipped (PASS needs a "
                                  f"layer whose input width equals its output width {2 * b.hidden}; the layers' "
                                  f"inputs are {inputs}): add a layer or set it to false")
        if config.routing_history < 0:
            raise ConfigError(f"config key 'model.routing_history' must be >= 0 (0 = every batch since the start), "
                              f"got {config.routing_history}")
        if config.routing_agents < 0:
            raise ConfigError(f"config key 'model.routing_agents' must be >= 0 (0 = one agent per task), "
                              f"got {config.routing_agents}")
        if config.routing_agents and config.routing_router != "dispatched":
            raise ConfigError(f"config key 'model.routing_agents' only applies to model.routing_router=dispatched "
                              f"(model.routing_router is {config.routing_router!r})")
        routing_blocks_per_layer(config.routing_blocks, depth, depth_key)

    def __init__(self, build_encoder, tasks, config):
        super().__init__(build_encoder, tasks, config)
        encoder = layerwise_encoder("routing", build_encoder, config)
        self.encoder = encoder
        self.stand_ins = encoder.layer_access == "stand_in"
        self.num_layers = encoder.num_layers
        depth_key = encoder.depth_key
        self.check_options(config, self.tasks, self.num_layers, depth_key)
        self.copies = routing_blocks_per_layer(config.routing_blocks, self.num_layers, depth_key)
        if self.stand_ins:  # the model's layers become RoutedLayers; its embeddings and forward pass stay
            self.in_dims = [encoder.output_dim] * self.num_layers
            self.has_pass = [bool(config.routing_pass)] * self.num_layers
            stack = layer_stack(encoder, "routing")
            for i, k in enumerate(self.copies):
                stack[i] = RoutedLayer(stack[i], k, self.has_pass[i])
            self.routed = list(stack)
        else:
            layers = list(encoder.layers)
            encoder.layers = nn.ModuleList()  # the blocks own the layers now: no unused originals
            self.in_dims = [encoder.layer_input_dim(layer) for layer in layers]
            self.has_pass = [bool(config.routing_pass) and d == encoder.output_dim for d in self.in_dims]
            # block 0 is the encoder's own layer, the others copies of its initialisation
            self.blocks = nn.ModuleList(nn.ModuleList([layer] + [_copy(layer) for _ in range(k - 1)])
                                        for layer, k in zip(layers, self.copies))
        self.choices = [k + int(p) for k, p in zip(self.copies, self.has_pass)]
        self.router, self.rho, self.lr = config.routing_router, config.routing_rho, config.routing_lr
        T, L, K = len(self.tasks), self.num_layers, max(self.choices)
        self.agents = (config.routing_agents or T) if self.router == "dispatched" else 0
        valid = torch.zeros(L, K)
        for i, k in enumerate(self.choices):
            valid[i, :k] = 1.0
        self.register_buffer("valid", valid, persistent=False)
        self.register_buffer("rng_state", torch.Generator().get_state())
        self.register_buffer("usage", torch.zeros(L, K, dtype=torch.float64))  # all tasks, all of training
        # the routes of the last model.routing_history batches (a ring, next slot recent_next), for the collaboration
        # reward; none: the reward reads `usage`
        self.history = config.routing_history
        self.register_buffer("recent", torch.zeros(self.history, L, K, dtype=torch.float64))
        self.register_buffer("recent_next", torch.zeros((), dtype=torch.long))
        self.register_buffer("epoch_counts", torch.zeros(T, L, K, dtype=torch.float64))
        self.register_buffer("map_history", torch.zeros(0, T, L, K))
        if self.router in ("wpl", "dispatched"):  # tabular policies: one per task (wpl) or per agent (dispatched)
            rows = self.agents or T
            self.register_buffer("policy", torch.zeros(rows, L, K))
            self.register_buffer("q", torch.zeros(rows, L, K))
            self.register_buffer("q_seen", torch.zeros(rows, L, K, dtype=torch.bool))
        if self.router == "dispatched":
            self.dispatcher = RouterMLP(self.in_dims[0] + T, self.agents)
            self.register_buffer("dispatch_baseline", torch.zeros(T))
            self.register_buffer("dispatch_baseline_seen", torch.zeros(T, dtype=torch.bool))
            self.register_buffer("dispatch_counts", torch.zeros(T, self.agents, dtype=torch.float64))
        if self.router == "reinforce":
            self.routers = nn.ModuleList(RouterMLP(d + T, k) for d, k in zip(self.in_dims, self.choices))
            self.register_buffer("baseline", torch.zeros(T, L))
            self.register_buffer("baseline_seen", torch.zeros(T, L, dtype=torch.bool))
        self._pending = None  # the routes of the last training forward pass, until observe_losses scores them
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
        self.epoch_counts.zero_()
        self.map_history = self.map_history.new_zeros(0, *self.map_history.shape[1:])
        if self.router in ("wpl", "dispatched"):
            self.policy.copy_((self.valid / self.valid.sum(-1, keepdim=True)).expand_as(self.policy))
            self.q.zero_()
            self.q_seen.zero_()
        if self.router == "dispatched":
            self.dispatcher.reset(generator)
            self.dispatch_baseline.zero_()
            self.dispatch_baseline_seen.zero_()
            self.dispatch_counts.zero_()
        if self.router == "reinforce":
            for mlp in self.routers:
                mlp.reset(generator)
            self.baseline.zero_()
            self.baseline_seen.zero_()
        self.rng_state.copy_(generator.get_state())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the map history grows by one entry per epoch: take the saved length
        key = prefix + "map_history"
        if key in state_dict and state_dict[key].shape != self.map_history.shape:
            self.map_history = self.map_history.new_zeros(state_dict[key].shape)
        if not self.history:  # models saved before model.routing_history existed have no (empty) window to load
            for name in ("recent", "recent_next"):
                state_dict.setdefault(prefix + name, getattr(self, name))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def historical_probs(self) -> torch.Tensor:
        """(L, K): the share of the routed training sentences (all tasks; of the last ``model.routing_history``
        batches, or of all of training) that took each choice; uniform over the valid choices before the first step."""
        counts = self.recent.sum(0) if self.history else self.usage
        total = counts.sum(-1, keepdim=True)
        uniform = (self.valid / self.valid.sum(-1, keepdim=True)).to(counts.dtype)
        return torch.where(total > 0, counts / total.clamp(min=1), uniform)

    # -- routing -----------------------------------------------------------------------------------------------------
    @staticmethod
    def _pool(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, H): the mean of ``x`` (B, T, H) over the positions ``mask`` marks."""
        m = mask.unsqueeze(-1).to(x.dtype)
        return (x.detach() * m).sum(1) / m.sum(1).clamp(min=1)

    def _router_input(self, pooled: torch.Tensor, t: int) -> torch.Tensor:
        pooled = F.layer_norm(pooled.float(), pooled.shape[-1:])
        onehot = F.one_hot(torch.full((pooled.shape[0],), t, device=pooled.device), len(self.tasks)).float()
        return torch.cat([pooled, onehot], dim=-1)

    def _probs(self, layer: int, t: int, inputs: torch.Tensor | None, batch_size: int,
               agents: torch.Tensor | None) -> torch.Tensor:
        k = self.choices[layer]
        if self.router == "wpl":
            return self.policy[t, layer, :k].unsqueeze(0).expand(batch_size, k)
        if self.router == "dispatched":
            return self.policy[agents, layer, :k]
        return torch.softmax(RouterMLP.logits(self.routers[layer].weights(), inputs), dim=-1)

    def _reads_input(self, layer: int) -> bool:
        """Whether the decision at ``layer`` looks at the layer's input (else no pooling is needed)."""
        return self.router == "reinforce" or (self.router == "dispatched" and layer == 0)

    def _uniforms(self, batch_size: int) -> torch.Tensor:
        """(L, B) uniforms for this training pass (dispatched: (L + 1, B), the last row for the dispatcher): one draw
        from the persistent generator (the pass's seed, the same on every process), then this process's own
        stream."""
        generator = torch.Generator()
        generator.set_state(self.rng_state.cpu())
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        self.rng_state.copy_(generator.get_state())
        stream = torch.Generator().manual_seed(seed + _rank())
        return torch.rand(self.num_layers + int(self.router == "dispatched"), batch_size, generator=stream)

    @torch.no_grad()
    def _choose(self, layer: int, t: int, pooled: torch.Tensor | None, uniforms: torch.Tensor | None,
                batch_size: int, record: dict) -> torch.Tensor:
        """(B,) the choice at ``layer`` for each sentence (``pooled``: the sentences' pooled layer input, where
        :meth:`_reads_input`); sampled when ``uniforms`` are given, else greedy. Kept in ``record``."""
        def pick(probs, row):
            return sample_choices(probs, uniforms[row]) if uniforms is not None else probs.argmax(-1)

        if self.router == "dispatched" and layer == 0:  # first, the dispatcher assigns each sentence an agent
            record["dispatch_in"] = self._router_input(pooled, t)
            logits = RouterMLP.logits(self.dispatcher.weights(), record["dispatch_in"])
            record["agents"] = pick(torch.softmax(logits, dim=-1), self.num_layers)
        router_in = self._router_input(pooled, t) if self.router == "reinforce" else None
        choice = pick(self._probs(layer, t, router_in, batch_size, record.get("agents")), layer)
        record["choices"].append(choice)
        record["inputs"].append(router_in)
        return choice

    def _routed(self, t: int, record: dict, words: torch.Tensor) -> None:
        """Keep the routes of a forward pass: for inspection, and for the next observe_losses in training."""
        self.last_routes = torch.stack(record["choices"])
        self.last_agents = record.get("agents")
        if self.training:
            self._pending = (t, self.last_routes, record["inputs"], words, record.get("agents"),
                             record.get("dispatch_in"))

    def encode(self, x: torch.Tensor, batch, task: str) -> torch.Tensor:
        """Top-layer features of ``task`` from the shared embeddings ``x``, each sentence along its route."""
        t, mask, batch_size = self.tasks.index(task), batch.mask, batch.mask.shape[0]
        uniforms = self._uniforms(batch_size).to(mask.device) if self.training else None
        words = mask.sum(1).clamp(min=1).to(torch.float64)
        record = {"choices": [], "inputs": []}
        if self.stand_ins:
            x = self._encode_hf(batch, t, uniforms, record)
        else:
            for layer in range(self.num_layers):
                pooled = self._pool(x, mask) if self._reads_input(layer) else None
                choice = self._choose(layer, t, pooled, uniforms, batch_size, record)
                blocks = list(self.blocks[layer]) + ([None] if self.has_pass[layer] else [])
                x = dispatch(self.encoder.run_layer, blocks, x, mask, choice, self.output_dim)
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
        if self.router != "wpl":
            raise NotImplementedError(f"routing with the {self.router!r} router chooses each sentence's route from "
                                      f"the sentence, so task {task!r} has no single encoder to export")
        if not self.stand_ins:
            return super().task_encoder_state(task)
        t = self.tasks.index(task)
        greedy = [int(self.policy[t, layer, :k].argmax()) for layer, k in enumerate(self.choices)]
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
        t, routes, inputs, words, agents, dispatch_in = self._pending
        self._pending = None
        if self.tasks[t] != task:
            raise RuntimeError(f"routing: losses of task {task!r} for routes of task {self.tasks[t]!r}")
        L, K = self.usage.shape
        device = self.usage.device
        counts = torch.zeros(L, K, dtype=torch.float64, device=device)
        sums = torch.zeros(L, K, dtype=torch.float64, device=device)
        returns = None
        if losses.numel():
            final = -losses.to(device=device, dtype=torch.float64) / words.to(device)
            immediate = self.rho * self.historical_probs().gather(1, routes.to(device))
            returns = returns_to_go(final, immediate)
            onehot = F.one_hot(routes.to(device), K).to(torch.float64)  # (L, B, K)
            counts = onehot.sum(1)
            sums = (onehot * returns.unsqueeze(-1)).sum(1)
        if self.router == "dispatched":
            counts = self._dispatched_step(t, routes, agents, dispatch_in, returns)
        elif self.router == "wpl":
            stats = _all_reduce(torch.cat([sums.flatten(), counts.flatten()]))
            sums, counts = stats[:L * K].view(L, K), stats[L * K:].view(L, K)
            policy, q = wpl_update(self.policy[t].double(), self.q[t].double(), sums, counts,
                                   self.valid.double(), self.lr, VALUE_RATE, self.q_seen[t])
            self.policy[t] = policy.to(self.policy.dtype)
            self.q[t] = q.to(self.q.dtype)
            self.q_seen[t] |= counts > 0
        else:
            counts = self._reinforce_step(t, routes, inputs, returns, sums, counts)
        self.usage += counts
        self.epoch_counts[t] += counts
        if self.history and counts.sum() > 0:  # counts are summed over processes: every process moves the ring alike
            self.recent[int(self.recent_next) % self.history] = counts
            self.recent_next += 1

    def _dispatched_step(self, t, routes, agents, dispatch_in, returns) -> torch.Tensor:
        """The agents' WPL step on the returns of the sentences dispatched to them, and the dispatcher's REINFORCE
        step on each sentence's whole return. Returns the (L, K) route counts over all processes."""
        (L, K), A, device = self.usage.shape, self.agents, self.usage.device
        counts = torch.zeros(A, L, K, dtype=torch.float64, device=device)
        sums = torch.zeros(A, L, K, dtype=torch.float64, device=device)
        if returns is not None:
            by_agent = F.one_hot(agents.to(device), A).to(torch.float64)  # (B, A)
            taken = F.one_hot(routes.to(device), K).to(torch.float64)  # (L, B, K)
            counts = torch.einsum("ba,lbk->alk", by_agent, taken)
            sums = torch.einsum("ba,lbk->alk", by_agent, taken * returns.unsqueeze(-1))
        stats = _all_reduce(torch.cat([sums.flatten(), counts.flatten()]))
        sums, counts = stats[:A * L * K].view(A, L, K), stats[A * L * K:].view(A, L, K)
        policy, q = wpl_update(self.policy.double(), self.q.double(), sums, counts, self.valid.double(), self.lr,
                               VALUE_RATE, self.q_seen)
        self.policy.copy_(policy.to(self.policy.dtype))
        self.q.copy_(q.to(self.q.dtype))
        self.q_seen |= counts > 0

        whole = returns[0] if returns is not None else None  # the return of the first decision: the whole route
        seen = bool(self.dispatch_baseline_seen[t])

        def objective(weights):
            if whole is None:
                return None
            baseline = self.dispatch_baseline[t].double() if seen else whole.mean()  # the first batch sets it
            logp = torch.log_softmax(RouterMLP.logits(weights, dispatch_in), dim=-1)
            chosen = logp.gather(1, agents.to(logp.device).unsqueeze(1)).squeeze(1)
            return -((whole.to(logp.dtype) - baseline.to(logp.dtype)).detach() * chosen).sum()

        n = torch.tensor([0.0 if whole is None else float(whole.numel())], dtype=torch.float64, device=device)
        total = torch.zeros(1, dtype=torch.float64, device=device) if whole is None else whole.sum().reshape(1)
        per_agent = torch.zeros(A, dtype=torch.float64, device=device) if whole is None else \
            torch.bincount(agents.to(device), minlength=A).to(torch.float64)
        reduced = router_sgd_step(self.dispatcher.weights(), objective, self.lr, [n, total, per_agent])
        if float(reduced[0]) > 0:
            mean = float(reduced[1] / reduced[0])
            self.dispatch_baseline[t] = self.dispatch_baseline[t] + VALUE_RATE * (mean - self.dispatch_baseline[t]) \
                if seen else mean
            self.dispatch_baseline_seen[t] = True
            self.dispatch_counts[t] += reduced[2:].to(self.dispatch_counts)
        return counts.sum(0)

    def _reinforce_step(self, t, routes, inputs, returns, sums, counts) -> torch.Tensor:
        """The REINFORCE step of every layer's router on the returns of its decisions, with a per-task, per-layer
        running-mean baseline. Returns the (L, K) route counts over all processes."""
        L, K = self.usage.shape

        def objective(weights):
            if returns is None:
                return None
            seen = self.baseline_seen[t]
            batch_mean = (sums.sum(-1) / counts.sum(-1).clamp(min=1)).to(self.baseline.dtype)
            baseline = torch.where(seen, self.baseline[t], batch_mean)  # the first batch sets it
            total, per_layer = 0.0, len(weights) // L
            for layer in range(L):
                mlp = weights[layer * per_layer:(layer + 1) * per_layer]
                logp = torch.log_softmax(RouterMLP.logits(mlp, inputs[layer]), dim=-1)
                chosen = logp.gather(1, routes[layer].to(logp.device).unsqueeze(1)).squeeze(1)
                advantage = (returns[layer].to(logp.dtype) - baseline[layer]).detach()
                total = total - (advantage * chosen).sum()
            return total

        routed = counts[0].sum().reshape(1)  # sentences routed at this step (each takes one choice per layer)
        weights = [w for mlp in self.routers for w in mlp.weights()]
        stats = router_sgd_step(weights, objective, self.lr, [routed, sums, counts])
        n = float(stats[0])
        sums, counts = stats[1:1 + L * K].view(L, K), stats[1 + L * K:].view(L, K)
        if n > 0:
            mean = (sums.sum(-1) / n).to(self.baseline.dtype)
            seen = self.baseline_seen[t]
            self.baseline[t] = torch.where(seen, self.baseline[t] + VALUE_RATE * (mean - self.baseline[t]), mean)
            self.baseline_seen[t] = True
        return counts

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
        return {"routing/entropy": sum(entropies) / len(entropies)} if entropies else {}

    def routing_map(self) -> dict:
        """Everything ``routing.json`` holds (JSON-ready)."""
        def table(values):  # (L, K) -> per layer, the valid choices only
            return [[round(float(v), 6) for v in row[:k]] for row, k in zip(values, self.choices)]

        result = {
            "router": self.router, "tasks": list(self.tasks), "layers": self.num_layers,
            "choices": [self.choice_names(layer) for layer in range(self.num_layers)],
            "rho": self.rho,
            "epochs": [{task: table(epoch[t]) for t, task in enumerate(self.tasks)} for epoch in self.map_history],
            "usage": table(self.historical_probs()),
        }
        if self.router == "dispatched":
            shares = self.dispatch_counts / self.dispatch_counts.sum(-1, keepdim=True).clamp(min=1)
            result["dispatch"] = {task: [round(float(v), 6) for v in shares[t]] for t, task in enumerate(self.tasks)}
            result["agents"] = {f"agent {a}": {"policy": table(self.policy[a]), "greedy": [
                int(self.policy[a, layer, :k].argmax()) for layer, k in enumerate(self.choices)]}
                for a in range(self.agents)}
        if self.router == "wpl":
            result["policy"] = {task: table(self.policy[t]) for t, task in enumerate(self.tasks)}
            result["greedy"] = {task: [int(self.policy[t, layer, :k].argmax()) for layer, k in enumerate(self.choices)]
                                for t, task in enumerate(self.tasks)}
        return result

    def save_files(self, directory: Path) -> None:
        text = json.dumps(self.routing_map(), indent=1)
        # one line per innermost list (a layer's shares, a layer's choice names)
        text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
        (Path(directory) / ROUTING_FILE).write_text(text + "\n", encoding="utf-8")

    def card_section(self, model) -> list[str]:
        routing = self.routing_map()
        blocks = ", ".join(f"{k}{' + PASS' if p else ''}" for k, p in zip(self.copies, self.has_pass))
        router = {"wpl": "one tabular policy per task, Weighted Policy Learner",
                  "reinforce": "one MLP per layer over the layer input and the task, REINFORCE",
                  "dispatched": f"a REINFORCE dispatcher assigns each sentence to one of {self.agents} tabular WPL "
                                f"agents"}[self.router]
        lines = ["## Routing", "",
                 "Every encoder layer offers several blocks (copies of the layer; PASS is the identity) and a router "
                 "picks one per layer for each sentence.", "",
                 f"- Router: `{self.router}` ({router}); collaboration reward rho {self.rho}.",
                 f"- Blocks per layer: {blocks}."]
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
            lines += ["", "At inference each task takes its greedy route (the policy's argmax; shown where it is not "
                          "the most-used block)." if greedy else
                          "At inference each sentence takes the router's argmax for its input."]
        held = "every epoch's routing map and the historical block usage" + (
            ", the policies and the greedy routes" if self.router == "wpl" else
            ", the dispatch shares per task and the agents' policies and greedy routes"
            if self.router == "dispatched" else "")
        lines += ["", f"`{ROUTING_FILE}` holds {held}; draw it with "
                      f"`sparseshare routing show <repo id or folder> --png routing.png`."]
        return lines


def _copy(layer):
    import copy

    return copy.deepcopy(layer)


# -- the picture -----------------------------------------------------------------------------------------------------
def load_routing_map(source) -> dict:
    """A routing map from a dict, a ``routing.json`` file or a model folder holding one."""
    if isinstance(source, dict):
        return source
    path = Path(source)
    if path.is_dir():
        path = path / ROUTING_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no routing map at {path} (only models with model.sharing=routing have one)")
    return json.loads(path.read_text(encoding="utf-8"))


def final_map(routing: dict, epoch: int | None = None) -> tuple[dict, str]:
    """The map to show: epoch ``epoch``'s (1-based; default the last) route shares, else (WPL, untrained) the
    policies."""
    epochs = routing.get("epochs") or []
    if epoch is not None and not 1 <= epoch <= len(epochs):
        raise ValueError(f"epoch {epoch} is not in the routing map, which records epochs 1..{len(epochs)}"
                         if epochs else f"epoch {epoch}: the routing map records no epoch (the model was not trained)")
    if epochs:
        epoch = epoch or len(epochs)
        return epochs[epoch - 1], f"epoch {epoch}: share of training sentences"
    if routing.get("policy"):
        return routing["policy"], "policy"
    raise ValueError("the routing map has no epoch recorded yet (the model was not trained)")


def format_routing_map(routing: dict, epoch: int | None = None) -> str:
    table, what = final_map(routing, epoch)
    lines = [f"router {routing['router']}, rho {routing['rho']}; {what}"]
    for task in routing["tasks"]:
        for layer, names in enumerate(routing["choices"]):
            shares = ", ".join(f"{name} {p:.3f}" for name, p in zip(names, table[task][layer]))
            lines.append(f"  {task:>10} layer {layer + 1}: {shares}")
    if routing.get("dispatch"):
        agents = list(routing["agents"])
        for task, shares in routing["dispatch"].items():
            lines.append(f"  {task:>10} dispatched to: " + ", ".join(f"{a} {p:.3f}" for a, p in zip(agents, shares)))
    lines.append("  historical usage (all tasks): " + " | ".join(
        ", ".join(f"{name} {p:.3f}" for name, p in zip(names, row))
        for names, row in zip(routing["choices"], routing["usage"])))
    return "\n".join(lines)


def draw_routing_map(source, path: str | Path, epoch: int | None = None) -> Path:
    """One heatmap per task (rows: layers, columns: choices) of an epoch's route shares (default the last), and
    below it, when two or more epochs were recorded, each task's shares over the epochs (one line per layer and
    choice), into a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    routing = load_routing_map(source)
    table, what = final_map(routing, epoch)
    tasks, choices, epochs = routing["tasks"], routing["choices"], routing.get("epochs") or []
    width = max(len(c) for c in choices)
    rows = 2 if len(epochs) >= 2 else 1
    fig, axes = plt.subplots(rows, len(tasks), squeeze=False, layout="constrained",
                             figsize=(max(1.0 * width, 3.0) * len(tasks) + 3, 0.7 * len(choices) + 2 + 3 * (rows - 1)))
    for i, (ax, task) in enumerate(zip(axes[0], tasks)):
        grid = [row + [float("nan")] * (width - len(row)) for row in table[task]]
        image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        for layer, row in enumerate(table[task]):
            for j, p in enumerate(row):
                ax.text(j, layer, f"{p:.2f}", ha="center", va="center", color="black" if p > 0.6 else "white")
        longest = max(choices, key=len)
        ax.set_xticks(range(width), labels=[name.replace("block ", "b") for name in longest])
        ax.set_yticks(range(len(choices)), labels=[f"layer {n + 1}" for n in range(len(choices))] if i == 0 else [])
        ax.set_title(task)
    fig.colorbar(image, ax=list(axes[0]), fraction=0.046)
    if rows == 2:  # over training: x = epoch, one line per (layer: line style, choice: colour)
        x = range(1, len(epochs) + 1)
        for i, (ax, task) in enumerate(zip(axes[1], tasks)):
            for layer, names in enumerate(choices):
                for j, name in enumerate(names):
                    ax.plot(x, [e[task][layer][j] for e in epochs], color=f"C{j}", marker=".",
                            linestyle=["-", "--", ":", "-."][layer % 4], label=f"layer {layer + 1} {name}")
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("epoch")
            ax.set_ylabel("share of sentences" if i == 0 else "")
        axes[1][-1].legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"Routing map ({routing['router']}; {what})")
    fig.savefig(str(path), dpi=120)
    plt.close(fig)
    return Path(path)
