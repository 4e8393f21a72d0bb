"""Maximum Roaming (per-task unit masks that move during training) and cross-stitch networks (one column per task,
activations mixed after each layer): invariants, equivalences, gradients, bad configs, resume, save/reload.
Tiny fixtures only."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from sparseshare.config import ConfigError
from sparseshare.model import MultiTaskTagger
from sparseshare.recipes.train import run_training

from conftest import assert_reloaded_model_scores_like_the_trained_one, assert_reloads_identically
from conftest import train_interrupted_and_resumed
from conftest import TINY_SCRATCH as SCRATCH, TINY_TASKS as TASKS
from conftest import quiet as _quiet, tiny_batch as _batch, tiny_config as _config, tiny_model as _model

ROAMING = {"model.sharing": "roaming"}
CROSS = {"model.sharing": "cross_stitch"}


def _grads(model, data, task):
    model.zero_grad(set_to_none=True)
    model(_batch(model, data, task), task).sum().backward()
    return dict(model.named_parameters())


def _zero(p):
    return p.grad is None or not bool((p.grad != 0).any())


def _count(module):
    return sum(p.numel() for p in module.parameters())


# -- Maximum Roaming ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra,ratio,units,active", [
    ({}, 0.5, 32, 16), ({}, 0.34, 32, 11), ({}, 1.0, 32, 32), (SCRATCH, 0.5, 32, 16), (SCRATCH, 0.4, 32, 13)])
def test_roaming_initial_masks_cover_every_unit(tiny_corpus, tmp_path, extra, ratio, units, active):
    model, _ = _model(_config(tiny_corpus, tmp_path, **ROAMING, **extra, **{"model.roaming.ratio": ratio}))
    s = model.sharing
    assert s.masks.shape == (2, len(TASKS), units)  # bilstm: 2 x hidden outputs; scratch: model.scratch.ff units
    assert (s.masks.sum(-1) == active).all()
    assert s.masks.any(dim=1).all()  # every unit of every layer is used by some task
    assert torch.equal(s.visited, s.masks)
    assert s.roaming_progress() == pytest.approx(active / units)


def test_roaming_moves_one_unit_per_update_keeps_the_count_and_visits_everything(tiny_corpus, tmp_path):
    config = _config(tiny_corpus, tmp_path, **ROAMING, **{"model.roaming.delta": 3})
    model, _ = _model(config)
    s = model.sharing
    units, active = 32, 16
    step, previous = 0, s.masks.clone()
    for update in range(1, units - active + 1):
        for _ in range(3):
            step += 1
            s.after_step(step)
            if step % 3:
                assert torch.equal(s.masks, previous), step  # only every Δ-th step moves the masks
        assert (s.masks.sum(-1) == active).all()
        assert ((s.masks & ~previous).sum(-1) == 1).all()  # one unit on, one unit off, per layer and task
        assert ((previous & ~s.masks).sum(-1) == 1).all()
        assert (s.visited.sum(-1) == active + update).all()
        assert not (s.masks & ~s.visited).any()
        if update < units - active:
            assert s.roaming_progress() < 1.0
        previous = s.masks.clone()
    assert s.visited.all() and s.roaming_progress() == 1.0
    s.after_step(step + 3)  # nothing left to visit: the masks stay
    assert torch.equal(s.masks, previous)


def test_roaming_fixed_is_the_fixed_partition_baseline(tiny_corpus, tmp_path):
    """The masks roaming starts from (same seed), never moved."""
    model, _ = _model(_config(tiny_corpus, tmp_path, **ROAMING, **{"model.roaming.fixed": "true"}))
    roaming, _ = _model(_config(tiny_corpus, tmp_path, **ROAMING))
    model.sharing.initialize(7)
    roaming.sharing.initialize(7)
    before = model.sharing.masks.clone()
    assert torch.equal(before, roaming.sharing.masks)
    for step in range(1, 301):
        model.sharing.after_step(step)
        roaming.sharing.after_step(step)
    assert torch.equal(model.sharing.masks, before) and torch.equal(model.sharing.visited, before)
    assert not torch.equal(roaming.sharing.masks, before)  # 3 updates of the default delta 100


def test_roaming_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone(tiny_corpus, tmp_path):
    config = _config(tiny_corpus, tmp_path, **ROAMING, **{"model.roaming.delta": 1})

    def masks_after(seed, global_seed, updates=5):
        model, _ = _model(config, seed=global_seed)
        model.sharing.initialize(seed)
        initial = model.sharing.masks.clone()
        rng = torch.random.get_rng_state()
        for step in range(1, updates + 1):
            model.sharing.after_step(step)
        assert torch.equal(torch.random.get_rng_state(), rng)
        return initial, model.sharing.masks.clone()

    a, b, other = masks_after(5, 0), masks_after(5, 123), masks_after(6, 0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], other[0]) and not torch.equal(a[1], other[1])
    assert not torch.equal(a[0], a[1])


@pytest.mark.parametrize("extra", [{}, SCRATCH])
def test_roaming_with_ratio_one_is_hard_sharing(tiny_corpus, tmp_path, extra):
    """All-ones masks: the strategy's own composition of the encoder's parts equals the encoder's forward."""
    hard, data = _model(_config(tiny_corpus, tmp_path, **extra))
    roaming, _ = _model(_config(tiny_corpus, tmp_path, **ROAMING, **extra, **{"model.roaming.ratio": 1.0}), data, 1)
    missing, unexpected = roaming.load_state_dict(hard.state_dict(), strict=False)
    assert sorted(missing) == ["sharing.masks", "sharing.rng_state", "sharing.visited"] and not unexpected
    assert roaming.sharing.masks.all()
    batch = _batch(hard, data, "ner")
    expected = hard.sharing.encoder(batch)[-1]
    features = roaming.sharing.features_for_tasks(batch, TASKS)
    for task in TASKS:
        torch.testing.assert_close(features[task], expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(roaming.sharing(batch, task), expected, rtol=0, atol=1e-6)


def test_roaming_masked_units_get_zero_gradient_bilstm(tiny_corpus, tmp_path):
    model, data = _model(_config(tiny_corpus, tmp_path, **ROAMING))
    s = model.sharing
    for t, task in enumerate(TASKS):
        features = s(_batch(model, data, task), task)
        assert not features[..., ~s.masks[1, t]].any()  # switched-off top units are exactly zero
        params = _grads(model, data, task)
        off0, off1 = ~s.masks[0, t], ~s.masks[1, t]
        upper = [params[f"sharing.encoder.layers.1.lstm.weight_ih_l0{suffix}"] for suffix in ("", "_reverse")]
        for w in upper:  # layer 2's input weights from layer 1's switched-off units
            assert not w.grad[:, off0].any() and w.grad[:, ~off0].any(), task
        head = params[f"heads.{task}.proj.weight"]  # the head's weights from switched-off top units
        assert not head.grad[:, off1].any() and head.grad[:, ~off1].any(), task


def test_roaming_masked_feed_forward_units_get_zero_gradient_scratch(tiny_corpus, tmp_path):
    model, data = _model(_config(tiny_corpus, tmp_path, **ROAMING, **SCRATCH))
    s = model.sharing
    for t, task in enumerate(TASKS):
        params = _grads(model, data, task)
        for i in range(2):
            off = ~s.masks[i, t]
            w1 = params[f"sharing.encoder.layers.{i}.linear1.weight"].grad
            b1 = params[f"sharing.encoder.layers.{i}.linear1.bias"].grad
            w2 = params[f"sharing.encoder.layers.{i}.linear2.weight"].grad
            assert not w1[off].any() and not b1[off].any() and not w2[:, off].any(), (task, i)
            assert w1[~off].any() and w2[:, ~off].any(), (task, i)


def _expected_unit_weights(model, s, t, scratch):
    """{parameter name: bool mask} of task t's active units, written out from the layers' shapes."""
    expected = {}
    for i in range(2):
        units = s.masks[i, t]
        if scratch:
            w1 = f"sharing.encoder.layers.{i}.linear1"
            expected[f"{w1}.weight"] = units[:, None].expand(-1, 16)
            expected[f"{w1}.bias"] = units
            expected[f"sharing.encoder.layers.{i}.linear2.weight"] = units[None, :].expand(16, -1)
            continue
        for suffix, direction in (("", units[:16]), ("_reverse", units[16:])):
            rows = torch.cat([direction] * 4)  # hidden 16: rows g * 16 + u of gates i, f, g, o
            for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
                parameter = dict(model.named_parameters())[f"sharing.encoder.layers.{i}.lstm.{name}{suffix}"]
                expected[f"sharing.encoder.layers.{i}.lstm.{name}{suffix}"] = (
                    rows if parameter.dim() == 1 else rows[:, None].expand_as(parameter))
    return expected


@pytest.mark.parametrize("extra", [{}, SCRATCH])
def test_roaming_parameter_masks_hold_the_weights_of_each_task_active_units(tiny_corpus, tmp_path, extra):
    model, _ = _model(_config(tiny_corpus, tmp_path, **ROAMING, **extra))  # scratch: 32 feed-forward units
    s, names = model.sharing, {id(p): n for n, p in model.named_parameters()}
    assert s.masked_optimizer
    for t, task in enumerate(TASKS):
        got = {names[id(p)]: m for p, m in s.parameter_masks(task).items()}
        expected = _expected_unit_weights(model, s, t, bool(extra))
        assert got.keys() == expected.keys(), task
        for name, mask in expected.items():
            assert torch.equal(got[name], mask), (task, name)
    assert s.parameter_masks("ner") is s.parameter_masks("ner")  # built once while the masks stay
    before = s.parameter_masks("ner")
    tensors = {id(m) for m in before.values()}
    s.roam()  # the masks moved: the same tensors, changed in place (the optimiser caches one index set per tensor)
    after = {names[id(p)]: m for p, m in s.parameter_masks("ner").items()}
    assert s.parameter_masks("ner") is before and {id(m) for m in before.values()} == tensors
    for name, mask in _expected_unit_weights(model, s, TASKS.index("ner"), bool(extra)).items():
        assert torch.equal(after[name], mask), name


def test_an_encoder_that_does_not_name_its_units_weights_is_refused_for_masked_steps(tiny_corpus, tmp_path,
                                                                                     monkeypatch):
    from sparseshare.encoders import BiLSTMEncoder

    monkeypatch.delattr(BiLSTMEncoder, "unit_parameter_masks")  # the base class's: an encoder that does not say
    with pytest.raises(ConfigError, match="'model.roaming.masked_steps': this encoder does not say which weights"):
        _model(_config(tiny_corpus, tmp_path, **ROAMING))
    model, _ = _model(_config(tiny_corpus, tmp_path, **ROAMING, **{"model.roaming.masked_steps": "false"}))
    assert not model.sharing.masked_optimizer


def test_a_roaming_config_saved_before_masked_steps_keeps_unmasked_steps():
    from sparseshare.config import upgrade_saved_model_config

    assert upgrade_saved_model_config({"sharing": "roaming", "roaming_ratio": 0.5})["roaming"]["masked_steps"] is False
    assert upgrade_saved_model_config({"sharing": "roaming", "roaming_masked_steps": True})["roaming"]["masked_steps"]
    assert upgrade_saved_model_config({"sharing": "roaming", "roaming": {"masked_steps": True}})["roaming"]["masked_steps"]
    assert "roaming" not in upgrade_saved_model_config({"sharing": "hard", "roaming_masked_steps": True})


@pytest.mark.parametrize("masked", [True, False])
def test_a_roaming_step_moves_only_the_weights_of_the_task_active_units(tiny_corpus, tmp_path, masked):
    from sparseshare.optim import build_optimizer

    config = _config(tiny_corpus, tmp_path, **ROAMING, **{"model.roaming.masked_steps": str(masked).lower(),
                                                          "train.optimizer": "adamw", "train.lr": 0.01})
    model, data = _model(config)
    optimizer = build_optimizer(config, model)
    s, params = model.sharing, dict(model.named_parameters())
    name = "sharing.encoder.layers.0.lstm.weight_ih_l0"
    for task in ("pos", "ner"):  # pos's step gives every weight Adam moments; then a step of ner
        before = params[name].detach().clone()
        optimizer.zero_grad(set_to_none=True)
        model(_batch(model, data, task), task).sum().backward()
        if masked:
            optimizer.set_masks(s.parameter_masks(task))
        optimizer.step()
    off = ~_expected_unit_weights(model, s, TASKS.index("ner"), False)[name]
    moved = params[name].detach() != before
    assert moved[~off].any()
    # masked: ner's step left the weights of its switched-off units alone; unmasked: they moved (pos's Adam moments,
    # and in the BiLSTM ner's own gradient, through the recurrence that a switched-off unit still feeds)
    assert moved[off].any() != masked


@pytest.mark.slow
def test_roaming_resumed_run_ends_with_the_masks_of_an_uninterrupted_run(tiny_corpus, tmp_path):
    extra = {**ROAMING, "model.roaming.delta": 4, "train.epochs": 3, "train.checkpoint_every": 4,
             "train.seed": 7}
    reference, resumed = train_interrupted_and_resumed(tiny_corpus, tmp_path, extra)

    for folder in ("model", f"checkpoints/step_{54:08d}"):  # the selected model and the final state
        a, b = load_file(str(tmp_path / "a" / folder / "model.safetensors")), \
            load_file(str(tmp_path / "b" / folder / "model.safetensors"))
        assert a.keys() == b.keys()
        for name in ("sharing.masks", "sharing.visited", "sharing.rng_state"):
            assert torch.equal(a[name], b[name]), (folder, name)
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    final = load_file(str(tmp_path / "a" / f"checkpoints/step_{54:08d}" / "model.safetensors"))
    assert (final["sharing.visited"].sum(-1) == 16 + 54 // 4).all()  # the loop called after_step every step
    progress = [h["sharing"]["roaming/progress"] for h in reference["history"]]
    assert progress == [h["sharing"]["roaming/progress"] for h in resumed["history"]]
    assert progress == sorted(progress) and progress[0] < progress[-1]
    assert resumed["dev"] == reference["dev"]


# -- cross-stitch --------------------------------------------------------------------------------------------
def test_cross_stitch_mixing_starts_at_alpha(tiny_corpus, tmp_path):
    model, _ = _model(_config(tiny_corpus, tmp_path, **CROSS, **{"model.cross_stitch.init": 0.8}))
    mixing = model.sharing.mixing.detach()
    assert mixing.shape == (2, 3, 3)
    expected = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    for layer in mixing:
        torch.testing.assert_close(layer, expected)


def _single_state(cross_state: dict, task: str, scratch: bool) -> dict:
    """The cross-stitch model's weights seen by one task's column, renamed for a plain hard-sharing encoder."""
    out = {}
    for name, value in cross_state.items():
        if name.startswith("sharing.encoder."):
            out[name] = value
        elif name.startswith(f"sharing.columns.{task}."):
            out["sharing.encoder.layers." + name[len(f"sharing.columns.{task}."):]] = value
        elif scratch and name.startswith(f"sharing.norms.{task}."):
            out["sharing.encoder.norm." + name[len(f"sharing.norms.{task}."):]] = value
    return out


@pytest.mark.parametrize("extra", [{}, SCRATCH])
def test_cross_stitch_with_identity_mixing_is_independent_single_task_encoders(tiny_corpus, tmp_path, extra):
    cross, data = _model(_config(tiny_corpus, tmp_path, **CROSS, **extra, **{"model.cross_stitch.init": 1.0}))
    with torch.no_grad():  # make the columns differ, as training would
        for task in TASKS[1:]:
            for p in cross.sharing.columns[task].parameters():
                p.add_(0.1 * torch.randn_like(p))
    batch = _batch(cross, data, "pos")
    features = cross.sharing.features_for_tasks(batch, TASKS)
    hard, _ = _model(_config(tiny_corpus, tmp_path, **extra), data)
    for task in TASKS:
        state = _single_state(cross.state_dict(), task, bool(extra))
        missing, _ = hard.load_state_dict(state, strict=False)
        assert not [n for n in missing if n.startswith("sharing.")]
        expected = hard.sharing.encoder(batch)[-1]
        torch.testing.assert_close(features[task], expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(cross.sharing(batch, task), expected, rtol=0, atol=1e-6)
    assert not torch.equal(features["pos"], features["ner"])


@pytest.mark.parametrize("extra", [{}, {"model.bilstm.layers": 3}, SCRATCH])
def test_cross_stitch_parameter_count_is_one_column_per_task_plus_mixing(tiny_corpus, tmp_path, extra):
    hard, data = _model(_config(tiny_corpus, tmp_path, **extra))
    cross, _ = _model(_config(tiny_corpus, tmp_path, **CROSS, **extra), data)
    encoder = hard.sharing.encoder
    column = _count(encoder.layers) + (_count(encoder.norm) if extra == SCRATCH else 0)
    shared = _count(encoder) - column  # the embeddings (scratch: + input projection and positions)
    layers = encoder.num_layers
    assert column > 0 and shared > 0
    assert _count(cross.sharing) == shared + len(TASKS) * column + layers * len(TASKS) ** 2
    assert _count(cross) - _count(cross.sharing) == _count(hard) - _count(hard.sharing)  # the same heads
    ids = [{id(p) for p in cross.sharing.columns[t].parameters()} for t in TASKS]
    assert not ids[0] & ids[1] and not ids[1] & ids[2]  # separate weights


@pytest.mark.parametrize("extra", [{}, SCRATCH])
def test_cross_stitch_gradients_reach_other_columns_only_when_mixing(tiny_corpus, tmp_path, extra):
    for alpha, mixes in ((0.9, True), (1.0, False)):
        model, data = _model(_config(tiny_corpus, tmp_path, **CROSS, **extra, **{"model.cross_stitch.init": alpha}))
        names = [n for n, _ in model.named_parameters()]
        params = _grads(model, data, "pos")
        assert not _zero(params["sharing.mixing"])
        for task in TASKS:
            column = [n for n in names if n.startswith(f"sharing.columns.{task}.0.")]
            assert column
            if task == "pos" or mixes:
                assert all(not _zero(params[n]) for n in column), (alpha, task)
            else:
                assert all(_zero(params[n]) for n in column), (alpha, task)
        embeddings = [n for n in names if n.startswith("sharing.encoder.embedder.words.")]
        assert embeddings and all(not _zero(params[n]) for n in embeddings)


def test_cross_stitch_runs_each_column_once_for_all_tasks(tiny_corpus, tmp_path):
    model, data = _model(_config(tiny_corpus, tmp_path, **CROSS))
    batch = _batch(model, data, "pos")
    calls = []
    for task in TASKS:
        model.sharing.columns[task][0].register_forward_hook(lambda *args: calls.append(1))
    features = model.sharing.features_for_tasks(batch, TASKS)
    assert len(calls) == len(TASKS)
    for task in TASKS:
        torch.testing.assert_close(features[task], model.sharing(batch, task), rtol=0, atol=1e-6)
    with pytest.raises(NotImplementedError, match="not one encoder that could be exported"):
        model.sharing.task_encoder_state("pos")


# -- configuration -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,message", [
    ({**ROAMING, "model.roaming.ratio": 0}, r"'model.roaming.ratio' must be in \(0, 1\], got 0"),
    ({**ROAMING, "model.roaming.ratio": 1.5}, r"'model.roaming.ratio' must be in \(0, 1\]"),
    ({**ROAMING, "model.roaming.ratio": -0.1}, r"'model.roaming.ratio' must be in \(0, 1\]"),
    ({**ROAMING, "model.roaming.ratio": 0.3}, r"'model.roaming.ratio' \(0.3\) times the number of tasks \(3\)"),
    ({**ROAMING, "model.roaming.delta": 0}, r"'model.roaming.delta' must be >= 1 \(training steps between mask "
                                            r"updates; model.roaming.fixed: true switches roaming off\), got 0"),
    ({**ROAMING, "model.roaming.delta": -1}, r"'model.roaming.delta' must be >= 1"),
    ({**ROAMING, "model.roaming.fixed": "sometimes"}, "'model.roaming.fixed'"),
    ({**CROSS, "model.roaming.fixed": "true"}, r"'model.roaming.fixed' only applies to model.sharing=roaming"),
    ({**ROAMING, "model.roaming.fixed": "true", "model.roaming.delta": 5},
     r"'model.roaming.delta' \(5\) has no effect with model.roaming.fixed: true"),
    ({**ROAMING, "model.roaming.delta": 1.5}, "'model.roaming.delta'"),
    ({**ROAMING, "model.roaming.delta": "often"}, "'model.roaming.delta'"),
    ({"model.roaming.ratio": 0.4}, "'model.roaming.ratio' only applies to model.sharing=roaming"),
    ({"model.roaming.masked_steps": "false"}, "'model.roaming.masked_steps' only applies to model.sharing=roaming"),
    ({**CROSS, "model.roaming.delta": 5}, r"'model.roaming.delta' only applies to model.sharing=roaming \(model"),
    ({"model.cross_stitch.init": 0.5}, "'model.cross_stitch.init' only applies to model.sharing=cross_stitch"),
    ({**ROAMING, "model.cross_stitch.init": 0.5}, "'model.cross_stitch.init' only applies"),
    ({**CROSS, "model.cross_stitch.init": 1.2}, r"'model.cross_stitch.init' must be in \[0, 1\]"),
])
def test_bad_options_are_rejected_by_key(tiny_corpus, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _config(tiny_corpus, tmp_path, **overrides)


def test_a_fixed_partition_saved_as_delta_zero_loads_and_resumes_as_roaming_fixed(tiny_corpus, tmp_path):
    """Before model.roaming.fixed, the fixed partition was saved as roaming_delta: 0 (model folders, the config.yaml
    of checkpointed runs); a new config with Δ = 0 is still an error."""
    from sparseshare.training.checkpoints import check_resume_config

    config = _config(tiny_corpus, tmp_path, **ROAMING, **{"model.roaming.fixed": "true"})
    model, _ = _model(config)
    folder = model.save_pretrained(tmp_path / "model")
    saved = json.loads((folder / "config.json").read_text())
    saved["model"].update({f"roaming_{key}": value for key, value in saved["model"].pop("roaming").items()})
    saved["model"].pop("roaming_fixed")  # the flat spelling of sparseshare before model.roaming existed
    saved["model"]["roaming_delta"] = 0
    (folder / "config.json").write_text(json.dumps(saved))
    loaded = MultiTaskTagger.from_pretrained(folder)
    assert loaded.config == config.model and loaded.sharing.delta == 0
    old_run = config.to_dict()
    old_run["model"].update({f"roaming_{key}": value for key, value in old_run["model"].pop("roaming").items()})
    old_run["model"].pop("roaming_fixed")
    old_run["model"]["roaming_delta"] = 0
    check_resume_config(old_run, config.to_dict())  # the same run, in the old spelling: resumable
    with pytest.raises(ValueError, match=r"model.roaming.fixed: True -> False"):
        check_resume_config(old_run, _config(tiny_corpus, tmp_path, **ROAMING).to_dict())


def test_run_training_validates_a_config_built_in_python(tiny_corpus, tmp_path):
    """Without the check, roaming_ratio 2 would quietly give every task every unit (hard sharing)."""
    config = _config(tiny_corpus, tmp_path, **ROAMING)
    config.model.roaming.ratio = 2.0
    with pytest.raises(ConfigError, match=r"'model.roaming.ratio' must be in \(0, 1\], got 2.0"):
        run_training(config, log=_quiet)
    assert not (tmp_path / "model").exists()


def test_a_ratio_too_small_for_the_units_is_rejected_when_built(tiny_corpus, tmp_path):
    """p x T >= 1 passes the config check, but round(0.34 x 16) = 5 units x 3 tasks cannot cover 16 units."""
    config = _config(tiny_corpus, tmp_path, **ROAMING, **{"model.roaming.ratio": 0.34, "model.bilstm.hidden": 8})
    with pytest.raises(ConfigError, match=r"'model.roaming.ratio' \(0.34\) gives 5 of 16 units"):
        _model(config)


# -- training, saving and reloading --------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [
    {**ROAMING, "model.roaming.delta": 2},
    {**ROAMING, **SCRATCH, "model.roaming.delta": 1, "train.optimizer": "adamw", "train.lr": 3e-3},
    {**CROSS},
    {**CROSS, **SCRATCH, "train.optimizer": "adamw", "train.lr": 3e-3},
])
def test_trains_saves_and_reloads_with_identical_predictions(tiny_corpus, tmp_path, extra):
    config = _config(tiny_corpus, tmp_path, **extra, **{"train.epochs": 1})
    results = run_training(config, log=_quiet)
    assert set(results["dev"]) == set(TASKS)
    folder = tmp_path / "model"
    assert json.loads((folder / "config.json").read_text())["model"]["sharing"] == extra["model.sharing"]
    model = assert_reloads_identically(folder, tmp_path, config)
    assert_reloaded_model_scores_like_the_trained_one(results)
    again, a = MultiTaskTagger.from_pretrained(tmp_path / "again"), load_file(str(folder / "model.safetensors"))
    card = (folder / "README.md").read_text()
    assert ("Maximum Roaming" if extra["model.sharing"] == "roaming" else "Cross-stitch Networks") in card
    if extra["model.sharing"] == "roaming":  # the masks moved in training and were saved and loaded with it
        assert "sharing.masks" in a and torch.equal(again.sharing.masks, a["sharing.masks"])
        assert again.sharing.roaming_progress() > config.model.roaming.ratio
        assert results["history"][-1]["sharing"]["roaming/progress"] == again.sharing.roaming_progress()
    else:  # the mixing was trained away from its initialisation
        assert not torch.equal(a["sharing.mixing"], model.sharing.mixing.new_tensor(
            [[[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]] * 2))


@pytest.mark.parametrize("cut", [True, False])
def test_a_bilstm_unit_switched_off_for_a_task_takes_no_part_in_its_pass(tiny_corpus, tmp_path, cut):
    model, data = _model(_config(tiny_corpus, tmp_path, **ROAMING, **{"model.roaming.cut_recurrence": str(cut).lower()}))
    s, params = model.sharing, dict(model.named_parameters())
    t = TASKS.index("ner")
    batch = _batch(model, data, "ner")
    model.train()
    model(batch, "ner").sum().backward()
    for name, mask in _expected_unit_weights(model, s, t, False).items():
        assert (params[name].grad[~mask] == 0).all() == cut, name
        assert params[name].grad[mask].abs().sum() > 0, name
    model.eval()
    with torch.no_grad():
        before = s(batch, "ner")
        for name, mask in _expected_unit_weights(model, s, t, False).items():
            params[name][~mask] = 0.5  # new weights for ner's switched-off units (their rows of every gate)
        after = s(batch, "ner")
    # cut: those units compute nothing that ner reads; not cut: their states still feed ner's active units
    assert torch.equal(after, before) == cut


def test_a_roaming_config_saved_before_the_cut_recurrence_keeps_the_recurrence():
    from sparseshare.config import upgrade_saved_model_config

    assert upgrade_saved_model_config({"sharing": "roaming", "roaming_ratio": 0.5})["roaming"]["cut_recurrence"] is False
    assert upgrade_saved_model_config({"sharing": "roaming", "roaming_cut_recurrence": True})["roaming"]["cut_recurrence"]
    assert "roaming" not in upgrade_saved_model_config({"sharing": "hard"})


def test_roaming_that_keeps_coverage_never_leaves_a_unit_to_no_task(tiny_corpus, tmp_path):
    uncovered = {}
    for keep in (False, True):
        config = _config(tiny_corpus, tmp_path, **ROAMING, **{"model.roaming.delta": 1, "model.roaming.ratio": 0.4,
                                                              "model.roaming.keep_coverage": keep})
        model, _ = _model(config)
        s = model.sharing
        counts = []
        for step in range(1, 40):
            s.after_step(step)
            assert (s.masks.sum(-1) == 13).all()  # each task keeps its number of units either way
            counts.append(s.uncovered_units())
        uncovered[keep] = counts
        if keep:
            assert s.roaming_progress() > 0.9  # the moves still happen (a task without a shared unit skips one)
    assert max(uncovered[True]) == 0 and max(uncovered[False]) > 0
    with pytest.raises(ConfigError, match=r"'model.roaming.keep_coverage'.*cover each unit exactly once"):
        _model(_config(tiny_corpus, tmp_path, tasks="[pos,ner]", **ROAMING, **{
            "model.roaming.ratio": 0.5, "model.roaming.keep_coverage": True}))
    with pytest.raises(ConfigError, match=r"'model.roaming.keep_coverage' only applies to model.sharing=roaming"):
        _config(tiny_corpus, tmp_path, **{"model.roaming.keep_coverage": True})
