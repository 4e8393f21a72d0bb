"""The routers of a routing network, one class each behind :class:`Router` (``model.routing.router``).

A router decides the block of every routed layer for each sentence (:meth:`Router.probs`) and learns from the
returns of its decisions (:meth:`Router.step`). Its state (policies, values, baselines, MLP weights) lives in
persistent buffers of the network, declared by the router in :meth:`Router.register`: the names a saved model and
a checkpoint hold are the network's (``sharing.policy``, ``sharing.dispatcher.w1``, ...), whichever router wrote
them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .rl import VALUE_RATE, RouterMLP, all_reduce, router_sgd_step, wpl_update


@dataclass
class RoutedPass:
    """The routes of a training forward pass, kept until :meth:`RoutingNetwork.observe_losses` scores them."""
    task: int
    routes: torch.Tensor  # (L, B) choices
    words: torch.Tensor  # (B,) words per sentence
    inputs: list  # per layer, the router's input (REINFORCE) or None
    agents: torch.Tensor | None = None  # (B,) dispatched agents
    dispatch_in: torch.Tensor | None = None  # the dispatcher's input


class Router:
    name = "?"
    description = ""  # for the model card
    holds = ""  # what routing.json holds besides the maps and the usage
    extra_draws = 0  # uniform rows a training pass draws beyond one per layer
    learns_from_returns = True  # from the losses and the collaboration reward (else by backprop)
    mixes_blocks = False  # whether training runs every block, the logits learning from all outputs (mix_probs)

    def __init__(self, net: nn.Module, config):
        self.net = net  # not a submodule: the state is the network's buffers

    def register(self) -> None:
        """Declare this router's buffers and modules on the network."""

    def reset(self, generator: torch.Generator) -> None:
        """Initial state (uniform policies, empty statistics; random draws from ``generator`` only)."""

    def reads_input(self, layer: int) -> bool:
        """Whether the decision at ``layer`` looks at the layer's input (else no pooling is needed)."""
        return False

    def probs(self, layer: int, t: int, pooled: torch.Tensor | None, batch_size: int, record: dict,
              pick) -> torch.Tensor:
        """(B, k) choice probabilities at ``layer`` for task ``t``; appends the router's input to
        ``record["inputs"]``. ``pick(probs, row)`` samples (training) or takes the argmax."""
        raise NotImplementedError

    def step(self, p: RoutedPass, returns: torch.Tensor | None, sums: torch.Tensor,
             counts: torch.Tensor) -> torch.Tensor:
        """Learn from the returns of pass ``p`` (None: this process had no sentences; it still joins the
        all-reduce). ``sums`` / ``counts``: (L, K) return sums and route counts of this process. Returns the (L, K)
        route counts over all processes."""
        raise NotImplementedError

    def map_fields(self, table) -> dict:
        """Extra ``routing.json`` fields; ``table`` turns an (L, K) tensor into per-layer lists of valid choices."""
        return {}

    def greedy_route(self, t: int) -> list[int] | None:
        """Task ``t``'s block per layer when it is the same for every sentence (else None)."""
        return None


def _tabular_policies(net, rows: int) -> None:
    L, K = net.valid.shape
    net.register_buffer("policy", torch.zeros(rows, L, K))
    net.register_buffer("q", torch.zeros(rows, L, K))
    net.register_buffer("q_seen", torch.zeros(rows, L, K, dtype=torch.bool))


def _reset_tabular(net) -> None:
    net.policy.copy_((net.valid / net.valid.sum(-1, keepdim=True)).expand_as(net.policy))
    net.q.zero_()
    net.q_seen.zero_()


def _greedy(policy: torch.Tensor, choices: list[int]) -> list[int]:
    return [int(policy[layer, :k].argmax()) for layer, k in enumerate(choices)]


