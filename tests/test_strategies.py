"""Hierarchical sharing (tasks read different encoder layers) and separate bottom layers (each task owns the
lowest encoder layers, the upper ones are shared): equivalences, gradients, parameter counts, bad configs,
training and reloading. Tiny fixtures only."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from sparseshare.config import ConfigError, load_config
from sparseshare.data.vocab import Vocab
from sparseshare.model import MultiTaskTagger
from sparseshare.training.data import build_model, load_task_data
from sparseshare.training.checkpoints import check_resume_config
from sparseshare.recipes.train import run_training
from sparseshare.sharing.private_embedder import copies_of_shared_parts

from conftest import assert_reloaded_model_scores_like_the_trained_one, assert_reloads_identically
from conftest import TINY_SCRATCH as SCRATCH, TINY_SENTENCES as SENTENCES, TINY_TASKS as TASKS
from conftest import quiet as _quiet, tiny_batch as _batch, tiny_config as _config, tiny_model as _model



def _grads(model, data, task):
    model.zero_grad(set_to_none=True)
    model(_batch(model, data, task), task).sum().backward()
    return {n: p.grad for n, p in model.sharing.named_parameters()}


def _has_grad(grad):
    return grad is not None and bool((grad != 0).any())


# -- hierarchical ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("task_layers", ["{}", "{pos: 2, chunk: 2, ner: 2}"])
def test_hierarchical_with_every_task_on_the_top_layer_is_hard_sharing(tiny_corpus, tmp_path, task_layers):
    hard, data = _model(_config(tiny_corpus, tmp_path))
    config = _config(tiny_corpus, tmp_path, **{"model.sharing": "hierarchical", "model.hierarchical.task_layers": task_layers})
    hierarchical, _ = _model(config, data, seed=1)
    hierarchical.load_state_dict(hard.state_dict())  # strict: the same parameter names
    batch = _batch(hard, data, "ner")
    expected = hard.sharing.features_for_tasks(batch, TASKS)
    got = hierarchical.sharing.features_for_tasks(batch, TASKS)
    for task in TASKS:
        assert torch.equal(got[task], expected[task]), task
        assert torch.equal(hierarchical.sharing(batch, task), expected[task]), task
        own = _batch(hard, data, task)  # the task's labels, for its loss
        assert torch.equal(hierarchical(own, task), hard(own, task)), task
    assert hierarchical.predict(SENTENCES) == hard.predict(SENTENCES)


def test_a_task_reading_layer_1_gets_no_gradient_from_layer_2(tiny_corpus, tmp_path):
    config = _config(tiny_corpus, tmp_path, **{"model.sharing": "hierarchical", "model.hierarchical.task_layers.pos": 1})
    model, data = _model(config)
    assert model.sharing.task_layers == {"pos": 1, "chunk": 2, "ner": 2}
    upper = [n for n, _ in model.sharing.named_parameters() if n.startswith("encoder.layers.1.")]
    lower = [n for n, _ in model.sharing.named_parameters() if n.startswith("encoder.layers.0.")]
    assert upper and lower
    pos = _grads(model, data, "pos")
    assert not any(_has_grad(pos[n]) for n in upper)
    assert all(_has_grad(pos[n]) for n in lower)
    ner = _grads(model, data, "ner")
    assert all(_has_grad(ner[n]) for n in upper + lower)


def test_hierarchical_runs_the_encoder_once_for_all_tasks(tiny_corpus, tmp_path):
    config = _config(tiny_corpus, tmp_path, **{"model.sharing": "hierarchical", "model.hierarchical.task_layers.pos": 1})
    model, data = _model(config)
    batch = _batch(model, data, "pos")
    layers = model.sharing.encoder(batch)
    calls = []
    model.sharing.encoder.register_forward_hook(lambda *args: calls.append(1))
    features = model.sharing.features_for_tasks(batch, TASKS)
    assert len(calls) == 1
    assert torch.equal(features["pos"], layers[0]) and not torch.equal(features["pos"], layers[1])
    assert torch.equal(features["ner"], layers[1]) and torch.equal(features["chunk"], layers[1])
    assert torch.equal(model.sharing(batch, "pos"), layers[0])


def test_hierarchical_exports_only_tasks_on_the_top_layer(tiny_corpus, tmp_path):
    config = _config(tiny_corpus, tmp_path, **{"model.sharing": "hierarchical", "model.hierarchical.task_layers.pos": 1})
    model, _ = _model(config)
    assert model.sharing.task_encoder_state("ner").keys() == model.sharing.encoder.state_dict().keys()
    with pytest.raises(NotImplementedError, match="task 'pos' reads encoder layer 1 of 2"):
        model.sharing.task_encoder_state("pos")


@pytest.mark.parametrize("overrides,message", [
    ({"model.sharing": "hierarchical", "model.hierarchical.task_layers.pos": 0}, "'model.hierarchical.task_layers.pos' must be a 1-based"),
    ({"model.sharing": "hierarchical", "model.hierarchical.task_layers.pos": -1}, "'model.hierarchical.task_layers.pos' must be a 1-based"),
    ({"model.sharing": "hierarchical", "model.hierarchical.task_layers.ner": 3},
     r"'model.hierarchical.task_layers.ner' must be <= the encoder depth 2 \(model.bilstm.layers\)"),
    ({"model.sharing": "hierarchical", "model.hierarchical.task_layers.ner": 3, **SCRATCH},
     r"'model.hierarchical.task_layers.ner' must be <= the encoder depth 2 \(model.scratch.layers\)"),
    ({"model.sharing": "hierarchical", "model.hierarchical.task_layers.upos": 1},
     r"'model.hierarchical.task_layers.upos': 'upos' is not one of the model's tasks"),
    ({"model.sharing": "hierarchical", "model.hierarchical.task_layers.pos": "low"}, "'model.hierarchical.task_layers.pos'"),
    ({"model.hierarchical.task_layers.pos": 1}, "'model.hierarchical.task_layers' only applies to model.sharing=hierarchical"),
    ({"model.sharing": "sparse", "model.hierarchical.task_layers.pos": 1}, "'model.hierarchical.task_layers' only applies"),
    ({"model.sharing": "bottom", "model.bottom.layers": 0}, "'model.bottom.layers' must be >= 1 and < the encoder"),
    ({"model.sharing": "bottom", "model.bottom.layers": 2},
     r"'model.bottom.layers' must be .* depth 2 \(model.bilstm.layers\), so that .* got 2"),
    ({"model.sharing": "bottom", "model.bilstm.layers": 1}, r"'model.bottom.layers' .* depth 1 .* got 1"),
    ({"model.sharing": "bottom", "model.bottom.layers": 3, **SCRATCH}, r"depth 2 \(model.scratch.layers\)"),
    ({"model.bottom.layers": 2}, "'model.bottom.layers' only applies to model.sharing=bottom"),
])
def test_bad_layer_options_are_rejected_by_key(tiny_corpus, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _config(tiny_corpus, tmp_path, **overrides)


def test_the_built_encoder_depth_is_checked_again(tiny_corpus, tmp_path):
    """A config that skipped validation (e.g. a hand-edited model folder) is caught when the model is built."""
    config = _config(tiny_corpus, tmp_path, **{"model.sharing": "hierarchical"})
    data = load_task_data(config)
    config.model.hierarchical.task_layers = {"pos": 3}
    with pytest.raises(ConfigError, match=r"'model.hierarchical.task_layers.pos' must be <= the encoder depth 2, got 3"):
        build_model(config, data)
    config.model.hierarchical.task_layers = {"upos": 1}
    with pytest.raises(ConfigError, match="'model.hierarchical.task_layers.upos'"):
        build_model(config, data)
    config.model.sharing, config.model.hierarchical.task_layers = "bottom", {}
    config.model.bottom.layers = 2  # the section of a strategy selected after construction keeps what is set on it
    assert config.model.bottom.layers == 2
    with pytest.raises(ConfigError, match=r"'model.bottom.layers' .* depth 2 \(model.bilstm.layers\)"):
        build_model(config, data)


def test_hierarchical_on_a_transformer_encoder(tiny_corpus, tmp_path):
    """A tiny randomly initialised BERT (3 layers) with MiniLM's tokenizer: each task reads its layer, and a
    layer beyond the depth, which only the built encoder knows, is refused by key."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from sparseshare.encoders.transformer import resolve_model_path

    config = _config(tiny_corpus, tmp_path, **{"model.encoder": "transformer", "model.sharing": "hierarchical",
                                               "model.hierarchical.task_layers.pos": 2, "model.transformer.dropout": 0.0})
    data = load_task_data(config)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(config.model.transformer.name_or_path))
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=3,
                                num_attention_heads=2, intermediate_size=32))

    def build():
        return MultiTaskTagger(config.model, [d.spec for d in data.values()],
                               {n: d.labels.itos for n, d in data.items()}, Vocab([]), Vocab([]),
                               checkpoint_parts=(tokenizer, bert)).eval()

    model = build()
    batch = model.featurizer.collate(SENTENCES)
    with torch.no_grad():
        layers = model.sharing.encoder(batch)
        features = model.sharing.features_for_tasks(batch, TASKS)
    assert len(layers) == 3
    assert torch.equal(features["pos"], layers[1]) and torch.equal(features["ner"], layers[2])
    config.model.hierarchical.task_layers = {"pos": 4}
    with pytest.raises(ConfigError, match=r"'model.hierarchical.task_layers.pos' must be <= the encoder depth 3, got 4"):
        build()


