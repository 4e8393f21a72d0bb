"""bottom, cross_stitch, roaming and routing on a Hugging Face Transformer (sparseshare/sharing/hf_layers.py): a
tiny randomly initialised BERT saved to a local folder (loaded by path, as a user's model id would be), MiniLM's
tokenizer, no dropout. Each strategy is pinned against the plain model it must reduce to, and trains, saves and
reloads with identical predictions; a task whose path is one plain model exports as that model."""
from __future__ import annotations

import pytest
import torch

from sparseshare.config import ConfigError, ModelConfig, load_config
from sparseshare.model import MultiTaskTagger
from sparseshare.sharing import STRATEGIES
from sparseshare.recipes.train import run_training
from sparseshare.training.plugins import TrainingPlugin

from conftest import TINY_SENTENCES, assert_reloaded_model_scores_like_the_trained_one, quiet, tiny_batch
from conftest import tiny_bert_overrides, tiny_model


def _overrides(corpus, out, bert, **extra):
    return tiny_bert_overrides(corpus, out, bert, **{"train.optimizer": "adamw", "train.lr": 1e-3, **extra})


def _model(corpus, out, bert, seed=0, **extra):
    return tiny_model(load_config(None, _overrides(corpus, out, bert, **extra)), seed=seed)


def _plain_top(model, batch):
    """The top layer of the model's Transformer as hard sharing runs it (output_hidden_states, no stand-ins)."""
    from sparseshare.encoders.transformer import TransformerEncoder

    encoder = model.sharing.encoder
    plain = TransformerEncoder(str(encoder.model.name_or_path), tokenizer=encoder.tokenizer,
                               model=type(encoder.model).from_pretrained(encoder.model.name_or_path), dropout=0.0)
    return plain.eval()(batch)[-1]


def _layers(model):
    return model.sharing.encoder.layer_stack()


@pytest.mark.parametrize("sharing, extra", [
    ("bottom", {}), ("cross_stitch", {"model.cross_stitch.init": 1.0}), ("roaming", {"model.roaming.ratio": 1.0}),
    ("routing", {"model.routing.blocks": 1}),
])
def test_each_strategy_reduces_to_the_plain_transformer(tiny_corpus, tmp_path, tiny_bert, sharing, extra):
    """Fresh copies (bottom), independent columns (cross-stitch alpha = 1), every unit active (roaming p = 1), one
    block (routing k = 1): every task reads exactly the pretrained model's top layer, also for a sentence longer
    than the model input (several rows, which the stand-ins must keep together)."""
    model, data = _model(tiny_corpus, tmp_path, tiny_bert, **{"model.sharing": sharing, **extra})
    long = [word for _ in range(20) for word in TINY_SENTENCES[1]]  # 160 words: several 64-position windows
    batch = model.featurizer.collate(TINY_SENTENCES + [long])
    assert model.sharing.encoder.subword_rows(batch).row_sentence.tolist().count(3) > 2
    with torch.no_grad():
        expected = _plain_top(model, batch)
        for task, features in model.sharing.features_for_tasks(batch, ["pos", "chunk", "ner"]).items():
            torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5, msg=task)


def test_bottom_runs_the_tasks_own_lowest_layers(tiny_corpus, tmp_path, tiny_bert):
    model, data = _model(tiny_corpus, tmp_path, tiny_bert, **{"model.sharing": "bottom", "model.bottom.layers": 2})
    layers = _layers(model)
    assert [type(layer).__name__ for layer in layers] == ["TaskLayers", "TaskLayers", "BertLayer"]
    batch = tiny_batch(model, data, "pos")
    with torch.no_grad():
        before = model.sharing.features_for_tasks(batch, ["pos", "chunk"])
        for p in layers[1].copies["pos"].parameters():
            p.add_(0.1)
        after = model.sharing.features_for_tasks(batch, ["pos", "chunk"])
    assert not torch.allclose(after["pos"], before["pos"])
    torch.testing.assert_close(after["chunk"], before["chunk"])
    own = sum(p.numel() for layer in layers[:2] for p in layer.copies["pos"].parameters())
    card = (model.save_pretrained(tmp_path / "saved") / "README.md").read_text()
    assert f"Each task owns the lowest 2 of the encoder's 3 layers ({own:,} parameters per task)" in card
    with pytest.raises(ConfigError, match=r"'model.bottom.layers' must be >= 1 and < the encoder depth 3 "
                                          r"\(the Transformer's num_hidden_layers\)"):
        _model(tiny_corpus, tmp_path, tiny_bert, **{"model.sharing": "bottom", "model.bottom.layers": 3})
    with pytest.raises(ConfigError, match=r"'model.routing.blocks' lists 2 layer\(s\) but the encoder has 3 \(the "
                                          r"Transformer's num_hidden_layers\)"):  # also known only once loaded
        _model(tiny_corpus, tmp_path, tiny_bert, **{"model.sharing": "routing", "model.routing.blocks": "[2,2]"})