class WPLRouter(Router):
    """One tabular agent per task: a distribution over each layer's choices that does not look at the input,
    trained with the Weighted Policy Learner step."""
    name = "wpl"
    description = "one tabular policy per task, Weighted Policy Learner"
    holds = ", the policies and the greedy routes"

    def register(self):
        _tabular_policies(self.net, len(self.net.tasks))

    def reset(self, generator):
        _reset_tabular(self.net)

    def probs(self, layer, t, pooled, batch_size, record, pick):
        record["inputs"].append(None)
        k = self.net.choices[layer]
        return self.net.policy[t, layer, :k].unsqueeze(0).expand(batch_size, k)

    def step(self, p, returns, sums, counts):
        net, t = self.net, p.task
        L, K = net.usage.shape
        stats = all_reduce(torch.cat([sums.flatten(), counts.flatten()]))
        sums, counts = stats[:L * K].view(L, K), stats[L * K:].view(L, K)
        policy, q = wpl_update(net.policy[t].double(), net.q[t].double(), sums, counts, net.valid.double(), net.lr,
                               VALUE_RATE, net.q_seen[t])
        net.policy[t] = policy.to(net.policy.dtype)
        net.q[t] = q.to(net.q.dtype)
        net.q_seen[t] |= counts > 0
        return counts

    def map_fields(self, table):
        net = self.net
        return {"policy": {task: table(net.policy[t]) for t, task in enumerate(net.tasks)},
                "greedy": {task: _greedy(net.policy[t], net.choices) for t, task in enumerate(net.tasks)}}

    def greedy_route(self, t):
        return _greedy(self.net.policy[t], self.net.choices)


class ReinforceRouter(Router):
    """A single agent for all tasks: one MLP per layer over [the pooled layer input, the task one-hot], trained
    with REINFORCE against a running-mean baseline per task and layer."""
    name = "reinforce"
    description = "one MLP per layer over the layer input and the task, REINFORCE"

    def register(self):
        net = self.net
        T, L = len(net.tasks), net.num_layers
        net.routers = nn.ModuleList(RouterMLP(d + T, k) for d, k in zip(net.in_dims, net.choices))
        net.register_buffer("baseline", torch.zeros(T, L))
        net.register_buffer("baseline_seen", torch.zeros(T, L, dtype=torch.bool))

    def reset(self, generator):
        for mlp in self.net.routers:
            mlp.reset(generator)
        self.net.baseline.zero_()
        self.net.baseline_seen.zero_()

    def reads_input(self, layer):
        return True

    def probs(self, layer, t, pooled, batch_size, record, pick):
        router_in = self.net.router_input(pooled, t)
        record["inputs"].append(router_in)
        return torch.softmax(RouterMLP.logits(self.net.routers[layer].weights(), router_in), dim=-1)

    def step(self, p, returns, sums, counts):
        net, t, routes, inputs = self.net, p.task, p.routes, p.inputs
        L, K = net.usage.shape

        def objective(weights):
            if returns is None:
                return None
            seen = net.baseline_seen[t]
            batch_mean = (sums.sum(-1) / counts.sum(-1).clamp(min=1)).to(net.baseline.dtype)
            baseline = torch.where(seen, net.baseline[t], batch_mean)  # the first batch sets it
            total, per_layer = 0.0, len(weights) // L
            for layer in range(L):
                mlp = weights[layer * per_layer:(layer + 1) * per_layer]
                logp = torch.log_softmax(RouterMLP.logits(mlp, inputs[layer]), dim=-1)
                chosen = logp.gather(1, routes[layer].to(logp.device).unsqueeze(1)).squeeze(1)
                advantage = (returns[layer].to(logp.dtype) - baseline[layer]).detach()
                total = total - (advantage * chosen).sum()
            return total

        routed = counts[0].sum().reshape(1)  # sentences routed at this step (each takes one choice per layer)
        weights = [w for mlp in net.routers for w in mlp.weights()]
        stats = router_sgd_step(weights, objective, net.lr, [routed, sums, counts])
        n = float(stats[0])
        sums, counts = stats[1:1 + L * K].view(L, K), stats[1 + L * K:].view(L, K)
        if n > 0:
            mean = (sums.sum(-1) / n).to(net.baseline.dtype)
            seen = net.baseline_seen[t]
            net.baseline[t] = torch.where(seen, net.baseline[t] + VALUE_RATE * (mean - net.baseline[t]), mean)
            net.baseline_seen[t] = True
        return counts