# -- separate bottom layers ------------------------------------------------------------------------------
def _bottom_state_from_hard(state: dict, tasks: list[str], k: int) -> dict:
    """Hard sharing's weights renamed for the bottom strategy: every task's bottom = hard's lowest k layers."""
    out = {}
    for name, value in state.items():
        prefix = "sharing.encoder.layers."
        if not name.startswith(prefix):
            out[name] = value
            continue
        index, rest = name[len(prefix):].split(".", 1)
        if int(index) < k:
            out.update({f"sharing.bottom.{task}.{index}.{rest}": value for task in tasks})
        else:
            out[f"sharing.top.{int(index) - k}.{rest}"] = value
    return out


@pytest.mark.parametrize("extra,k", [({}, 1), ({"model.bilstm.layers": 3}, 2), (SCRATCH, 1),
                                     ({**SCRATCH, "model.scratch.layers": 3}, 2)])
def test_bottom_layers_with_identical_bottoms_are_hard_sharing(tiny_corpus, tmp_path, extra, k):
    """The strategy composes the encoder's parts itself; with every task's bottom equal to hard sharing's
    lowest layers it computes exactly hard sharing's features (guards the composition against drifting from
    the encoders' own forward)."""
    hard, data = _model(_config(tiny_corpus, tmp_path, **extra))
    bottom, _ = _model(_config(tiny_corpus, tmp_path, **{"model.sharing": "bottom", "model.bottom.layers": k,
                                                         **extra}), data, seed=1)
    bottom.load_state_dict(_bottom_state_from_hard(hard.state_dict(), TASKS, k))  # strict
    batch = _batch(hard, data, "chunk")
    expected = hard.sharing.encoder(batch)[-1]
    features = bottom.sharing.features_for_tasks(batch, TASKS)
    for task in TASKS:
        assert torch.equal(features[task], expected), task
        assert torch.equal(bottom.sharing(batch, task), expected), task