def test_cross_stitch_mixes_the_columns_after_every_layer(tiny_corpus, tmp_path, tiny_bert):
    model, data = _model(tiny_corpus, tmp_path, tiny_bert, **{"model.sharing": "cross_stitch",
                                                              "model.cross_stitch.init": 1.0})
    sharing, batch = model.sharing, tiny_batch(model, data, "pos")
    with torch.no_grad():
        for p in _layers(model)[0].columns[1].parameters():  # task 1 (chunk)'s column differs from the others
            p.add_(0.1)
        independent = sharing.features_for_tasks(batch, ["pos", "chunk"])
        expected = _plain_top(model, batch)
        torch.testing.assert_close(independent["pos"], expected, atol=1e-5, rtol=1e-5)  # alpha = 1: no mixing
        assert not torch.allclose(independent["chunk"], expected, atol=1e-3)
        mixing = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        sharing.mixing.copy_(mixing.expand_as(sharing.mixing))
        mixed = sharing.features_for_tasks(batch, ["pos", "chunk"])
    assert not torch.allclose(mixed["pos"], independent["pos"], atol=1e-3)  # pos now reads chunk's column too
    torch.testing.assert_close(mixed["chunk"], independent["chunk"])
    model.train()
    sharing(batch, "pos").sum().backward()
    assert sharing.mixing.grad is not None and bool(sharing.mixing.grad[:, 0].abs().sum() > 0)