class DispatchedRouter(Router):
    """``model.routing.agents`` tabular WPL agents (0: one per task) and a REINFORCE dispatcher over [the first
    layer's pooled input, the task one-hot] that assigns each sentence to one agent."""
    name = "dispatched"
    holds = ", the dispatch shares per task and the agents' policies and greedy routes"
    extra_draws = 1  # the dispatcher's row of uniforms

    def __init__(self, net, config):
        super().__init__(net, config)
        net.agents = config.routing.agents or len(net.tasks)

    @property
    def description(self):
        return f"a REINFORCE dispatcher assigns each sentence to one of {self.net.agents} tabular WPL agents"

    def register(self):
        net = self.net
        T = len(net.tasks)
        _tabular_policies(net, net.agents)
        net.dispatcher = RouterMLP(net.in_dims[0] + T, net.agents)
        net.register_buffer("dispatch_baseline", torch.zeros(T))
        net.register_buffer("dispatch_baseline_seen", torch.zeros(T, dtype=torch.bool))
        net.register_buffer("dispatch_counts", torch.zeros(T, net.agents, dtype=torch.float64))

    def reset(self, generator):
        net = self.net
        _reset_tabular(net)
        net.dispatcher.reset(generator)
        net.dispatch_baseline.zero_()
        net.dispatch_baseline_seen.zero_()
        net.dispatch_counts.zero_()

    def reads_input(self, layer):
        return layer == 0

    def probs(self, layer, t, pooled, batch_size, record, pick):
        net = self.net
        if layer == 0:  # first, the dispatcher assigns each sentence an agent
            record["dispatch_in"] = net.router_input(pooled, t)
            logits = RouterMLP.logits(net.dispatcher.weights(), record["dispatch_in"])
            record["agents"] = pick(torch.softmax(logits, dim=-1), net.num_layers)
        record["inputs"].append(None)
        return net.policy[record["agents"], layer, :net.choices[layer]]

    def step(self, p, returns, sums, counts):
        """The agents' WPL step on the returns of the sentences dispatched to them, and the dispatcher's REINFORCE
        step on each sentence's whole return."""
        net, t, routes, agents, dispatch_in = self.net, p.task, p.routes, p.agents, p.dispatch_in
        (L, K), A, device = net.usage.shape, net.agents, net.usage.device
        counts = torch.zeros(A, L, K, dtype=torch.float64, device=device)
        sums = torch.zeros(A, L, K, dtype=torch.float64, device=device)
        if returns is not None:
            by_agent = F.one_hot(agents.to(device), A).to(torch.float64)  # (B, A)
            taken = F.one_hot(routes.to(device), K).to(torch.float64)  # (L, B, K)
            counts = torch.einsum("ba,lbk->alk", by_agent, taken)
            sums = torch.einsum("ba,lbk->alk", by_agent, taken * returns.unsqueeze(-1))
        stats = all_reduce(torch.cat([sums.flatten(), counts.flatten()]))
        sums, counts = stats[:A * L * K].view(A, L, K), stats[A * L * K:].view(A, L, K)
        policy, q = wpl_update(net.policy.double(), net.q.double(), sums, counts, net.valid.double(), net.lr,
                               VALUE_RATE, net.q_seen)
        net.policy.copy_(policy.to(net.policy.dtype))
        net.q.copy_(q.to(net.q.dtype))
        net.q_seen |= counts > 0

        whole = returns[0] if returns is not None else None  # the return of the first decision: the whole route
        seen = bool(net.dispatch_baseline_seen[t])

        def objective(weights):
            if whole is None:
                return None
            baseline = net.dispatch_baseline[t].double() if seen else whole.mean()  # the first batch sets it
            logp = torch.log_softmax(RouterMLP.logits(weights, dispatch_in), dim=-1)
            chosen = logp.gather(1, agents.to(logp.device).unsqueeze(1)).squeeze(1)
            return -((whole.to(logp.dtype) - baseline.to(logp.dtype)).detach() * chosen).sum()

        n = torch.tensor([0.0 if whole is None else float(whole.numel())], dtype=torch.float64, device=device)
        total = torch.zeros(1, dtype=torch.float64, device=device) if whole is None else whole.sum().reshape(1)
        per_agent = torch.zeros(A, dtype=torch.float64, device=device) if whole is None else \
            torch.bincount(agents.to(device), minlength=A).to(torch.float64)
        reduced = router_sgd_step(net.dispatcher.weights(), objective, net.lr, [n, total, per_agent])
        if float(reduced[0]) > 0:
            mean = float(reduced[1] / reduced[0])
            net.dispatch_baseline[t] = net.dispatch_baseline[t] + VALUE_RATE * (mean - net.dispatch_baseline[t]) \
                if seen else mean
            net.dispatch_baseline_seen[t] = True
            net.dispatch_counts[t] += reduced[2:].to(net.dispatch_counts)
        return counts.sum(0)

    def map_fields(self, table):
        net = self.net
        shares = net.dispatch_counts / net.dispatch_counts.sum(-1, keepdim=True).clamp(min=1)
        return {"dispatch": {task: [round(float(v), 6) for v in shares[t]] for t, task in enumerate(net.tasks)},
                "agents": {f"agent {a}": {"policy": table(net.policy[a]), "greedy": _greedy(net.policy[a], net.choices)}
                           for a in range(net.agents)}}