@pytest.mark.parametrize("extra,k", [({}, 1), ({"model.bilstm.layers": 3}, 2), (SCRATCH, 1)])
def test_bottom_parameter_count_is_hard_plus_one_bottom_per_extra_task(tiny_corpus, tmp_path, extra, k):
    hard, data = _model(_config(tiny_corpus, tmp_path, **extra))
    bottom, _ = _model(_config(tiny_corpus, tmp_path, **{"model.sharing": "bottom", "model.bottom.layers": k,
                                                         **extra}), data)
    per_task = sum(p.numel() for layer in hard.sharing.encoder.layers[:k] for p in layer.parameters())
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert per_task > 0
    assert count(bottom) == count(hard) + (len(TASKS) - 1) * per_task
    assert len(bottom.sharing.top) == bottom.sharing.num_layers - k
    assert all(len(bottom.sharing.bottom[t]) == k for t in TASKS)
    assert len(bottom.sharing.encoder.layers) == 0  # the originals were moved, not kept as unused weights
    # every task's bottom is its own copy, not a shared module
    first = {id(p) for p in bottom.sharing.bottom["pos"].parameters()}
    assert not first & {id(p) for p in bottom.sharing.bottom["ner"].parameters()}


@pytest.mark.parametrize("extra", [{}, SCRATCH])
def test_bottom_layers_get_gradients_from_their_task_only_and_shared_layers_from_all(tiny_corpus, tmp_path, extra):
    model, data = _model(_config(tiny_corpus, tmp_path, **{"model.sharing": "bottom", **extra}))
    names = [n for n, _ in model.sharing.named_parameters()]
    top = [n for n in names if n.startswith("top.")]
    embeddings = [n for n in names if n.startswith("encoder.embedder.words.")]
    assert top and embeddings
    for task in TASKS:
        grads = _grads(model, data, task)
        for other in TASKS:
            own = [n for n in names if n.startswith(f"bottom.{other}.")]
            assert own
            if other == task:
                assert all(_has_grad(grads[n]) for n in own), (task, other)
            else:
                assert not any(_has_grad(grads[n]) for n in own), (task, other)
        assert all(_has_grad(grads[n]) for n in top + embeddings), task


