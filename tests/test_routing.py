"""Routing networks: the WPL step and the returns by hand, greedy evaluation, vectorised dispatch against a per-sentence
loop, gradients along the chosen route only, k = 1 = hard sharing, save/reload with the routing map, exact resume,
bad configs. Tiny fixtures only."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from sparseshare.cli import main as cli_main
from sparseshare.config import ConfigError
from sparseshare.encoders.bilstm import BiLSTMLayer
from sparseshare.model import MultiTaskTagger
from sparseshare.encoders import BiLSTMEncoder, ScratchTransformerEncoder
from sparseshare.sharing.routing import (RouterMLP, dispatch, draw_routing_map, returns_to_go, sample_choices,
                                         task_block_information,
                                         wpl_update)
from sparseshare.recipes.train import run_training

from conftest import assert_reloaded_model_scores_like_the_trained_one, train_interrupted_and_resumed
from conftest import TINY_SCRATCH as SCRATCH, TINY_SENTENCES as SENTENCES, TINY_TASKS as TASKS
from conftest import quiet as _quiet, tiny_batch as _batch, tiny_config as _config, tiny_model as _model

ROUTING = {"model.sharing": "routing"}


# -- the pieces by hand ----------------------------------------------------------------------------------------------
def test_wpl_update_matches_a_hand_computed_step():
    policy = torch.tensor([[0.5, 0.3, 0.2, 0.0]], dtype=torch.float64)
    q = torch.zeros(1, 4, dtype=torch.float64)
    sums = torch.tensor([[2.0, -1.0, 0.0, 0.0]], dtype=torch.float64)  # action 0: two returns of mean 1, action 1: -1
    counts = torch.tensor([[2.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    valid = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)  # a 4th, invalid choice stays at 0
    # q = [0.5, -0.5, 0]; V = 0.25 - 0.15 = 0.1; delta = [0.4, -0.6, -0.1]
    # positive: x (1 - pi) -> 0.2; negative: x pi -> -0.18, -0.02; lr 0.2 -> [0.54, 0.264, 0.196] (sums to 1)
    new, new_q = wpl_update(policy, q, sums, counts, valid, lr=0.2, value_rate=0.5)
    torch.testing.assert_close(new_q, torch.tensor([[0.5, -0.5, 0.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(new, torch.tensor([[0.54, 0.264, 0.196, 0.0]], dtype=torch.float64))
    # lr 2: [0.9, -0.06, 0.16] -> clipped to [0.9, 0, 0.16] -> renormalised by 1.06
    new, _ = wpl_update(policy, q, sums, counts, valid, lr=2.0, value_rate=0.5)
    torch.testing.assert_close(new, torch.tensor([[0.9 / 1.06, 0.0, 0.16 / 1.06, 0.0]], dtype=torch.float64))
    # action 1 never seen before: its value is set to its mean return -1 (not moved by the rate):
    # q = [0.5, -1, 0]; V = 0.25 - 0.3 = -0.05; delta = [0.55, -0.95, 0.05]
    # step = [0.55 x 0.5, -0.95 x 0.3, 0.05 x 0.8] = [0.275, -0.285, 0.04]; lr 0.2 -> [0.555, 0.243, 0.208] / 1.006
    seen = torch.tensor([[True, False, True, True]])
    new, new_q = wpl_update(policy, q, sums, counts, valid, lr=0.2, value_rate=0.5, seen=seen)
    torch.testing.assert_close(new_q, torch.tensor([[0.5, -1.0, 0.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(new, torch.tensor([[0.555, 0.243, 0.208, 0.0]], dtype=torch.float64) / 1.006)
    # nothing observed in a row: its values and policy stay (though delta = q - V is not zero)
    q = torch.tensor([[1.0, 0.0, -1.0, 0.0]], dtype=torch.float64)
    new, new_q = wpl_update(policy, q, torch.zeros_like(sums), torch.zeros_like(counts), valid, lr=0.2)
    assert torch.equal(new, policy) and torch.equal(new_q, q)


def test_returns_to_go_add_the_later_collaboration_rewards():
    final = torch.tensor([1.0, -1.0])
    immediate = torch.tensor([[0.1, 0.2], [0.3, 0.4]])  # (layers, sentences)
    torch.testing.assert_close(returns_to_go(final, immediate), torch.tensor([[1.4, -0.4], [1.3, -0.6]]))


def _route_and_score_a_chunk_batch(model, data):
    """One training forward pass of a chunk batch, scored with losses 1..8: (routes, words per sentence, losses)."""
    model.train()
    batch = _batch(model, data, "chunk")
    model(batch, "chunk")
    routes = model.sharing.last_routes.clone()
    words = batch.mask.sum(1).double()
    losses = torch.linspace(1.0, 8.0, len(words), dtype=torch.float64)
    model.sharing.observe_losses("chunk", losses.float())
    return routes, words, losses


@pytest.mark.parametrize("history", [0, 3])
def test_a_per_task_collaboration_reward_reads_the_task_own_routes_and_may_be_negative(tiny_corpus, tmp_path, history):
    model, data = _model(_config(tiny_corpus, tmp_path, **ROUTING, **{
        "model.routing.rho": -0.5, "model.routing.collaboration": "per_task", "model.routing.history": history}))
    s, t = model.sharing, TASKS.index("chunk")
    others = torch.tensor([[9.0, 1.0], [1.0, 9.0]], dtype=torch.float64)  # every task's routes: not read
    own = torch.tensor([[1.0, 3.0], [2.0, 2.0]], dtype=torch.float64)  # chunk's: (1/4, 3/4), (1/2, 1/2)
    if history:  # a ring of 3 batches: one of pos (not chunk's), one of chunk, one empty slot
        s.recent[0], s.recent[1] = others, own
        s.recent_task[:2] = torch.tensor([TASKS.index("pos"), t])
        s.recent_next.fill_(2)
    else:
        s.usage.copy_(others + own)
        s.task_usage[t] = own
    hist = [[0.25, 0.75], [0.5, 0.5]]
    routes, words, losses = _route_and_score_a_chunk_batch(model, data)
    for layer in range(2):
        for a in range(2):
            returns = [-losses[i] / words[i] + sum(-0.5 * hist[later][routes[later, i]] for later in range(layer, 2))
                       for i in range(len(words)) if routes[layer, i] == a]
            if returns:
                assert float(s.q[t, layer, a]) == pytest.approx(float(sum(returns) / len(returns)), rel=1e-5)
    if history:  # the batch took the empty slot, marked as chunk's
        assert s.recent_task.tolist() == [TASKS.index("pos"), t, t] and s.recent[2].sum(-1).tolist() == [len(words)] * 2
    else:
        assert (s.task_usage[t] - own).sum(-1).tolist() == [len(words)] * 2 and not s.task_usage[[0, 2]].any()


def test_sampling_inverts_the_cdf():
    probs = torch.tensor([[0.2, 0.0, 0.8]]).expand(5, 3)
    uniforms = torch.tensor([0.0, 0.19, 0.2, 0.5, 0.9999])
    assert sample_choices(probs, uniforms).tolist() == [0, 0, 2, 2, 2]  # the zero-probability choice never


def test_wpl_observation_scores_routes_with_the_loss_and_the_collaboration_reward(tiny_corpus, tmp_path):
    model, data = _model(_config(tiny_corpus, tmp_path, **ROUTING, **{"model.routing.rho": 0.5,
                                                                        "model.routing.pass_block": "true"}))
    s = model.sharing
    assert s.choices == [2, 3]  # the first BiLSTM layer's input is the embeddings: no PASS there
    s.usage.copy_(torch.tensor([[3.0, 1.0, 0.0], [1.0, 1.0, 2.0]], dtype=torch.float64))  # history: (3/4, 1/4), ...
    hist = [[0.75, 0.25, 0.0], [0.25, 0.25, 0.5]]
    routes, words, losses = _route_and_score_a_chunk_batch(model, data)
    t = TASKS.index("chunk")
    for layer in range(2):
        for a in range(s.choices[layer]):
            returns = [-losses[i] / words[i] + sum(0.5 * hist[later][routes[later, i]] for later in range(layer, 2))
                       for i in range(len(words)) if routes[layer, i] == a]
            if returns:  # first observation: the value is the mean return
                assert float(s.q[t, layer, a]) == pytest.approx(float(sum(returns) / len(returns)), rel=1e-5)
                assert s.q_seen[t, layer, a]
            else:
                assert float(s.q[t, layer, a]) == 0.0 and not s.q_seen[t, layer, a]
    assert not s.q_seen[[0, 2]].any()  # other tasks' agents untouched
    for layer in range(2):
        assert s.usage[layer].sum() == 4 + len(words)
        assert s.policy[t, layer].sum() == pytest.approx(1.0)
    assert not torch.allclose(s.policy[t, 1, :3], torch.full((3,), 1 / 3))  # the policy moved
    before = (s.policy.clone(), s.usage.clone())
    model(_batch(model, data, "chunk"), "chunk")
    s.observe_losses("chunk", losses[:0].float())  # a process without sentences at this step
    assert torch.equal(s.policy, before[0]) and torch.equal(s.usage, before[1])
    with pytest.raises(RuntimeError, match="without a training forward pass"):
        s.observe_losses("chunk", losses.float())


def test_routing_history_window_counts_only_the_last_batches(tiny_corpus, tmp_path):
    model, data = _model(_config(tiny_corpus, tmp_path, **ROUTING, **{"model.routing.history": 2}))
    s = model.sharing
    s.usage.fill_(0).select(1, 0).fill_(100.0)  # a long past of block 0 that the window no longer sees
    torch.testing.assert_close(s.historical_probs(), torch.full((2, 2), 0.5, dtype=torch.float64))
    model.train()
    counts = []
    for step, task in enumerate(["pos", "chunk", "ner"]):
        batch = _batch(model, data, task)
        model(batch, task)
        counts.append(F.one_hot(s.last_routes, 2).sum(1).double())
        s.observe_losses(task, torch.linspace(1.0, 2.0, batch.mask.shape[0]))
    last_two = counts[1] + counts[2]
    torch.testing.assert_close(s.historical_probs(), last_two / last_two.sum(-1, keepdim=True))
    torch.testing.assert_close(s.usage, torch.tensor([[100.0, 0.0]] * 2, dtype=torch.float64) + sum(counts))
    assert int(s.recent_next) == 3


def test_a_model_saved_before_the_history_window_existed_still_loads(tiny_corpus, tmp_path):
    from safetensors.torch import save_file

    model, _ = _model(_config(tiny_corpus, tmp_path, **ROUTING))
    folder = model.save_pretrained(tmp_path / "model")
    weights = load_file(str(folder / "model.safetensors"))
    del weights["sharing.recent"], weights["sharing.recent_next"]
    save_file(weights, str(folder / "model.safetensors"))
    assert MultiTaskTagger.from_pretrained(folder).predict(SENTENCES) == model.predict(SENTENCES)


# -- routing and evaluation ------------------------------------------------------------------------------------------
def test_greedy_evaluation_is_deterministic_and_takes_the_argmax_wpl(tiny_corpus, tmp_path):
    model, data = _model(_config(tiny_corpus, tmp_path, **ROUTING, **SCRATCH,
                                 **{"model.routing.blocks": "[3,2]", "model.routing.pass_block": "true"}))
    s = model.sharing
    assert s.choices == [4, 3]
    s.policy[0, 0, :4] = torch.tensor([0.1, 0.2, 0.6, 0.1])
    s.policy[0, 1, :3] = torch.tensor([0.5, 0.1, 0.4])
    s.policy[2, 0, :4] = torch.tensor([0.1, 0.1, 0.1, 0.7])
    s.policy[2, 1, :3] = torch.tensor([0.2, 0.7, 0.1])
    batch = _batch(model, data, "pos")
    rng, state = torch.random.get_rng_state(), s.rng_state.clone()
    for task, expected in (("pos", [2, 0]), ("ner", [3, 1])):
        first = s(batch, task)
        routes = s.last_routes.clone()
        assert routes.tolist() == [[expected[0]] * 8, [expected[1]] * 8]
        assert torch.equal(s(batch, task), first) and torch.equal(s.last_routes, routes)
    assert torch.equal(torch.random.get_rng_state(), rng) and torch.equal(s.rng_state, state)  # no draws in eval
    model.train()  # training samples: routes vary over sentences and the private generator advances
    s(batch, "pos")
    assert not torch.equal(s.rng_state, state) and torch.equal(torch.random.get_rng_state(), rng)
    assert len(set(s.last_routes[0].tolist())) > 1


def test_greedy_evaluation_takes_the_argmax_reinforce(tiny_corpus, tmp_path):
    model, data = _model(_config(tiny_corpus, tmp_path, **ROUTING, **{"model.routing.router": "reinforce",
                                                                        "model.routing.blocks": 3}))
    s = model.sharing
    generator = torch.Generator().manual_seed(3)
    for mlp in s.routers:
        mlp.w2.copy_(torch.randn(mlp.w2.shape, generator=generator))
    batch = _batch(model, data, "ner", n=16)
    s(batch, "ner")
    routes = s.last_routes.clone()
    x = s.encoder.embed(batch)  # layer 1's router reads the mean-pooled embeddings and the task
    m = batch.mask.unsqueeze(-1).float()
    pooled = F.layer_norm((x * m).sum(1) / m.sum(1), (x.shape[-1],))
    inputs = torch.cat([pooled, F.one_hot(torch.full((16,), 2), 3).float()], -1)
    w1, b1, w2, b2 = s.routers[0].weights()
    expected = (torch.relu(inputs @ w1 + b1) @ w2 + b2).argmax(-1)
    assert torch.equal(routes[0], expected)
    assert len(set(routes[0].tolist())) > 1  # input-dependent: sentences take different routes
    for _ in range(2):
        s(batch, "ner")
        assert torch.equal(s.last_routes, routes)


def test_dispatched_agents_learn_from_their_own_sentences_and_the_dispatcher_from_whole_returns(tiny_corpus,
                                                                                               tmp_path):
    model, data = _model(_config(tiny_corpus, tmp_path, **ROUTING, **{"model.routing.router": "dispatched",
                                                                        "model.routing.pass_block": "true"}))
    s = model.sharing
    assert s.agents == 3 and s.policy.shape == (3, 2, 3)  # routing_agents 0: one agent per task
    generator = torch.Generator().manual_seed(5)
    s.dispatcher.w2.copy_(torch.randn(s.dispatcher.w2.shape, generator=generator))  # input-dependent dispatch
    batch = _batch(model, data, "chunk", n=16)
    # evaluation: the dispatcher's argmax agent (from the pooled embeddings and the task), then its greedy route
    s.policy[:, 0, :2] = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    s(batch, "chunk")
    x = s.encoder.embed(batch)
    m = batch.mask.unsqueeze(-1).float()
    inputs = torch.cat([F.layer_norm((x * m).sum(1) / m.sum(1), (x.shape[-1],)),
                        F.one_hot(torch.full((16,), 1), 3).float()], -1)
    agents = RouterMLP.logits(s.dispatcher.weights(), inputs).argmax(-1)
    assert torch.equal(s.last_agents, agents) and len(set(agents.tolist())) > 1
    assert s.last_routes[0].tolist() == [[0, 1, 0][a] for a in agents.tolist()]
    # training: the WPL step of each agent sees only the sentences dispatched to it
    model.train()
    s(batch, "chunk")
    agents, routes = s.last_agents.clone(), s.last_routes.clone()
    policy, dispatcher = s.policy.clone(), [w.clone() for w in s.dispatcher.weights()]
    s.observe_losses("chunk", torch.linspace(1.0, 16.0, 16))
    for a in range(3):
        assert torch.equal(s.q_seen[a].any(-1), torch.tensor([bool((agents == a).any())] * 2))
        if not (agents == a).any():
            assert torch.equal(s.policy[a], policy[a])
    assert s.dispatch_counts[1].tolist() == torch.bincount(agents, minlength=3).double().tolist()
    assert s.dispatch_counts[[0, 2]].sum() == 0 and bool(s.dispatch_baseline_seen[1])
    assert all(not torch.equal(a, b) for a, b in zip(s.dispatcher.weights()[2:], dispatcher[2:]))
    assert s.usage.sum(-1).tolist() == [16.0, 16.0] and routes.shape == (2, 16)


def _bilstm_blocks(k, dim, hidden):
    return [BiLSTMLayer(dim, hidden, 0.0) for _ in range(k)]


def _scratch_blocks(k, dim):
    return [nn.TransformerEncoderLayer(dim, 2, 32, 0.0, batch_first=True, norm_first=True).eval() for _ in range(k)]


@pytest.mark.parametrize("kind", ["bilstm", "scratch"])
def test_vectorised_dispatch_equals_a_per_sentence_loop(kind):
    torch.manual_seed(0)
    dim = 16
    blocks = _bilstm_blocks(3, dim, dim // 2) if kind == "bilstm" else _scratch_blocks(3, dim)
    blocks = blocks + [None]  # PASS
    batch_size, length = 12, 9
    lengths = torch.sort(torch.randint(1, length + 1, (batch_size,)), descending=True).values
    lengths[0] = length
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    x = torch.randn(batch_size, length, dim) * mask.unsqueeze(-1)
    x.requires_grad_()
    choice = torch.randint(0, 4, (batch_size,))
    choice[:4] = torch.tensor([0, 1, 3, 0])  # every choice but block 2 at least once
    choice[choice == 2] = 1
    run_layer = (BiLSTMEncoder if kind == "bilstm" else ScratchTransformerEncoder).run_layer
    out = dispatch(run_layer, blocks, x, mask, choice, dim)
    for i in range(batch_size):
        block = blocks[int(choice[i])]
        expected = x[i:i + 1] if block is None else run_layer(block, x[i:i + 1], mask[i:i + 1])
        torch.testing.assert_close(out[i][mask[i]], expected[0][mask[i]], rtol=0, atol=1e-5)
    out[mask].sum().backward()
    assert all(p.grad is None for p in blocks[2].parameters())  # an unchosen block is not even run
    for j in (0, 1):
        assert all(p.grad is not None and p.grad.any() for p in blocks[j].parameters() if p.dim() > 1)
    assert x.grad[choice == 3].abs().sum() > 0  # PASS passes the gradient through


@pytest.mark.parametrize("extra", [{}, SCRATCH])
def test_blocks_get_gradients_only_along_chosen_routes(tiny_corpus, tmp_path, extra):
    model, data = _model(_config(tiny_corpus, tmp_path, **ROUTING, **extra, **{"model.routing.blocks": 3}))
    s = model.sharing
    s.policy[0, 0] = torch.tensor([0.5, 0.5, 0.0])  # pos: layer 1 never block 2, layer 2 always block 2
    s.policy[0, 1] = torch.tensor([0.0, 0.0, 1.0])
    model.train()
    model.zero_grad(set_to_none=True)
    model(_batch(model, data, "pos"), "pos").sum().backward()
    routes = s.last_routes
    assert set(routes[0].tolist()) == {0, 1} and set(routes[1].tolist()) == {2}
    for layer, used in ((0, {0, 1}), (1, {2})):
        for j in range(3):
            grads = [p.grad for p in s.blocks[layer][j].parameters()]
            if j in used:
                assert all(g is not None for g in grads) and any(g.any() for g in grads), (layer, j)
            else:
                assert all(g is None for g in grads), (layer, j)
    assert s.encoder.embedder.words.weight.grad.any()


@pytest.mark.parametrize("extra", [{}, SCRATCH])
def test_one_block_without_pass_is_hard_sharing(tiny_corpus, tmp_path, extra):
    hard, data = _model(_config(tiny_corpus, tmp_path, **extra))
    routing, _ = _model(_config(tiny_corpus, tmp_path, **ROUTING, **extra, **{"model.routing.blocks": 1}), data, 1)
    state = {_rename(n): v for n, v in hard.state_dict().items()}
    missing, unexpected = routing.load_state_dict(state, strict=False)
    assert not unexpected and all(n.startswith("sharing.") and "blocks" not in n for n in missing), missing
    batch = _batch(hard, data, "ner")
    expected = hard.sharing.encoder(batch)[-1]
    features = routing.sharing.features_for_tasks(batch, TASKS)
    for task in TASKS:
        torch.testing.assert_close(features[task], expected, rtol=0, atol=1e-6)
    hard.train(), routing.train()
    for task in TASKS:
        batch = _batch(hard, data, task)
        torch.testing.assert_close(routing(batch, task), hard(batch, task), rtol=0, atol=1e-5)


def _rename(name: str) -> str:
    """Hard sharing's ``sharing.encoder.layers.<l>.*`` is routing's ``sharing.blocks.<l>.0.*``."""
    prefix = "sharing.encoder.layers."
    if not name.startswith(prefix):
        return name
    layer, rest = name[len(prefix):].split(".", 1)
    return f"sharing.blocks.{layer}.0.{rest}"


def test_blocks_are_copies_of_the_layer_and_the_parameters_grow_with_k(tiny_corpus, tmp_path):
    hard, data = _model(_config(tiny_corpus, tmp_path))
    model, _ = _model(_config(tiny_corpus, tmp_path, **ROUTING, **{"model.routing.blocks": "[2,3]"}), data)
    s = model.sharing
    assert [len(b) for b in s.blocks] == [2, 3]
    for layer in s.blocks:
        for block in layer[1:]:
            for a, b in zip(layer[0].parameters(), block.parameters()):
                assert torch.equal(a, b) and a is not b
    layer_sizes = [sum(p.numel() for p in layer.parameters()) for layer in hard.sharing.encoder.layers]
    extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in hard.parameters())
    assert extra == layer_sizes[0] + 2 * layer_sizes[1]


# -- configuration ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,message", [
    ({**ROUTING, "model.routing.blocks": 0}, r"'model.routing.blocks' must give every layer >= 1 block"),
    ({**ROUTING, "model.routing.blocks": "[2,0]"}, r"'model.routing.blocks' must give every layer >= 1"),
    ({**ROUTING, "model.routing.blocks": "[2,2,2]"}, r"'model.routing.blocks' lists 3 layer\(s\) but the encoder has 2 "
                                                     r"\(model.bilstm.layers\)"),
    ({**ROUTING, **SCRATCH, "model.routing.blocks": "[2]"}, r"has 2 \(model.scratch.layers\)"),
    ({**ROUTING, "model.routing.blocks": "many"}, "'model.routing.blocks'"),
    ({**ROUTING, "model.routing.collaboration": "others"}, "'model.routing.collaboration': 'others' is not one of"),
    ({**ROUTING, "model.routing.lr": 0}, "'model.routing.lr' must be > 0"),
    ({**ROUTING, "model.routing.history": -1}, r"'model.routing.history' must be >= 0 \(0 = every batch since"),
    ({"model.routing.history": 8}, "'model.routing.history' only applies to model.sharing=routing"),
    ({**ROUTING, "model.routing.router": "qlearning"}, r"'model.routing.router': 'qlearning' is not one of \['wpl', "
                                                        r"'reinforce', 'dispatched', 'gumbel', 'gumbel_mix'\]"),
    ({**ROUTING, "model.routing.router": "dispatched", "model.routing.agents": -1},
     r"'model.routing.agents' must be >= 0 \(0 = one agent per task\), got -1"),
    ({**ROUTING, "model.routing.agents": 2}, r"'model.routing.agents' only applies to model.routing.router=dispatched "
                                             r"\(model.routing.router is 'wpl'\)"),
    ({"model.routing.blocks": 3}, r"'model.routing.blocks' only applies to model.sharing=routing \(model.sharing is "
                                  r"'hard'\)"),
    ({"model.sharing": "roaming", "model.routing.pass_block": "true"},
     "'model.routing.pass_block' only applies to model.sharing=routing"),
    ({"model.routing.router": "reinforce"}, "'model.routing.router' only applies"),
    ({"model.sharing": "bottom", "model.routing.rho": 0.1}, "'model.routing.rho' only applies"),
    ({**ROUTING, "model.routing.exploration": 1.0}, r"'model.routing.exploration' must be in \[0, 1\), got 1.0"),
    ({**ROUTING, "model.routing.exploration_steps": -1}, "'model.routing.exploration_steps' must be >= 0"),
    ({**ROUTING, "model.routing.warmup_steps": -5}, "'model.routing.warmup_steps' must be >= 0"),
    ({**ROUTING, "model.routing.warmup": "fixed"}, r"'model.routing.warmup': 'fixed' is not one of \['per_task', "
                                                   r"'random'\]"),
    ({"model.routing.warmup_steps": 10}, "'model.routing.warmup_steps' only applies to model.sharing=routing"),
])
def test_bad_options_are_rejected_by_key(tiny_corpus, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _config(tiny_corpus, tmp_path, **overrides)


def test_pass_where_no_layer_can_be_skipped_is_rejected(tiny_corpus, tmp_path):
    """A 1-layer BiLSTM's only layer maps the word (+ char) embeddings to 2 x hidden: PASS would change the width."""
    with pytest.raises(ConfigError, match=r"'model.routing.pass_block': no encoder layer can be skipped \(PASS needs a "
                                          r"layer whose input width equals its output width 32; the layers' inputs "
                                          r"are \[\d+\]\)"):
        _config(tiny_corpus, tmp_path, **ROUTING, **{"model.routing.pass_block": "true", "model.bilstm.layers": 1})
    # where the embeddings happen to be as wide as the states, the first layer can be skipped
    model, _ = _model(_config(tiny_corpus, tmp_path, **ROUTING, **{
        "model.routing.pass_block": "true", "model.bilstm.layers": 1, "model.bilstm.word_dim": 32,
        "model.bilstm.char_filters": 0}))
    assert model.sharing.has_pass == [True]