def test_roaming_masks_the_feed_forward_units(tiny_corpus, tmp_path, tiny_bert):
    """A task's output is that of the model whose down-projection columns outside the task's mask are zero, and
    those columns get no gradient from the task."""
    model, data = _model(tiny_corpus, tmp_path, tiny_bert, **{"model.sharing": "roaming", "model.roaming.ratio": 0.5})
    sharing, batch = model.sharing, tiny_batch(model, data, "ner")
    assert sharing.units == 32 and sharing.masks.shape == (3, 3, 32)
    assert bool(sharing.masks.sum(-1).eq(16).all()) and bool(sharing.masks.any(1).all())
    t = sharing.tasks.index("ner")
    with torch.no_grad():
        got = sharing(batch, "ner")
        for i, gate in enumerate(sharing.gates):
            gate.linear.weight.mul_(sharing.masks[i, t].float())
        for gate in sharing.gates:
            gate.unit_mask = torch.ones(32, dtype=torch.bool)
        expected = model.sharing.encoder.top_features(batch)[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    model.train()
    sharing(batch, "ner").pow(2).sum().backward()
    for i, gate in enumerate(sharing.gates):
        grad = gate.linear.weight.grad
        assert bool(grad[:, ~sharing.masks[i, t]].eq(0).all()) and bool(grad[:, sharing.masks[i, t]].ne(0).any())


@pytest.mark.parametrize("router", ["wpl", "reinforce", "dispatched"])
def test_routing_sends_each_sentence_through_its_own_blocks(tiny_corpus, tmp_path, tiny_bert, router):
    """A batch routed by sampling gives every sentence the features it gets alone along the same route."""
    model, data = _model(tiny_corpus, tmp_path, tiny_bert, **{
        "model.sharing": "routing", "model.routing.blocks": 2, "model.routing.pass_block": "true",
        "model.routing.router": router})
    sharing, batch = model.sharing, tiny_batch(model, data, "ner", n=8)
    assert [len(layer.blocks) for layer in _layers(model)] == [2, 2, 2] and sharing.choices == [3, 3, 3]
    with torch.no_grad():
        for layer in _layers(model):
            for p in layer.blocks[1].parameters():  # block 1 differs from block 0
                p.add_(0.05)
        model.train()  # sampled routes (no dropout anywhere: otherwise deterministic)
        routed = sharing(batch, "ner")
        routes = sharing.last_routes.clone()
        sharing._pending = None
        assert len({tuple(r) for r in routes.T.tolist()}) > 1  # sentences took different routes
        model.eval()
        stack, routed_layers = _layers(model), list(_layers(model))
        for i in range(batch.mask.shape[0]):  # the sentence alone through a model made of its route's blocks
            for layer, routed_layer in enumerate(routed_layers):
                j = int(routes[layer, i])
                stack[layer] = routed_layer.blocks[j] if j < len(routed_layer.blocks) else _Pass()
            alone = model.sharing.encoder.top_features(tiny_batch(model, data, "ner", n=1, start=i))[0, 0]
            n = int(batch.mask[i].sum())
            torch.testing.assert_close(routed[i, :n], alone[:n], atol=1e-5, rtol=1e-5)


class _Pass(torch.nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@pytest.mark.parametrize("sharing, extra", [
    ("bottom", {}), ("cross_stitch", {}), ("roaming", {"model.roaming.delta": 2}),
    ("routing", {"model.routing.pass_block": "true"}), ("routing", {"model.routing.router": "reinforce"}),
])
def test_trains_saves_and_reloads_with_identical_predictions(tiny_corpus, tmp_path, tiny_bert, sharing, extra):
    config = load_config(None, _overrides(tiny_corpus, tmp_path, tiny_bert, **{"model.sharing": sharing, **extra}))
    assert_reloaded_model_scores_like_the_trained_one(run_training(config, log=quiet))
    model = MultiTaskTagger.from_pretrained(tmp_path / "model")
    assert model.config.sharing == sharing
    first = model.predict(TINY_SENTENCES)
    model.save_pretrained(tmp_path / "again")
    again = MultiTaskTagger.from_pretrained(tmp_path / "again")
    assert again.predict(TINY_SENTENCES) == first
    for name, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_bf16_autocast_trains_fp32_weights_and_the_reloaded_model_scores_alike(tiny_corpus, tmp_path, tiny_bert):
    """train.mixed_precision=bf16 (the converged MiniLM grid's setting): the forward and backward passes run under
    CPU autocast, the weights stay fp32; the selected epoch's dev scores are those of the reloaded fp32 model."""
    config = load_config(None, _overrides(tiny_corpus, tmp_path, tiny_bert, **{
        "model.sharing": "hard", "train.mixed_precision": "bf16", "train.epochs": 2}))
    autocast_seen = []

    class RecordAutocast(TrainingPlugin):  # whether the training passes of the encoder ran under bf16 autocast
        def on_train_start(self, recipe):
            recipe.tagger.sharing.encoder.register_forward_hook(
                lambda module, args, output: autocast_seen.append(
                    (module.training, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))))

    results = run_training(config, log=quiet, plugins=[RecordAutocast()])
    assert {dtype for training, on, dtype in autocast_seen if training and on} == {torch.bfloat16}
    assert all(on for training, on, _ in autocast_seen if training)
    assert_reloaded_model_scores_like_the_trained_one(results)
    model = MultiTaskTagger.from_pretrained(tmp_path / "model")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert any(v > 0 for v in results["history"][-1]["dev"].values())


def _perturb(*modules):
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.add_(0.05)


@pytest.mark.parametrize("sharing, extra", [
    ("bottom", {"model.bottom.layers": 2}), ("roaming", {"model.roaming.ratio": 0.5}),
    ("routing", {"model.routing.blocks": 2, "model.routing.pass_block": "true"}),
])
def test_a_task_exports_as_the_plain_model_it_runs_through(tiny_corpus, tmp_path, tiny_bert, sharing, extra):
    """bottom (the task's own lowest layers), roaming (its unit masks folded into the down projections) and WPL
    routing (its greedy blocks) run each task through one plain Transformer: the export is that model, whose top
    layer equals the task's features, and not another task's."""
    from transformers import AutoModel, AutoModelForTokenClassification

    from sparseshare.encoders.transformer import TransformerEncoder
    from sparseshare.export import export_task

    model, data = _model(tiny_corpus, tmp_path, tiny_bert, **{"model.sharing": sharing, "model.head": "softmax",
                                                              **extra})
    layers, s = _layers(model), model.sharing
    if sharing == "bottom":
        _perturb(layers[0].copies["pos"], layers[1].copies["chunk"])
    if sharing == "routing":  # pos: blocks 1, 0, 1 (chunk and ner: uniform policies, greedy block 0)
        _perturb(layers[0].blocks[1], layers[2].blocks[1])
        s.policy[s.tasks.index("pos")] = torch.tensor([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    out = export_task(model, "pos", tmp_path / "export")
    exported = AutoModelForTokenClassification.from_pretrained(out)
    torch.testing.assert_close(exported.classifier.weight, model.heads["pos"].proj.weight)
    plain = TransformerEncoder(str(out), tokenizer=s.encoder.tokenizer, model=AutoModel.from_pretrained(out),
                               dropout=0.0).eval()
    batch = tiny_batch(model, data, "pos", n=8)
    with torch.no_grad():
        features = s.features_for_tasks(batch, ["pos", "chunk"])
        top = plain(batch)[-1]
    torch.testing.assert_close(top, features["pos"], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(top, features["chunk"], atol=1e-3)


@pytest.mark.parametrize("sharing, extra, message", [
    ("cross_stitch", {}, "cross_stitch mixes every task's column after each layer"),
    ("routing", {"model.routing.router": "reinforce"}, "the 'reinforce' router chooses each sentence's route"),
    ("routing", {"model.routing.pass_block": "true"}, r"greedy route skips layer\(s\) \[2\] \(PASS\)"),
    # sparseshare reads a sentence longer than max_length in windows; the exported model would read it whole
    ("hard", {"model.transformer.max_length": 12}, r"model\.transformer\.max_length is 12: sparseshare reads a "
                                                   r"sentence longer than that in overlapping windows"),
])
def test_export_refuses_a_task_without_one_plain_model(tiny_corpus, tmp_path, tiny_bert, sharing, extra, message):
    from sparseshare.export import ExportError, export_task

    model, _ = _model(tiny_corpus, tmp_path, tiny_bert, **{"model.sharing": sharing, "model.head": "softmax",
                                                           **extra})
    if "model.routing.pass_block" in extra:
        model.sharing.policy[model.sharing.tasks.index("pos"), 1] = torch.tensor([0.1, 0.1, 0.8])
    with pytest.raises(ExportError, match=message):
        export_task(model, "pos", tmp_path / "export")
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("sharing", ["bottom", "cross_stitch", "roaming", "routing"])
def test_a_transformer_without_a_layer_list_is_refused_by_key(tiny_bert, sharing):
    from transformers import BertModel

    from sparseshare.encoders.transformer import TransformerEncoder

    bert = BertModel.from_pretrained(tiny_bert)
    bert.config.num_hidden_layers = 5  # no list of 5 layers to be found
    encoder = TransformerEncoder(str(tiny_bert), model=bert)
    with pytest.raises(ConfigError, match=f"'model.sharing' = '{sharing}' needs the Transformer's list of layers: "
                                          f"BertModel: no list of its 5 layers \\(each with an "
                                          f"attention module\\) found"):
        STRATEGIES[sharing](lambda: encoder, ["pos", "ner"], ModelConfig(encoder="transformer", sharing=sharing))


def _save_tiny(folder, model, tokenizer_source):
    from transformers import AutoTokenizer

    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["distilbert", "deberta-v2"])
def other_architecture(request, tmp_path_factory, tiny_bert):
    """Tiny DistilBERT (its layers under ``transformer.layer``, FF ``ffn.lin2``) and DeBERTa-v2 (eager attention,
    relative position tables passed to every layer, layers that return a tuple) with the same tokenizer."""
    from transformers import DebertaV2Config, DebertaV2Model, DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    vocab = 30522
    if request.param == "distilbert":
        model = DistilBertModel(DistilBertConfig(vocab_size=vocab, dim=16, n_layers=3, n_heads=2, hidden_dim=32,
                                                 dropout=0.0, attention_dropout=0.0, max_position_embeddings=64))
    else:
        model = DebertaV2Model(DebertaV2Config(vocab_size=vocab, hidden_size=16, num_hidden_layers=3,
                                               num_attention_heads=2, intermediate_size=32, hidden_dropout_prob=0.0,
                                               attention_probs_dropout_prob=0.0, max_position_embeddings=64,
                                               relative_attention=True, position_buckets=8, max_relative_positions=64,
                                               pos_att_type=["p2c", "c2p"], position_biased_input=False))
    return _save_tiny(tmp_path_factory.mktemp(request.param), model, str(tiny_bert))


@pytest.mark.parametrize("sharing, extra", [
    ("bottom", {}), ("cross_stitch", {"model.cross_stitch.init": 1.0}), ("roaming", {"model.roaming.ratio": 1.0}),
    ("routing", {"model.routing.blocks": 1}),
])
def test_other_architectures_reduce_to_the_plain_model(tiny_corpus, tmp_path, other_architecture, sharing, extra):
    model, data = _model(tiny_corpus, tmp_path, other_architecture, **{"model.sharing": sharing, **extra})
    batch = model.featurizer.collate(TINY_SENTENCES)
    with torch.no_grad():
        expected = _plain_top(model, batch)
        for task, features in model.sharing.features_for_tasks(batch, ["pos", "ner"]).items():
            torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5, msg=task)


def test_a_routed_layer_where_every_sentence_takes_pass_keeps_the_layer_output_form(tiny_corpus, tmp_path,
                                                                                    other_architecture):
    """Right after loading, a greedy PASS everywhere runs no block: the layer's output form (DeBERTa-v2 returns
    a tuple its encoder unpacks) must still be right; the top layer is then the embeddings' output."""
    model, data = _model(tiny_corpus, tmp_path, other_architecture, **{
        "model.sharing": "routing", "model.routing.pass_block": "true"})
    sharing = model.sharing
    sharing.policy[:, :, :] = torch.tensor([0.1, 0.1, 0.8])  # PASS (choice 2) is every layer's argmax
    batch = model.featurizer.collate(TINY_SENTENCES)
    with torch.no_grad():
        features = sharing(batch, "ner")
    assert sharing.last_routes.eq(2).all() and features.shape == (3, 8, 16)
    assert {layer._tuple_size for layer in _layers(model)} == {2 if "deberta" in str(other_architecture) else 0}


def test_roaming_parameter_masks_hold_each_task_feed_forward_units(tiny_corpus, tmp_path, tiny_bert):
    """A task's masked optimiser steps move its units' columns of the down projection and their rows (and bias) of
    the up projection (BERT's intermediate.dense), nothing else of the layer."""
    model, _ = _model(tiny_corpus, tmp_path, tiny_bert, **{"model.sharing": "roaming", "model.roaming.ratio": 0.5})
    sharing, names = model.sharing, {id(p): n for n, p in model.named_parameters()}
    t = sharing.tasks.index("chunk")
    got = {names[id(p)]: m for p, m in sharing.parameter_masks("chunk").items()}
    assert len(got) == 3 * 3  # per layer: down-projection weight, up-projection weight and bias
    for i in range(3):
        units = sharing.masks[i, t]
        down = next(n for n in got if f".layer.{i}." in n and n.endswith("output.dense.linear.weight"))
        up = next(n for n in got if f".layer.{i}." in n and n.endswith("intermediate.dense.weight"))
        bias = up.replace(".weight", ".bias")
        assert torch.equal(got[down], units[None, :].expand(got[down].shape)) and got[down].shape[1] == 32
        assert torch.equal(got[up], units[:, None].expand(got[up].shape)) and got[up].shape[0] == 32
        assert torch.equal(got[bias], units)