def test_bottom_embeds_once_per_batch(tiny_corpus, tmp_path):
    model, data = _model(_config(tiny_corpus, tmp_path, **{"model.sharing": "bottom"}))
    for task in TASKS[1:]:  # make the bottoms differ
        for p in model.sharing.bottom[task].parameters():
            p.data.add_(0.1 * torch.randn_like(p))
    batch = _batch(model, data, "pos")
    calls = []
    model.sharing.encoder.embedder.register_forward_hook(lambda *args: calls.append(1))
    features = model.sharing.features_for_tasks(batch, TASKS)
    assert len(calls) == 1
    for task in TASKS:
        assert torch.equal(features[task], model.sharing(batch, task)), task
    assert not torch.equal(features["pos"], features["ner"])
    with pytest.raises(NotImplementedError, match="cannot export"):
        model.sharing.task_encoder_state("pos")


# -- training, saving and reloading --------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [
    {"model.sharing": "hierarchical", "model.hierarchical.task_layers": "{pos: 1}"},
    {"model.sharing": "bottom"},
    {"model.sharing": "bottom", **SCRATCH, "train.optimizer": "adamw", "train.lr": 3e-3},
])
def test_trains_saves_and_reloads_with_identical_predictions(tiny_corpus, tmp_path, extra):
    config = _config(tiny_corpus, tmp_path, **extra)
    results = run_training(config, log=_quiet)
    assert set(results["dev"]) == set(TASKS)
    folder = tmp_path / "model"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "labels.json",
                                                        "model.safetensors", "vocab.json"]
    saved = json.loads((folder / "config.json").read_text())["model"]
    assert saved["sharing"] == extra["model.sharing"]
    model = assert_reloads_identically(folder, tmp_path, config)
    assert_reloaded_model_scores_like_the_trained_one(results)
    if extra["model.sharing"] == "bottom":  # the bottoms started equal and were trained apart by their tasks
        pos, ner = (dict(model.sharing.bottom[t].named_parameters()) for t in ("pos", "ner"))
        assert any(not torch.equal(pos[n], ner[n]) for n in pos)
    else:
        assert model.sharing.task_layers == {"pos": 1, "chunk": 2, "ner": 2}