# -- training, saving, reloading, resuming ---------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [
    {**ROUTING, "model.routing.pass_block": "true", "model.routing.lr": 0.5},
    {**ROUTING, **SCRATCH, "model.routing.router": "reinforce", "model.routing.blocks": "[3,2]",
     "train.optimizer": "adamw", "train.lr": 3e-3, "model.routing.lr": 0.5},
    {**ROUTING, "model.routing.router": "dispatched", "model.routing.agents": 2, "model.routing.pass_block": "true",
     "model.routing.lr": 0.5},
    {**ROUTING, **SCRATCH, "model.routing.router": "gumbel", "model.routing.pass_block": "true", "train.optimizer": "adamw",
     "train.lr": 3e-2},
    {**ROUTING, "model.routing.router": "gumbel_mix", "model.routing.pass_block": "true", "train.optimizer": "adamw",
     "train.lr": 3e-2},
])
@pytest.mark.slow
def test_trains_saves_and_reloads_with_identical_predictions_and_routing_map(tiny_corpus, tmp_path, extra, capsys):
    config = _config(tiny_corpus, tmp_path, **extra, **{"train.epochs": 2})
    results = run_training(config, log=_quiet)
    assert set(results["dev"]) == set(TASKS)
    assert_reloaded_model_scores_like_the_trained_one(results)
    folder = tmp_path / "model"
    routing = json.loads((folder / "routing.json").read_text())
    model = MultiTaskTagger.from_pretrained(folder)
    assert model.config == config.model
    s = model.sharing
    epochs = results["selected_epoch"]
    assert len(s.map_history) == epochs and len(routing["epochs"]) == epochs
    assert [h["sharing"]["routing/entropy"] for h in results["history"]]
    # I(task; block) per epoch and layer, logged and saved: between 0 and log2(3 tasks) bits
    assert [len(bits) for bits in routing["information_bits"]] == [2] * epochs
    assert routing["information_bits"][-1] == pytest.approx(task_block_information(routing["epochs"][-1]), abs=1e-6)
    assert all(0 <= b <= math.log2(3) + 1e-9 for bits in routing["information_bits"] for b in bits)
    assert results["history"][-1]["sharing"]["routing/information_layer2"] == pytest.approx(
        routing["information_bits"][-1][1], abs=1e-5)
    steps = 6  # 48 sentences / batch 8 per task and epoch
    for task in TASKS:  # every sentence of every epoch was routed once per layer
        for layer in range(2):
            assert sum(routing["epochs"][-1][task][layer]) == pytest.approx(1.0, abs=1e-5)
    assert s.usage.sum(-1).tolist() == [float(len(TASKS) * steps * 8 * epochs)] * 2
    if config.model.routing.router == "wpl":  # the policies moved away from uniform, and were saved
        assert set(routing["policy"]) == set(TASKS) and routing["greedy"]
        assert not torch.allclose(s.policy[:, 1, :3], torch.full((3, 3), 1 / 3))
    elif config.model.routing.router == "dispatched":  # every training sentence was dispatched to an agent
        assert set(routing["agents"]) == {"agent 0", "agent 1"} and set(routing["dispatch"]) == set(TASKS)
        assert s.dispatch_counts.sum().item() == len(TASKS) * steps * 8 * epochs and s.dispatcher.w2.any()
        assert not torch.allclose(s.policy[:, 1, :3], torch.full((2, 3), 1 / 3))
    elif config.model.routing.router in ("gumbel", "gumbel_mix"):  # the logits learned by backprop, and were saved
        assert set(routing["policy"]) == set(TASKS) and routing["greedy"] and s.route_logits.abs().sum() > 0
    else:
        assert any(mlp.w2.any() for mlp in s.routers)
    before = model.predict(SENTENCES)
    model.save_pretrained(tmp_path / "again")
    again = MultiTaskTagger.from_pretrained(tmp_path / "again")
    assert again.predict(SENTENCES) == before
    assert json.loads((tmp_path / "again" / "routing.json").read_text()) == routing
    a, b = load_file(str(folder / "model.safetensors")), load_file(str(tmp_path / "again" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert "Routing Networks: Adaptive Selection" in (folder / "README.md").read_text()
    png = draw_routing_map(folder, tmp_path / "map.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cli_main(["routing", "show", str(folder), "--png", str(tmp_path / "cli.png")])
    out = capsys.readouterr().out
    assert f"epoch {epochs}" in out and "ner layer 2:" in out and (tmp_path / "cli.png").is_file()
    bits = routing["information_bits"][-1]
    assert f"I(task; block): layer 1 {bits[0]:.3f} bits, layer 2 {bits[1]:.3f} bits" in out
    cli_main(["routing", "show", str(folder / "routing.json")])  # a routing.json on its own (benchmark records)
    assert capsys.readouterr().out == out.replace(f"wrote {tmp_path / 'cli.png'}\n", "")
    cli_main(["routing", "show", str(folder), "--epoch", "1"])
    first = capsys.readouterr().out
    shares = ", ".join(f"{name} {p:.3f}" for name, p in zip(routing["choices"][1], routing["epochs"][0]["ner"][1]))
    assert "epoch 1: share of training sentences" in first and f"ner layer 2: {shares}" in first
    with pytest.raises(ValueError, match=f"epoch {epochs + 1} is not in the routing map, which records epochs "
                                         f"1..{epochs}"):
        draw_routing_map(routing, tmp_path / "bad.png", epoch=epochs + 1)
    # the shares over the epochs are drawn under the heatmaps once two epochs are recorded
    one_epoch = draw_routing_map({**routing, "epochs": routing["epochs"][:1]}, tmp_path / "one.png")
    assert _png_height(png) > _png_height(one_epoch)


def _png_height(path) -> int:
    return int.from_bytes(path.read_bytes()[20:24], "big")  # the IHDR chunk: width, then height


@pytest.mark.parametrize("extra", [{}, {"model.routing.router": "reinforce", "model.routing.pass_block": "true"},
                                   {"model.routing.router": "dispatched"}, {"model.routing.history": 5},
                                   {"model.routing.collaboration": "per_task", "model.routing.history": 5,
                                    "model.routing.rho": -0.3},
                                   {"model.routing.warmup_steps": 20, "model.routing.exploration": 0.3,
                                    "model.routing.exploration_steps": 40},
                                   {"model.routing.router": "gumbel", "model.routing.pass_block": "true"},
                                   {"model.routing.router": "gumbel_mix", "model.routing.pass_block": "true"}])
@pytest.mark.slow
def test_resumed_run_ends_with_the_routers_of_an_uninterrupted_run(tiny_corpus, tmp_path, extra):
    # the differentiable routers learn at the optimiser's rate, not routing_lr
    gumbel = extra.get("model.routing.router") in ("gumbel", "gumbel_mix")
    extra = {**ROUTING, **extra, **({} if gumbel else {"model.routing.lr": 0.5}), "train.epochs": 3,
             "train.checkpoint_every": 4, "train.seed": 7}
    reference, resumed = train_interrupted_and_resumed(tiny_corpus, tmp_path, extra)

    router_state = [n for n in load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
                    if n.startswith("sharing.") and "blocks" not in n and "encoder" not in n]
    assert "sharing.rng_state" in router_state and "sharing.map_history" in router_state
    for folder in ("model", f"checkpoints/step_{54:08d}"):  # the selected model and the final state
        a, b = load_file(str(tmp_path / "a" / folder / "model.safetensors")), \
            load_file(str(tmp_path / "b" / folder / "model.safetensors"))
        assert a.keys() == b.keys()
        for name in router_state:
            assert torch.equal(a[name], b[name]), (folder, name)
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    final = load_file(str(tmp_path / "a" / f"checkpoints/step_{54:08d}" / "model.safetensors"))
    assert final["sharing.map_history"].shape[0] == 3
    assert (final["sharing.usage"].sum(-1) == 54 * 8).all()  # the loop handed every step's losses over
    assert [h["sharing"] for h in resumed["history"]] == [h["sharing"] for h in reference["history"]]
    assert resumed["dev"] == reference["dev"]
    assert json.loads((tmp_path / "a" / "model" / "routing.json").read_text()) == \
        json.loads((tmp_path / "b" / "model" / "routing.json").read_text())


@pytest.mark.slow
def test_a_run_crashed_before_its_first_epoch_end_resumes(tiny_corpus, tmp_path):
    """A checkpoint of epoch 1 holds no epoch of the routing map yet (a file holds no empty tensor): the resumed run
    starts the map afresh and ends as the uninterrupted one."""
    extra = {**ROUTING, "model.routing.lr": 0.5, "train.epochs": 2, "train.checkpoint_every": 4, "train.seed": 7}
    reference, resumed = train_interrupted_and_resumed(tiny_corpus, tmp_path, extra, crash_step=10)
    assert [h["sharing"] for h in resumed["history"]] == [h["sharing"] for h in reference["history"]]
    assert resumed["dev"] == reference["dev"]


def test_task_block_information_against_hand_computed_values():
    same = {"pos": [[0.5, 0.5]], "ner": [[0.5, 0.5]]}
    assert task_block_information(same) == [0.0]  # the task says nothing about the block
    own = {"pos": [[1.0, 0.0]], "ner": [[0.0, 1.0]]}
    assert task_block_information(own) == [1.0]  # two tasks, each its own block: 1 bit
    # p(block) = (0.75, 0.25); I = 1/2 [0.5 log2(0.5/0.75) + 0.5 log2(0.5/0.25)] + 1/2 [log2(1/0.75)]
    half = {"pos": [[0.5, 0.5]], "ner": [[1.0, 0.0]]}
    expected = 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)) + 0.5 * math.log2(1 / 0.75)
    assert task_block_information(half) == [pytest.approx(expected)]
    assert expected == pytest.approx(0.311278, abs=1e-6)
    # three tasks, three blocks, each its own: log2(3); a task absent from the epoch (zero shares) is left out
    three = {"a": [[1, 0, 0], [0.2, 0.8, 0]], "b": [[0, 1, 0], [0.2, 0.8, 0]], "c": [[0, 0, 1], [0.2, 0.8, 0]],
             "absent": [[0, 0, 0], [0, 0, 0]]}
    assert task_block_information(three) == [pytest.approx(math.log2(3)), pytest.approx(0.0, abs=1e-12)]
    assert task_block_information({"absent": [[0, 0]]}) == []


# -- warm-up with set routes, exploration floor (issue 25) -----------------------------------------------------------
def _train_passes(model, data, task, n):
    routes = []
    for _ in range(n):
        model.train()
        batch = _batch(model, data, task)
        model(batch, task)
        routes.append(model.sharing.last_routes.clone())
        model.sharing.observe_losses(task, torch.linspace(1.0, 8.0, batch.mask.shape[0]))
    return routes


def test_during_the_warm_up_routes_are_set_per_task_and_the_router_does_not_learn(tiny_corpus, tmp_path):
    model, data = _model(_config(tiny_corpus, tmp_path, **ROUTING, **{
        "model.routing.blocks": 2, "model.routing.warmup_steps": 4, "model.routing.lr": 0.5}))
    s = model.sharing
    policy = s.policy.clone()
    for task in ("pos", "chunk"):
        for routes in _train_passes(model, data, task, 2):  # task t on block t mod 2 at every layer
            assert (routes == TASKS.index(task) % 2).all()
    assert torch.equal(s.policy, policy) and int(s.steps) == 4
    assert s.usage.sum() > 0  # the set routes are counted in the maps
    _train_passes(model, data, "chunk", 1)  # the router learns from the fifth step on
    assert not torch.equal(s.policy, policy)
    card = model.save_pretrained(tmp_path / "m") / "README.md"
    assert "The first 4 training steps took set routes (task t on block t mod k)" in card.read_text()
    again = MultiTaskTagger.from_pretrained(tmp_path / "m")
    assert int(again.sharing.steps) == 5 and not again.sharing.warming_up()


def test_evaluation_follows_the_set_routes_of_a_per_task_warm_up_then_the_router(tiny_corpus, tmp_path):
    model, data = _model(_config(tiny_corpus, tmp_path, **ROUTING, **{
        "model.routing.blocks": 2, "model.routing.warmup_steps": 2, "model.routing.lr": 0.5}))
    s = model.sharing
    s.policy[:, :, 0] = 0.9  # an untrained router whose greedy routes all take block 0
    s.policy[:, :, 1] = 0.1

    def evaluation_routes(task):
        model.eval()
        with torch.no_grad():
            model(_batch(model, data, task), task)
        return s.last_routes

    for task in ("pos", "chunk"):
        assert (evaluation_routes(task) == TASKS.index(task) % 2).all()
        assert s.greedy_route(TASKS.index(task)) == [TASKS.index(task) % 2] * s.num_layers
    assert s.routing_map()["set_routes"]["chunk"] == [1] * s.num_layers  # routing.json and the card say so
    assert "set routes still hold" in "\n".join(s.card_section(model))
    _train_passes(model, data, "pos", 2)  # the warm-up is over: evaluation asks the router
    assert not s.warming_up()
    for task in ("pos", "chunk"):
        greedy = s.router.greedy_route(TASKS.index(task))
        assert s.greedy_route(TASKS.index(task)) == greedy
        assert evaluation_routes(task).flatten().tolist() == [g for g in greedy for _ in range(len(s.last_routes[0]))]


def test_a_random_warm_up_draws_every_choice_and_leaves_the_router_alone(tiny_corpus, tmp_path):
    model, data = _model(_config(tiny_corpus, tmp_path, **ROUTING, **{
        "model.routing.blocks": 2, "model.routing.pass_block": "true", "model.routing.warmup_steps": 6,
        "model.routing.warmup": "random"}))
    policy = model.sharing.policy.clone()
    routes = torch.cat([r.flatten() for r in _train_passes(model, data, "ner", 6)])
    assert set(routes.tolist()) == {0, 1, 2}  # both blocks and PASS of the layer that has one
    assert torch.equal(model.sharing.policy, policy)


def test_the_exploration_floor_mixes_uniform_routes_in_and_falls_to_zero(tiny_corpus, tmp_path):
    model, data = _model(_config(tiny_corpus, tmp_path, **ROUTING, **{
        "model.routing.blocks": 2, "model.routing.exploration": 0.5, "model.routing.exploration_steps": 10,
        "model.routing.lr": 1e-9}))
    s = model.sharing
    s.policy.zero_()
    s.policy[..., 0] = 1.0  # deterministic policies: block 0 everywhere
    assert s.exploration_rate() == 0.5
    routes = torch.cat([r.flatten() for r in _train_passes(model, data, "pos", 5)])
    share = float((routes == 1).double().mean())  # e / 2 of the routes, e falling from 0.5 to 0.3 over these steps
    assert 0.1 < share < 0.35
    s.steps.fill_(5)
    assert s.exploration_rate() == pytest.approx(0.25)
    s.steps.fill_(10)
    assert s.exploration_rate() == 0.0
    assert all((r == 0).all() for r in _train_passes(model, data, "pos", 2))
    model.eval()  # greedy at inference, whatever the floor
    s.steps.zero_()
    model(_batch(model, data, "pos"), "pos")
    assert (s.last_routes == 0).all()


def _drawn_routes_pass(model, data, task):
    """A training pass of ``task``'s batch: its features, the routes drawn, the batch (the router has seen the
    pass's losses, so the next pass may follow)."""
    model.train()
    batch = _batch(model, data, task)
    torch.manual_seed(0)
    features = model.sharing(batch, task)
    routes = model.sharing.last_routes.clone()
    model.sharing.observe_losses(task, torch.ones(batch.mask.shape[0]))
    return features, routes, batch


# -- the differentiable router -------------------------------------------------------------------------------------
def test_the_gumbel_router_passes_the_loss_to_the_task_route_logits_without_changing_the_forward_pass(tiny_corpus,
                                                                                                      tmp_path):
    model, data = _model(_config(tiny_corpus, tmp_path, **ROUTING, **{
        "model.routing.router": "gumbel", "model.routing.blocks": 3}))
    s = model.sharing
    with torch.no_grad():
        s.route_logits.normal_(0, 1, generator=torch.Generator().manual_seed(0))
    features, routes, batch = _drawn_routes_pass(model, data, "chunk")
    # the same features as the blocks of the drawn routes give without the straight-through weights
    x = s.encoder.embed(batch)
    for layer in range(s.num_layers):
        x = dispatch(s.encoder.run_layer, list(s.blocks[layer]), x, batch.mask, routes[layer], s.output_dim)
    assert torch.equal(features, s.encoder.finish(x, batch.mask))
    features.pow(2).sum().backward()
    t = TASKS.index("chunk")
    assert s.route_logits.grad[t].abs().sum() > 0
    assert not s.route_logits.grad[[i for i in range(len(TASKS)) if i != t]].any()  # other tasks' logits: untouched
    assert s.route_logits in set(model.parameters())  # trained by the model's optimiser
    # the draws follow the softmax of the logits; inference takes the argmax
    probs = torch.softmax(s.route_logits[t, 0].detach(), -1)
    draws = torch.cat([_train_passes(model, data, "chunk", 1)[0][0] for _ in range(40)])
    observed = torch.bincount(draws, minlength=3).double() / len(draws)
    assert torch.allclose(observed, probs.double(), atol=0.12)
    assert s.router.greedy_route(t) == [int(s.route_logits[t, layer].argmax()) for layer in range(s.num_layers)]
    assert "straight-through" in model.save_pretrained(tmp_path / "m").joinpath("README.md").read_text()


def test_the_gumbel_mix_router_gives_the_drawn_routes_features_and_their_blocks_gradients(tiny_corpus, tmp_path):
    """In value the chosen blocks' features; each block's weights get the gradient of the sentences that chose it,
    as along dispatched routes; the task's route logits a gradient, the other tasks' none."""
    model, data = _model(_config(tiny_corpus, tmp_path, **ROUTING, **{
        "model.routing.router": "gumbel_mix", "model.routing.blocks": 3}))
    s = model.sharing
    with torch.no_grad():
        s.route_logits.normal_(0, 1, generator=torch.Generator().manual_seed(0))
        for block in s.blocks[0]:  # blocks that differ (a fresh network's copies are equal)
            for p in block.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    features, routes, batch = _drawn_routes_pass(model, data, "chunk")
    features.pow(2).sum().backward()
    mixed = {name: p.grad.clone() if p.grad is not None else None for name, p in s.blocks.named_parameters()}
    model.zero_grad(set_to_none=True)
    x = s.encoder.embed(batch)
    for layer in range(s.num_layers):
        x = dispatch(s.encoder.run_layer, list(s.blocks[layer]), x, batch.mask, routes[layer], s.output_dim)
    dispatched = s.encoder.finish(x, batch.mask)
    torch.testing.assert_close(features, dispatched, rtol=1e-5, atol=1e-6)
    dispatched.pow(2).sum().backward()
    for name, p in s.blocks.named_parameters():
        if p.grad is None:  # no sentence chose the block
            assert mixed[name] is None or not mixed[name].any(), name
        else:
            torch.testing.assert_close(mixed[name], p.grad, rtol=1e-4, atol=1e-6)
    t = TASKS.index("chunk")
    model.zero_grad(set_to_none=True)
    s(batch, "chunk").pow(2).sum().backward()
    assert s.route_logits.grad[t].abs().sum() > 0
    assert not s.route_logits.grad[[i for i in range(len(TASKS)) if i != t]].any()
    assert "compares every block's output" in model.save_pretrained(tmp_path / "m").joinpath("README.md").read_text()


def test_a_block_no_sentence_chose_cannot_turn_the_gumbel_mix_output_into_nan(tiny_corpus, tmp_path):
    model, data = _model(_config(tiny_corpus, tmp_path, **ROUTING, **{
        "model.routing.router": "gumbel_mix", "model.routing.blocks": 3}))
    s = model.sharing
    with torch.no_grad():
        s.route_logits.copy_(torch.tensor([30.0, -30.0, -30.0]).expand_as(s.route_logits))  # block 1 every time
        for p in s.blocks[1][2].parameters():
            p.fill_(float("nan"))
    features, routes, _ = _drawn_routes_pass(model, data, "ner")
    assert (routes == 0).all() and torch.isfinite(features).all()
    features.sum().backward()
    assert torch.isfinite(s.route_logits.grad).all()


def test_the_gumbel_mix_logits_learn_nothing_from_equal_blocks(tiny_corpus, tmp_path):
    """The logits' gradient compares the blocks' outputs: copies that are still equal (a fresh network's) give
    none, however the loss depends on the features; the chosen-block scale of ``gumbel`` gives one all the same."""
    grads = {}
    for router in ("gumbel_mix", "gumbel"):
        model, data = _model(_config(tiny_corpus, tmp_path / router, **ROUTING, **{"model.routing.router": router}))
        model.train()
        model(_batch(model, data, "ner"), "ner").sum().backward()
        grads[router] = model.sharing.route_logits.grad[TASKS.index("ner")].abs().max()
    assert grads["gumbel_mix"] < 1e-6 * grads["gumbel"] and grads["gumbel"] > 0


def test_the_gumbel_router_is_refused_for_a_hugging_face_transformer(tiny_corpus, tmp_path):
    with pytest.raises(ConfigError, match="'gumbel' serves the bilstm and scratch encoders"):
        _config(tiny_corpus, tmp_path, **ROUTING, **{"model.routing.router": "gumbel", "model.encoder": "transformer"})


def test_the_gumbel_logits_do_not_learn_during_a_warm_up(tiny_corpus, tmp_path):
    model, data = _model(_config(tiny_corpus, tmp_path, **ROUTING, **{
        "model.routing.router": "gumbel", "model.routing.warmup_steps": 1}))
    s = model.sharing
    model.train()
    batch = _batch(model, data, "chunk")
    model(batch, "chunk").sum().backward()  # step 1: set routes
    assert s.route_logits.grad is None or not s.route_logits.grad.any()
    s.observe_losses("chunk", torch.ones(batch.mask.shape[0]))
    model(batch, "chunk").sum().backward()  # step 2: the router's own draws
    assert s.route_logits.grad[TASKS.index("chunk")].any()


def test_the_route_logits_train_at_their_own_learning_rate_in_a_group_of_their_own(tiny_corpus, tmp_path):
    """model.routing.logit_lr: the logits' own AdamW group, at that rate, scaled by the schedule as the others; a
    step moves them by about that rate (Adam's first step is lr x sign(grad)); the rest of the model keeps train.lr.
    (gumbel: its logits get a gradient from the first step, where gumbel_mix's see equal blocks.)"""
    from sparseshare.optim import build_optimizer

    config = _config(tiny_corpus, tmp_path, **ROUTING, **{
        "model.routing.router": "gumbel", "model.routing.logit_lr": 0.05, "train.optimizer": "adamw",
        "train.lr": 0.001})
    model, data = _model(config)
    s = model.sharing
    optimizer = build_optimizer(config, model)
    groups = [g for g in optimizer.param_groups if any(p is s.route_logits for p in g["params"])]
    assert len(groups) == 1 and groups[0]["lr"] == 0.05 and groups[0]["params"] == [s.route_logits]
    assert {g["lr"] for g in optimizer.param_groups if g is not groups[0]} == {0.001}
    model.train()
    batch = _batch(model, data, "chunk")
    before = s.route_logits.detach().clone()
    model(batch, "chunk").sum().backward()
    optimizer.step()
    moved = (s.route_logits.detach() - before)[TASKS.index("chunk")].abs()
    assert moved.max() == pytest.approx(0.05, rel=1e-3)
    plain_config = _config(tiny_corpus, tmp_path, **ROUTING, **{
        "model.routing.router": "gumbel", "train.optimizer": "adamw", "train.lr": 0.001})
    plain = build_optimizer(plain_config, _model(plain_config)[0])
    assert [g["lr"] for g in plain.param_groups] == [0.001]  # no logit_lr: one group, as before


@pytest.mark.parametrize("overrides,message", [
    ({"model.routing.router": "gumbel", "model.routing.rho": 0.1}, r"'model\.routing.rho' sets the reward or the step"),
    ({"model.routing.router": "gumbel", "model.routing.lr": 0.1}, r"'model\.routing.lr' sets the reward or the step"),
    ({"model.routing.exploration_steps": 100}, r"'model\.routing.exploration_steps' anneals model\.routing.exploration"),
    ({"model.routing.warmup": "random"}, r"'model\.routing.warmup' = 'random' sets the routes of a warm-up"),
    ({"model.routing.logit_lr": 0.01}, r"'model\.routing\.logit_lr' is the learning rate of the route logits .* "
                                       r"'wpl' learns from rewards"),
    ({"model.routing.router": "gumbel", "model.routing.logit_lr": 0}, r"'model\.routing\.logit_lr' must be > 0"),
])
def test_routing_options_that_would_be_ignored_are_refused(tiny_corpus, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _config(tiny_corpus, tmp_path, **ROUTING, **overrides)