class GumbelRouter(Router):
    """One table of route logits per task, trained by backprop with the rest of the model: a sentence's block is a
    categorical draw from the softmax of its task's logits (by the inverse CDF, as the other routers draw: the same
    distribution as the Gumbel-max draw), and the chosen block's output is
    multiplied by ``p_c / p_c.detach()`` (1 in the forward pass), so the task loss reaches the logits through the
    softmax (a straight-through estimator, as in Gumbel-Matrix routing, Maziarz et al. 2019). No reward: the
    collaboration reward and ``model.routing.lr`` do not apply; the logits take the optimiser's learning rate (or
    ``model.routing.logit_lr``)."""
    name = "gumbel"
    description = "per-task route logits trained by backprop, straight-through categorical draws"
    holds = ", the route probabilities and the greedy routes"
    learns_from_returns = False

    def register(self):
        net = self.net
        net.route_logits = nn.Parameter(torch.zeros(len(net.tasks), *net.valid.shape))

    def reset(self, generator):
        self.net.route_logits.data.zero_()

    def _softmax(self, layer, t):
        k = self.net.choices[layer]
        return torch.softmax(self.net.route_logits[t, layer, :k], dim=-1)

    def probs(self, layer, t, pooled, batch_size, record, pick):
        record["inputs"].append(None)
        probs = self._softmax(layer, t).detach()
        return probs.unsqueeze(0).expand(batch_size, probs.shape[0])

    def straight_through(self, layer: int, t: int, choice: torch.Tensor) -> torch.Tensor:
        """(B,) weights of the chosen blocks' outputs: 1 in value, the chosen probability's gradient."""
        chosen = self._softmax(layer, t)[choice.to(self.net.route_logits.device)]
        return chosen / chosen.detach()

    def step(self, p, returns, sums, counts):
        return all_reduce(counts)

    def map_fields(self, table):
        net = self.net
        probs = {task: torch.stack([F.pad(self._softmax(layer, t).detach(), (0, net.valid.shape[1] - k))
                                    for layer, k in enumerate(net.choices)]) for t, task in enumerate(net.tasks)}
        return {"policy": {task: table(probs[task]) for task in net.tasks},
                "greedy": {task: _greedy(probs[task], net.choices) for task in net.tasks}}

    def greedy_route(self, t):
        return _greedy(self.net.route_logits[t].detach(), self.net.choices)


class GumbelMixRouter(GumbelRouter):
    """The same per-task route logits and categorical draws, with the straight-through estimator of the
    Gumbel-softmax papers (Jang et al. 2017; Maziarz et al. 2019) instead of the chosen block's scale: in training
    every block runs on every sentence and the layer's output is ``sum_j (onehot_j + p_j - sg(p_j)) y_j``, in value
    the chosen block's output ``y_c`` (only that block's weights get a gradient), while the logits get
    ``sum_j <dL/dy, y_j> dp_j``: a comparison of what each block would have given. The chosen-block scale of
    ``gumbel`` carries only whether a larger ``y_c`` would lower the loss, the same for every block, so its logits
    barely move (benchmarks/RESULTS.md, issue 25). Training runs every block (k times the routed layers' cost);
    inference runs the chosen one."""
    name = "gumbel_mix"
    description = ("per-task route logits trained by backprop, straight-through categorical draws whose gradient "
                   "compares every block's output")
    mixes_blocks = True

    def mix_probs(self, layer: int, t: int) -> torch.Tensor:
        """(k,) the task's choice probabilities at ``layer``, with their gradient to the logits."""
        return self._softmax(layer, t)


ROUTERS: dict[str, type[Router]] = {router.name: router for router in (WPLRouter, ReinforceRouter, DispatchedRouter,
                                                                       GumbelRouter, GumbelMixRouter)}