def test_runs_checkpointed_before_the_new_keys_existed_still_resume():
    """A config.yaml written before model.bottom.layers existed lacks it: resuming with its default is no change,
    resuming with another value is."""
    current = load_config(None, ["model.sharing=bottom", "model.bilstm.layers=3"]).to_dict()
    saved = copy.deepcopy(current)
    del saved["model"]["bottom"]["layers"]
    check_resume_config(saved, current)
    current = load_config(None, ["model.sharing=bottom", "model.bilstm.layers=3", "model.bottom.layers=2"]).to_dict()
    saved = copy.deepcopy(current)
    del saved["model"]["bottom"]
    with pytest.raises(ValueError, match="model.bottom.layers: 1 -> 2"):
        check_resume_config(saved, current)


# -- hard sharing with private embedders ---------------------------------------------------------------------
PARTS = {"words": ("words",), "chars": ("chars",), "all": ("words", "chars")}


@pytest.mark.parametrize("choice", PARTS)
def test_private_embedders_equal_to_the_shared_one_compute_hard_sharing(tiny_corpus, tmp_path, choice):
    """Each task's part starts as a copy of the built one, and the strategy runs the BiLSTM layers itself: with
    every copy equal to hard sharing's it computes exactly hard sharing's features."""
    hard, data = _model(_config(tiny_corpus, tmp_path))
    private, _ = _model(_config(tiny_corpus, tmp_path, **{"model.private_embedder": choice}), data, seed=1)
    private.load_state_dict(copies_of_shared_parts(hard.state_dict(), PARTS[choice], TASKS))  # strict: no originals kept
    batch = _batch(hard, data, "ner")
    expected = hard.sharing(batch, "ner")
    features = private.sharing.features_for_tasks(batch, TASKS)
    for task in TASKS:
        assert torch.equal(features[task], expected) and torch.equal(private.sharing(batch, task), expected), task
    exported = private.sharing.task_encoder_state("chunk")
    assert exported.keys() == hard.sharing.task_encoder_state("chunk").keys()
    assert all(torch.equal(v, hard.sharing.encoder.state_dict()[k]) for k, v in exported.items())


@pytest.mark.parametrize("choice", PARTS)
def test_private_embedders_get_gradients_from_their_task_only_and_the_rest_from_all(tiny_corpus, tmp_path, choice):
    model, data = _model(_config(tiny_corpus, tmp_path, **{"model.private_embedder": choice}))
    hard, _ = _model(_config(tiny_corpus, tmp_path), data)
    per_task = sum(p.numel() for part in PARTS[choice] for p in getattr(hard.sharing.encoder.embedder, part).parameters())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) == count(hard) + (len(TASKS) - 1) * per_task
    names = [n for n, _ in model.sharing.named_parameters()]
    shared = [n for n in names if n.startswith("encoder.")]
    assert [n for n in shared if n.startswith("encoder.layers.")]
    assert not [n for n in shared if any(n.startswith(f"encoder.embedder.{part}.") for part in PARTS[choice])]
    for task in TASKS:
        grads = _grads(model, data, task)
        for other in TASKS:
            own = [n for n in names for part in PARTS[choice] if n.startswith(f"private.{other}.{part}.")]
            assert own and all(_has_grad(grads[n]) == (other == task) for n in own
                               if not n.endswith("embedding.weight")), (task, other)  # char table: padding rows
        assert all(_has_grad(grads[n]) for n in shared if "weight" in n and "embedding" not in n), task


@pytest.mark.parametrize("overrides,message", [
    ({"model.private_embedder": "all", **SCRATCH}, "'model.private_embedder' serves the bilstm encoder"),
    ({"model.private_embedder": "chars", "model.bilstm.char_filters": 0}, "makes the char-CNN private, but"),
    ({"model.private_embedder": "true"}, r"'model.private_embedder' must be one of \['none', 'words', 'chars', 'all'\]"),
    ({"model.private_embedder": "all", "model.sharing": "sparse"},
     r"'model.private_embedder' = 'all' gives each task its own char-CNN, but the default prunable patterns "
     r"\(model.sparse.prunable unset\) split its convolution among the tasks by their masks "
     r"\(\['embedder.chars.conv.weight'\]\); set model.sparse.prunable to patterns without it"),
    ({"model.private_embedder": "chars", "model.sharing": "sparse", "model.sparse.prunable": "[embedder.chars.*]"},
     r"but model.sparse.prunable split its convolution .*\(\['embedder.chars.\*'\]\)"),
    ({"model.private_embedder": "word", "model.sharing": "sparse"},
     r"'model.private_embedder' must be one of \['none', 'words', 'chars', 'all'\], got 'word'"),
    ({"model.private_embedder": "words", "model.sharing": "sparse", **SCRATCH},
     "'model.private_embedder' serves the bilstm encoder"),
    ({"model.private_embedder": "words", "model.sharing": "routing"},
     "'model.private_embedder' only applies to model.sharing=bottom / cross_stitch / hard / hierarchical / sparse"),
    ({"model.private_embedder": "words", "model.sharing": "roaming"}, "'model.private_embedder' only applies"),
    ({"model.private_embedder": "all", "model.sharing": "bottom", **SCRATCH},
     "'model.private_embedder' serves the bilstm encoder"),
    ({"model.private_embedder": "al", "model.sharing": "cross_stitch"},
     r"'model.private_embedder' must be one of \['none', 'words', 'chars', 'all'\], got 'al'"),
    ({"model.private_embedder": "words", "tasks": "[ner]", "model.sharing": "single"},
     "'model.private_embedder' only applies"),
])
def test_private_embedder_bad_values_and_combinations_are_rejected_by_key(tiny_corpus, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _config(tiny_corpus, tmp_path, **overrides)


def test_private_embedders_train_save_and_reload_with_identical_predictions(tiny_corpus, tmp_path):
    config = _config(tiny_corpus, tmp_path, **{"model.private_embedder": "all"})
    results = run_training(config, log=_quiet)
    model = assert_reloads_identically(tmp_path / "model", tmp_path, config)
    assert_reloaded_model_scores_like_the_trained_one(results)
    for part in ("words", "chars"):  # started equal, trained apart by their tasks
        pos, ner = (dict(model.sharing.private[t][part].named_parameters()) for t in ("pos", "ner"))
        assert any(not torch.equal(pos[n], ner[n]) for n in pos)
    assert "owns its word embeddings and char-CNN" in (tmp_path / "model" / "README.md").read_text()


@pytest.mark.parametrize("saved,choice", [(True, "all"), (False, "none")])
def test_a_private_embedder_saved_as_a_boolean_loads_and_resumes_as_its_part_name(tiny_corpus, tmp_path, saved,
                                                                                   choice):
    """model.private_embedder was a boolean at first (true: word table and char-CNN); model folders and checkpointed
    runs of then still load and resume."""
    config = _config(tiny_corpus, tmp_path, **{"model.private_embedder": choice})
    model, _ = _model(config)
    folder = model.save_pretrained(tmp_path / "model")
    old = json.loads((folder / "config.json").read_text())
    old["model"]["private_embedder"] = saved
    (folder / "config.json").write_text(json.dumps(old))
    assert MultiTaskTagger.from_pretrained(folder).config == config.model
    old_run = config.to_dict()
    old_run["model"]["private_embedder"] = saved
    check_resume_config(old_run, config.to_dict())


# -- the other strategies with private embedders -------------------------------------------------------------
OTHERS = {"hierarchical": {"model.sharing": "hierarchical", "model.hierarchical.task_layers": "{pos: 1}"},
          "bottom": {"model.sharing": "bottom"},
          "cross_stitch": {"model.sharing": "cross_stitch", "model.cross_stitch.init": 0.8}}


@pytest.mark.parametrize("choice", PARTS)
@pytest.mark.parametrize("strategy", OTHERS)
def test_private_embedders_equal_to_the_shared_one_compute_the_strategy_without_them(tiny_corpus, tmp_path, strategy,
                                                                                       choice):
    shared, data = _model(_config(tiny_corpus, tmp_path, **OTHERS[strategy]))
    for p in shared.sharing.parameters():  # bottoms and columns that differ, so that a task reading another's
        p.data.add_(0.05 * torch.randn_like(p))  # parts or layers would show
    private, _ = _model(_config(tiny_corpus, tmp_path, **OTHERS[strategy], **{"model.private_embedder": choice}),
                        data, seed=1)
    private.load_state_dict(copies_of_shared_parts(shared.state_dict(), PARTS[choice], TASKS))  # strict
    batch = _batch(shared, data, "ner")
    features = private.sharing.features_for_tasks(batch, TASKS)
    for task in TASKS:
        expected = shared.sharing(batch, task)
        assert torch.equal(features[task], expected) and torch.equal(private.sharing(batch, task), expected), task
    if strategy == "hierarchical":  # the exported encoder of a top-layer task holds its own parts
        exported = private.sharing.task_encoder_state("ner")
        assert exported.keys() == shared.sharing.task_encoder_state("ner").keys()
        assert all(torch.equal(v, shared.sharing.encoder.state_dict()[k]) for k, v in exported.items())
    before = features
    for p in private.sharing.private["chunk"].parameters():  # one task's copies changed: each task reads its own,
        p.data.add_(0.05 * torch.randn_like(p))                # for several tasks at once as for one
    features = private.sharing.features_for_tasks(batch, TASKS)
    for task in TASKS:
        assert torch.equal(features[task], private.sharing(batch, task)), task
        changes = not torch.equal(features[task], before[task])
        assert changes == (task == "chunk" or strategy == "cross_stitch"), task  # cross-stitch: through the mixing


@pytest.mark.parametrize("strategy", OTHERS)
def test_private_embedders_of_the_other_strategies_get_gradients_from_their_task_only(tiny_corpus, tmp_path, strategy):
    """Cross-stitch with identity mixing: each column reads its own task's embedder (with mixing, every column's
    embedder also learns from the other tasks, through the mix)."""
    extra = {**OTHERS[strategy], "model.private_embedder": "all"}
    if strategy == "cross_stitch":
        extra["model.cross_stitch.init"] = 1.0
    model, data = _model(_config(tiny_corpus, tmp_path, **extra))
    names = [n for n, _ in model.sharing.named_parameters()]
    assert not [n for n in names if n.startswith(("encoder.embedder.words.", "encoder.embedder.chars."))]
    for task in TASKS:
        grads = _grads(model, data, task)
        for other in TASKS:
            own = [n for n in names if n.startswith(f"private.{other}.") and not n.endswith("embedding.weight")]
            assert own and all(_has_grad(grads[n]) == (other == task) for n in own), (task, other)


def test_cross_stitch_embedders_learn_from_every_task_through_the_mixing(tiny_corpus, tmp_path):
    model, data = _model(_config(tiny_corpus, tmp_path, **OTHERS["cross_stitch"], **{"model.private_embedder": "words"}))
    grads = _grads(model, data, "ner")
    assert all(_has_grad(grads[f"private.{task}.words.weight"]) for task in TASKS)


@pytest.mark.parametrize("strategy", OTHERS)
def test_the_other_strategies_with_private_embedders_train_save_and_reload_with_identical_predictions(
        tiny_corpus, tmp_path, strategy):
    config = _config(tiny_corpus, tmp_path, **OTHERS[strategy], **{"model.private_embedder": "all"})
    results = run_training(config, log=_quiet)
    model = assert_reloads_identically(tmp_path / "model", tmp_path, config)
    assert_reloaded_model_scores_like_the_trained_one(results)
    pos, ner = (dict(model.sharing.private[t]["words"].named_parameters()) for t in ("pos", "ner"))
    assert any(not torch.equal(pos[n], ner[n]) for n in pos)  # started equal, trained apart
    assert "owns its word embeddings and char-CNN" in (tmp_path / "model" / "README.md").read_text()


# -- private embedders for some tasks only (model.private_embedder_tasks) ------------------------------------
SOME = {"hard": {}, **OTHERS, "sparse": {"model.sharing": "sparse", "model.sparse.prunable": "[layers.*.lstm.weight_*]"}}


def _with_masks(model, seed=0):
    if model.config.sharing == "sparse":
        g = torch.Generator().manual_seed(seed)
        model.sharing.set_masks({t: {n: torch.rand(p.shape, generator=g) < 0.5
                                     for n, p in model.sharing.prunable().items()} for t in model.tasks})
    return model


@pytest.mark.parametrize("strategy", SOME)
def test_an_embedder_owned_by_some_tasks_leaves_the_shared_one_to_the_others(tiny_corpus, tmp_path, strategy):
    extra = dict(SOME[strategy])
    if strategy == "cross_stitch":
        extra["model.cross_stitch.init"] = 1.0  # independent columns: a task's gradient stays in its column
    shared, data = _model(_config(tiny_corpus, tmp_path, **extra))
    _with_masks(shared)
    some, _ = _model(_config(tiny_corpus, tmp_path, **extra, **{"model.private_embedder": "all",
                                                                 "model.private_embedder_tasks": "[ner]"}), data, seed=1)
    assert set(some.sharing.private) == {"ner"}
    some.load_state_dict(copies_of_shared_parts(shared.state_dict(), ("words", "chars"), ["ner"], keep_shared=True))
    if strategy == "sparse":
        some.sharing.set_masks(shared.sharing.masks)
    batch = _batch(shared, data, "ner")
    for task in TASKS:  # equal copies: the same features as one shared embedder
        assert torch.equal(some.sharing(batch, task), shared.sharing(batch, task)), task
    names = [n for n, _ in some.sharing.named_parameters()]
    own = [n for n in names if n.startswith("private.ner.") and not n.endswith("embedding.weight")]
    common = [n for n in names if n.startswith("encoder.embedder.") and not n.endswith("embedding.weight")]
    assert own and common
    for task in TASKS:
        grads = _grads(some, data, task)
        assert all(_has_grad(grads[n]) == (task == "ner") for n in own), task
        assert all(_has_grad(grads[n]) == (task != "ner") for n in common), task


def test_an_embedder_owned_by_some_tasks_trains_saves_reloads_and_says_so(tiny_corpus, tmp_path):
    config = _config(tiny_corpus, tmp_path, **{"model.private_embedder": "words", "model.private_embedder_tasks": "[ner]"})
    results = run_training(config, log=_quiet)
    model = assert_reloads_identically(tmp_path / "model", tmp_path, config)
    assert_reloaded_model_scores_like_the_trained_one(results)
    assert set(model.sharing.private) == {"ner"}
    card = (tmp_path / "model" / "README.md").read_text()
    assert "Each of ner owns its word embeddings" in card and "pos, chunk read the shared ones" in card


@pytest.mark.parametrize("overrides,message", [
    ({"model.private_embedder_tasks": "[ner]"}, "lists the tasks that own private embedder copies, but "
                                                "model.private_embedder is 'none'"),
    ({"model.private_embedder": "all", "model.private_embedder_tasks": "[]"}, "'model.private_embedder_tasks' is empty"),
    ({"model.private_embedder": "all", "model.private_embedder_tasks": "[nr]"},
     r"must list distinct tasks of the model \['pos', 'chunk', 'ner'\], got \['nr'\]"),
    ({"model.private_embedder": "all", "model.private_embedder_tasks": "[ner, ner]"}, "must list distinct tasks"),
    ({"model.private_embedder_tasks": "[ner]", "model.sharing": "routing"},
     "'model.private_embedder_tasks' only applies to model.sharing=bottom / cross_stitch / hard / hierarchical / sparse"),
])
def test_bad_private_embedder_tasks_are_rejected_by_key(tiny_corpus, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _config(tiny_corpus, tmp_path, **overrides)
