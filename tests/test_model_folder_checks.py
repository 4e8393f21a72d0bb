"""A tampered model folder is refused before use (issue 27), never loaded to tag garbage.

One test per kind of tampering, each asserting that the InvalidModelFolderError names the file and the key; then a
property test (hypothesis, derandomized, bounded) that tampers with a trained tiny model's folder at random and
requires the load to end in the original predictions or in an error naming the tampered file (or, where sizes
disagree, naming the other file of the two and saying that they disagree), and each file to have been seen both ways.

What no check can see (a valid file rewritten into another valid one: labels swapped, a label renamed to a name its
scheme allows, a word renamed to another word the lookup can produce, a weight changed to another finite number) is
listed in sparseshare/model_folder.py and left out of the property test; a label of a task without a span scheme
renamed to a fresh name is in it, with the renamed tags as the expected outcome, and so is a word or character that
the test sentences do not use renamed to a fresh one, with the same tags.
"""
from __future__ import annotations

import collections
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from sparseshare import model_folder
from sparseshare.data.vocab import Vocab, WordLookup
from sparseshare.errors import InvalidModelFolderError, ModelFolderError
from sparseshare.model import MultiTaskTagger
from sparseshare.model_folder import MaskFileError
from sparseshare.sharing.masks import MaskError

from conftest import TINY_SCRATCH, TINY_SENTENCES, quiet, tiny_config, tiny_model, write_tiny_corpus


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """A trained tiny model folder (BiLSTM-CRF, hard sharing, pos / chunk / ner) and its predictions."""
    from sparseshare.recipes.train import run_training

    root = tmp_path_factory.mktemp("folder_checks")
    data = write_tiny_corpus(root)
    run_training(tiny_config(data, root / "run", **{"train.epochs": 2}), log=quiet)
    folder = root / "run" / "model"
    return folder, MultiTaskTagger.from_pretrained(folder).predict(TINY_SENTENCES)


@pytest.fixture(scope="module")
def sparse_folder(tmp_path_factory) -> Path:
    """An untrained tiny sparse-sharing model with random masks, saved."""
    root = tmp_path_factory.mktemp("folder_checks_sparse")
    model, _ = tiny_model(tiny_config(write_tiny_corpus(root), root / "run", **{"model.sharing": "sparse"}))
    generator = torch.Generator().manual_seed(0)
    model.sharing.set_masks({task: {name: torch.rand(p.shape, generator=generator) < 0.5
                                    for name, p in model.sharing.prunable().items()} for task in model.tasks})
    return model.save_pretrained(root / "model")


def copy_of(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(folder, target)
    return target


def edit_json(folder: Path, name: str, change) -> None:
    path = folder / name
    value = json.loads(path.read_text(encoding="utf-8"))
    change(value)
    path.write_text(json.dumps(value), encoding="utf-8")


def edit_tensors(folder: Path, name: str, change) -> None:
    path = folder / name
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def refused(folder: Path, file: str, key: str) -> InvalidModelFolderError:
    with pytest.raises(InvalidModelFolderError) as caught:
        MultiTaskTagger.from_pretrained(folder)
    message = str(caught.value)
    assert file in message and key in message, message
    assert caught.value.path.endswith(file) and key in caught.value.key
    return caught.value


# -- model.safetensors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_a_float_tensor_stored_as_integers_or_booleans_is_refused_not_cast(trained, tmp_path, dtype):
    folder = copy_of(trained[0], tmp_path)
    name = "heads.ner.crf.transitions"
    edit_tensors(folder, "model.safetensors", lambda t: t.update({name: t[name].to(dtype)}))
    assert "never read from integers or booleans" in str(refused(folder, "model.safetensors", name))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_a_model_saved_in_another_floating_dtype_loads_cast_as_before(trained, tmp_path, dtype):
    """A model converted with .half() (or .double(), bfloat16) and saved: load_model casts it to the built model's
    float32, as safetensors always did."""
    model = MultiTaskTagger.from_pretrained(trained[0])
    model.to(dtype).save_pretrained(tmp_path / "converted")
    loaded = MultiTaskTagger.from_pretrained(tmp_path / "converted")
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    rounded = MultiTaskTagger.from_pretrained(trained[0])
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.to(dtype))
    assert loaded.predict(TINY_SENTENCES) == rounded.predict(TINY_SENTENCES)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused(trained, tmp_path, value):
    folder = copy_of(trained[0], tmp_path)
    name = "sharing.encoder.layers.0.lstm.weight_ih_l0"

    def poison(tensors):
        tensors[name][3, 1] = value

    edit_tensors(folder, "model.safetensors", poison)
    assert "NaN or infinite" in str(refused(folder, "model.safetensors", name))


def test_a_tensor_of_another_shape_and_missing_or_unexpected_tensors_are_named(trained, tmp_path):
    folder = copy_of(trained[0], tmp_path)
    name = "sharing.encoder.layers.1.lstm.weight_hh_l0"
    edit_tensors(folder, "model.safetensors", lambda t: t.update({name: t[name][:-1]}))
    assert "has shape" in str(refused(folder, "model.safetensors", name))
    shutil.copy(trained[0] / "model.safetensors", folder / "model.safetensors")
    edit_tensors(folder, "model.safetensors", lambda t: t.pop(name))
    assert "no tensor" in str(refused(folder, "model.safetensors", name))
    shutil.copy(trained[0] / "model.safetensors", folder / "model.safetensors")
    edit_tensors(folder, "model.safetensors", lambda t: t.update({"heads.srl.proj.bias": torch.zeros(3)}))
    assert "is not part of the model" in str(refused(folder, "model.safetensors", "heads.srl.proj.bias"))


def test_a_corrupt_weights_file_is_still_named(trained, tmp_path):
    folder = copy_of(trained[0], tmp_path)
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:-10])
    with pytest.raises(InvalidModelFolderError, match=r"model\.safetensors: cannot load weights"):
        MultiTaskTagger.from_pretrained(folder)


# -- sizes that scale the model's memory: refused before it is built -----------------------------------------
STRATEGIES = {"hard": {}, "roaming": {"model.sharing": "roaming"}, "cross_stitch": {"model.sharing": "cross_stitch"},
              "bottom": {"model.sharing": "bottom"}, "routing": {"model.sharing": "routing"},
              "dispatched": {"model.sharing": "routing", "model.routing.router": "dispatched",
                             "model.routing.history": 4},
              "scratch_roaming": {**TINY_SCRATCH, "model.sharing": "roaming"}}


@pytest.fixture(scope="module")
def strategy_folders(tmp_path_factory) -> dict[str, Path]:
    """An untrained tiny model folder per strategy."""
    root = tmp_path_factory.mktemp("folder_checks_strategies")
    data = write_tiny_corpus(root)
    return {name: tiny_model(tiny_config(data, root / name, **extra))[0].save_pretrained(root / name / "model")
            for name, extra in STRATEGIES.items()}


@pytest.mark.parametrize("strategy, key, value", [
    *[(name, "model.bilstm.hidden", 10**6) for name in ("hard", "roaming", "cross_stitch", "bottom", "routing")],
    ("hard", "model.bilstm.layers", 10**6), ("bottom", "model.bilstm.layers", 10**6),
    ("cross_stitch", "model.bilstm.layers", 10**6), ("hard", "model.bilstm.word_dim", 10**9),
    ("hard", "model.bilstm.char_dim", 10**9), ("hard", "model.bilstm.char_filters", 10**9),
    ("routing", "model.routing.blocks", 10**6), ("routing", "model.routing.blocks", [1, 10**6]),
    ("dispatched", "model.routing.history", 10**9), ("dispatched", "model.routing.agents", 10**9),
    ("scratch_roaming", "model.scratch.ff", 10**9), ("scratch_roaming", "model.scratch.dim", 2**30),
    ("scratch_roaming", "model.scratch.max_positions", 10**9), ("scratch_roaming", "model.scratch.layers", 10**6),
])
def test_sizes_that_disagree_with_the_weights_are_refused_before_the_model_is_built(strategy_folders, tmp_path,
                                                                                   monkeypatch, strategy, key, value):
    folder = copy_of(strategy_folders[strategy], tmp_path)
    MultiTaskTagger.from_pretrained(folder)  # the untampered folder loads

    def change(config):
        node = config
        for name in key.split(".")[:-1]:
            node = node[name]
        node[key.split(".")[-1]] = value

    edit_json(folder, "config.json", change)
    monkeypatch.setattr(model_folder, "build_model", lambda *args: pytest.fail("the model was built"))
    err = refused(folder, "config.json", key)
    assert err.key == key and "config.json and model.safetensors disagree" in str(err)


@pytest.mark.parametrize("failure", [MemoryError(), RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. "
                                                                 "DefaultCPUAllocator: can't allocate memory: you tried "
                                                                 "to allocate 16000000000000 bytes.")])
def test_an_allocation_that_fails_while_the_model_is_built_names_config_json(trained, monkeypatch, failure):
    def build_strategy(*args):
        raise failure

    monkeypatch.setattr("sparseshare.model.build_strategy", build_strategy)
    with pytest.raises(InvalidModelFolderError, match="config.json: the model that config.json describes does not fit "
                                                      "in memory") as caught:
        MultiTaskTagger.from_pretrained(trained[0])
    assert caught.value.path.endswith("config.json")


# -- config.json -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keys, value, key", [
    (["model", "bilstm", "dropout"], 1.5, "model.bilstm.dropout"),
    (["model", "bilstm", "word_dropout"], -0.1, "model.bilstm.word_dropout"),
    (["model", "bilstm", "char_kernel"], 4, "model.bilstm.char_kernel"),
    (["model", "transformer", "stride"], -1, "model.transformer.stride"),
    (["model", "roaming"], {"ratio": 0.7}, "model.roaming.ratio"),  # another strategy's option
    (["model", "head"], "maxent", "model.head"),
    (["tasks", "ner", "metric"], "bleu", "tasks.ner.metric"),  # TaskSpec's own checks, under the task's key
    (["tasks", "ner", "hub", "foo"], 1, "tasks.ner.hub.foo"),
])
def test_config_values_out_of_range_are_refused_by_key(trained, tmp_path, keys, value, key):
    folder = copy_of(trained[0], tmp_path)

    def change(config):
        node = config
        for name in keys[:-1]:
            node = node[name]
        node[keys[-1]] = value

    edit_json(folder, "config.json", change)
    err = refused(folder, "config.json", key)
    assert err.key == key
    if key.startswith("tasks."):  # the task's key, once and in full: not "config key 'tasks.ner': task 'ner': ..."
        assert str(err).count("tasks.ner") == 1 and "task 'ner'" not in str(err), str(err)


@pytest.mark.parametrize("keys, value, key", [
    (["data", "lowercase"], "false", "data.lowercase"),  # bool("false") was True
    (["data", "normalize_digits"], 0, "data.normalize_digits"),
    (["model", "bilstm", "dropout"], "0.0", "model.bilstm.dropout"),  # YAML's lenient reading is not for JSON
    (["model", "bilstm", "hidden"], 16.0, "model.bilstm.hidden"),
    (["model", "bilstm"], None, "model.bilstm"),  # was read as the defaults
    (["model", "sharing"], False, "model.sharing"),
    (["tasks", "ner", "ignore_labels"], "O", "tasks.ner.ignore_labels"),
    (["tasks", "ner", "description"], 7, "tasks.ner.description"),
    (["format_version"], True, "format_version"),  # True == 1
    (["tasks", "ner", "dev_from_train"], {"fraction": "0.1"}, "tasks.ner.dev_from_train.fraction"),
])
def test_config_values_of_a_wrong_json_type_are_refused_by_key(trained, tmp_path, keys, value, key):
    folder = copy_of(trained[0], tmp_path)

    def change(config):
        node = config
        for name in keys[:-1]:
            node = node.setdefault(name, {})
        node[keys[-1]] = value

    edit_json(folder, "config.json", change)
    refused(folder, "config.json", key)


@pytest.mark.parametrize("value, key, kept", [
    (None, None, None),  # save_pretrained(extra=...) is free-form: nothing to warn about
    ("scores", "info", {}),
    ({"selected_epoch": "3", "command": "train"}, "info.selected_epoch", {"command": "train"}),
    ({"dev": {"ner": "high", "pos": 90.0}}, "info.dev.ner", {"dev": {"pos": 90.0}}),
])
def test_a_bad_info_value_is_dropped_with_a_warning_not_a_reason_to_refuse(trained, tmp_path, value, key, kept):
    """config.json's info only feeds the model card: folders whose info the card cannot show still load."""
    folder = copy_of(trained[0], tmp_path)
    info = {"selected_epoch": None} if value is None else value
    edit_json(folder, "config.json", lambda c: c.update(info=info))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = MultiTaskTagger.from_pretrained(folder)
    messages = [str(w.message) for w in caught if "info" in str(w.message)]
    if key is None:
        assert messages == [] and model.info == info
    else:
        assert len(messages) == 1 and "config.json" in messages[0] and repr(key) in messages[0], messages
        assert model.info == kept
    assert model.predict(TINY_SENTENCES) == trained[1]
    model.save_pretrained(tmp_path / "again")  # the model card shows what is left


def test_a_task_under_another_name_and_unknown_keys_are_refused(trained, tmp_path):
    folder = copy_of(trained[0], tmp_path)
    edit_json(folder, "config.json", lambda c: c["tasks"]["ner"].update(name="pos"))
    refused(folder, "config.json", "tasks.ner.name")
    shutil.copy(trained[0] / "config.json", folder / "config.json")
    edit_json(folder, "config.json", lambda c: c["data"].update(root="/elsewhere"))
    refused(folder, "config.json", "data.root")


# -- labels.json -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, words", [
    # shortened
    (lambda labels: labels["ner"].pop(), "labels.json and model.safetensors disagree: key 'ner' lists 6 labels, "
                                         "but tensor 'heads.ner."),
    (lambda labels: labels["ner"].__setitem__(1, labels["ner"][0]), "repeats item 0"),  # duplicated
    (lambda labels: labels["ner"].__setitem__(1, "PER"), "is not a label of the train scheme bioes"),
    (lambda labels: labels["ner"].__setitem__(1, ""), "is not a non-empty string"),
    (lambda labels: labels["ner"].__setitem__(1, 3), "is not a non-empty string"),
    (lambda labels: labels.__setitem__("ner", "B-PER"), "must be a non-empty list"),
])
def test_labels_that_do_not_fit_the_task_or_its_head_are_refused(trained, tmp_path, change, words):
    folder = copy_of(trained[0], tmp_path)
    assert len(json.loads((folder / "labels.json").read_text())["ner"]) == 7  # the messages' counts
    edit_json(folder, "labels.json", change)
    assert words in str(refused(folder, "labels.json", "ner"))


def test_labels_of_a_task_the_model_lacks_are_refused(trained, tmp_path):
    folder = copy_of(trained[0], tmp_path)
    edit_json(folder, "labels.json", lambda labels: labels.update(srl=["A0", "A1"]))
    refused(folder, "labels.json", "srl")
    edit_json(folder, "labels.json", lambda labels: (labels.pop("srl"), labels.pop("chunk")))
    assert "no label list for task(s) ['chunk']" in str(refused(folder, "labels.json", "chunk"))


# -- vocab.json ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, key, words", [
    (lambda v: v["words"]["itos"].pop(), "words.itos", "but tensor 'sharing.encoder.embedder.words.weight' in "
                                                       "model.safetensors has shape ("),
    (lambda v: v["chars"]["itos"].pop(), "chars.itos", "but tensor 'sharing.encoder.embedder.chars.embedding.weight'"),
    (lambda v: v["words"]["itos"].__setitem__(5, v["words"]["itos"][4]), "words.itos", "repeats item 4"),
    (lambda v: v["words"]["itos"].__setitem__(5, "Paris"), "words.itos", "can never be looked up"),
    (lambda v: v["chars"]["itos"].__setitem__(5, "ab"), "chars.itos", "is not one character"),
    (lambda v: v["words"]["itos"].reverse(), "words.itos", "must start with '<pad>', '<unk>'"),
    (lambda v: v["words"].update(specials="false"), "words.specials", "must be true"),
    (lambda v: v["chars"].update(itos={"a": 2}), "chars.itos", "must be a list of strings"),
    (lambda v: v.pop("chars"), "chars", "found missing"),
])
def test_vocabularies_that_do_not_fit_the_embeddings_or_the_lookup_are_refused(trained, tmp_path, change, key, words):
    folder = copy_of(trained[0], tmp_path)
    edit_json(folder, "vocab.json", change)
    assert words in str(refused(folder, "vocab.json", key))


# -- masks.safetensors -----------------------------------------------------------------------------------------
MASK = "pos/layers.0.lstm.weight_ih_l0"


def _set_byte(tensors):
    tensors[MASK] = tensors[MASK].clone()
    tensors[MASK].view(torch.uint8)[0, 0] = 2


@pytest.mark.parametrize("change, words", [
    (_set_byte, "holds values other than 0 and 1"),
    (lambda t: t.update({MASK: t[MASK].float()}), "dtype torch.float32"),
    (lambda t: t.update({MASK: t[MASK][:-1]}), "has shape"),
    (lambda t: t.pop(MASK), "has no mask for prunable tensor"),
    (lambda t: t.update({"srl/layers.0.lstm.weight_ih_l0": t[MASK].clone()}), "masks for task(s) ['srl']"),
])
def test_a_damaged_mask_file_is_refused_by_key(sparse_folder, tmp_path, change, words):
    folder = copy_of(sparse_folder, tmp_path)
    MultiTaskTagger.from_pretrained(folder)  # the undamaged folder loads
    edit_tensors(folder, "masks.safetensors", change)
    with pytest.raises(MaskFileError) as caught:
        MultiTaskTagger.from_pretrained(folder)
    assert isinstance(caught.value, MaskError) and isinstance(caught.value, InvalidModelFolderError)
    message = str(caught.value)
    assert "masks.safetensors" in message and words in message
    assert ("srl" if "srl" in words else MASK.split("/")[1]) in message


def test_a_corrupt_or_missing_mask_file_is_still_refused(sparse_folder, tmp_path):
    folder = copy_of(sparse_folder, tmp_path)
    (folder / "masks.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(MaskFileError, match=r"masks\.safetensors: not a readable safetensors mask file"):
        MultiTaskTagger.from_pretrained(folder)
    (folder / "masks.safetensors").unlink()
    with pytest.raises(ModelFolderError, match=rf"^model folder {folder} is missing masks\.safetensors$") as caught:
        MultiTaskTagger.from_pretrained(folder)
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, MaskError)  # a MaskError as before


def test_a_mask_file_beside_another_sharing_is_refused(sparse_folder, tmp_path):
    # a sparse folder whose config.json says hard sharing would build the same tensors and load dense, its masks unread
    folder = copy_of(sparse_folder, tmp_path)
    edit_json(folder, "config.json", lambda c: c["model"].update(sharing="hard"))
    with pytest.raises(InvalidModelFolderError, match=r"config\.json: model\.sharing is 'hard', but the folder holds "
                                                      r"masks\.safetensors, a file of sparse sharing") as caught:
        MultiTaskTagger.from_pretrained(folder)
    assert caught.value.key == "model.sharing"
    (folder / "masks.safetensors").unlink()
    hard = MultiTaskTagger.from_pretrained(folder)  # without the sparse file it is a hard-sharing folder
    # saving it into a folder that held a sparse model removes the masks that would now contradict config.json
    again = copy_of(sparse_folder, tmp_path / "again")
    hard.save_pretrained(again)
    assert not (again / "masks.safetensors").exists()
    assert MultiTaskTagger.from_pretrained(again).config.sharing == "hard"


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory, tiny_bert) -> Path:
    from sparseshare.config import load_config
    from sparseshare.recipes.train import run_training

    from conftest import tiny_bert_overrides

    data = write_tiny_corpus(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("bert_run")
    run_training(load_config(None, tiny_bert_overrides(data, out, tiny_bert, **{"train.optimizer": "adamw"})), log=quiet)
    return out / "model"


def test_a_transformer_folder_without_its_vocabulary_or_with_a_damaged_tokenizer_is_refused(bert_folder, tmp_path):
    """Without encoder/tokenizer.json transformers builds a tokenizer of five special tokens, so every word would be
    [UNK] and the model would tag garbage without a word; damaged tokenizer files are named."""
    folder = copy_of(bert_folder, tmp_path)
    tokenizer = folder / "encoder" / "tokenizer.json"
    intact = tokenizer.read_bytes()
    tokenizer.unlink()
    with pytest.raises(ModelFolderError, match=r"missing the tokenizer's vocabulary in .*encoder \(none of tokenizer"):
        MultiTaskTagger.from_pretrained(folder)
    tokenizer.write_bytes(intact[:300])
    with pytest.raises(InvalidModelFolderError, match=r"encoder/tokenizer\.json: corrupt JSON"):
        MultiTaskTagger.from_pretrained(folder)
    tokenizer.write_bytes(b"\xff" + intact)
    with pytest.raises(InvalidModelFolderError, match=r"encoder/tokenizer\.json: corrupt JSON"):
        MultiTaskTagger.from_pretrained(folder)
    tokenizer.write_text("{}")
    with pytest.raises(InvalidModelFolderError, match=r"encoder: the tokenizer or encoder config could not be read"):
        MultiTaskTagger.from_pretrained(folder)
    (folder / "encoder" / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(InvalidModelFolderError, match=r"encoder/tokenizer_config\.json: corrupt JSON"):
        MultiTaskTagger.from_pretrained(folder)
    folder = copy_of(bert_folder, tmp_path / "smaller")
    config = json.loads((folder / "encoder" / "config.json").read_text())
    (folder / "encoder" / "config.json").write_text(json.dumps({**config, "vocab_size": 100}))
    with pytest.raises(InvalidModelFolderError, match=r"tokenizer has \d+ entries, more than the 100 rows"):
        MultiTaskTagger.from_pretrained(folder)
    assert MultiTaskTagger.from_pretrained(bert_folder).predict(TINY_SENTENCES)  # the intact folder still loads


class _AllocationGuard:
    """Stands in for transformers' AutoModel in the encoder module: building on the meta device (no memory) passes,
    allocating the encoder fails the test."""

    @staticmethod
    def from_config(config, **kwargs):
        from transformers import AutoModel

        if torch.get_default_device().type != "meta":
            pytest.fail("the encoder was allocated")
        return AutoModel.from_config(config, **kwargs)


@pytest.mark.parametrize("change, problem", [
    ({"vocab_size": 10**9}, r"'embeddings\.word_embeddings\.weight' of shape \(1000000000, 16\), model\.safetensors "
                            r"holds \(\d+, 16\)"),
    ({"max_position_embeddings": 10**7}, r"'embeddings\.position_embeddings\.weight' of shape \(10000000, 16\)"),
    ({"hidden_size": 2**20, "num_attention_heads": 2}, r"of shape \(\d+, 1048576\)"),
    ({"intermediate_size": 10**7}, r"'encoder\.layer\.0\.intermediate\.dense\.weight' of shape \(10000000, 16\)"),
    ({"num_hidden_layers": 40}, r"it describes 40 layers \(encoder\.layer\.<n>\), model\.safetensors holds the weights "
                                r"of 3"),
    ({"hidden_act": "nosuchact"}, r"transformers cannot build the encoder it describes \(KeyError"),
    ({"num_attention_heads": 3}, r"transformers cannot build the encoder it describes \(ValueError: The hidden size"),
])
def test_encoder_config_sizes_are_checked_against_the_weights_before_allocating(bert_folder, tmp_path, monkeypatch,
                                                                                change, problem):
    """encoder/config.json is the Hugging Face model's own config, outside config.json's checks: what it asks for is
    built on the meta device and compared with model.safetensors' header before the encoder is allocated."""
    folder = copy_of(bert_folder, tmp_path)
    config = json.loads((folder / "encoder" / "config.json").read_text())
    (folder / "encoder" / "config.json").write_text(json.dumps({**config, **change}))
    monkeypatch.setattr("sparseshare.encoders.transformer.AutoModel", _AllocationGuard)
    with pytest.raises(InvalidModelFolderError, match=problem) as caught:
        MultiTaskTagger.from_pretrained(folder)
    assert caught.value.path == str(folder / "encoder" / "config.json")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_half_precision_encoder_config_builds_a_float32_encoder(bert_folder, tmp_path, dtype):
    """Many Hub checkpoints name bf16 / fp16 in their config: the encoder is built in float32 all the same (before,
    tagging failed with "mat1 and mat2 must have the same dtype")."""
    folder = copy_of(bert_folder, tmp_path)
    config = json.loads((folder / "encoder" / "config.json").read_text())
    (folder / "encoder" / "config.json").write_text(json.dumps({**config, "dtype": dtype}))
    model = MultiTaskTagger.from_pretrained(folder)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.predict(TINY_SENTENCES) == MultiTaskTagger.from_pretrained(bert_folder).predict(TINY_SENTENCES)


def test_a_tokenizer_limit_that_leaves_no_room_for_words_names_its_file(bert_folder, tmp_path):
    folder = copy_of(bert_folder, tmp_path)
    edit_json(folder, "encoder/tokenizer_config.json", lambda c: c.update(model_max_length=2))
    with pytest.raises(InvalidModelFolderError, match=r"tokenizer_config\.json: model_max_length 2 leaves no room for "
                                                      r"words") as caught:
        MultiTaskTagger.from_pretrained(folder)
    assert caught.value.key == "model_max_length"


def test_a_routing_file_beside_another_sharing_is_refused_and_removed_on_save(strategy_folders, tmp_path):
    """routing.json is routing's map of its routes: beside a hard-sharing config.json it would be shown by
    `sparseshare routing show` as this model's routes."""
    folder = copy_of(strategy_folders["hard"], tmp_path)
    hard = MultiTaskTagger.from_pretrained(folder)
    (folder / "routing.json").write_text((strategy_folders["routing"] / "routing.json").read_text())
    with pytest.raises(InvalidModelFolderError, match=r"model\.sharing is 'hard', but the folder holds "
                                                      r"routing\.json, a file of routing sharing"):
        MultiTaskTagger.from_pretrained(folder)
    hard.save_pretrained(folder)
    assert not (folder / "routing.json").exists()
    assert MultiTaskTagger.from_pretrained(folder).config.sharing == "hard"


# -- the property: the original predictions, or an error naming the tampered file --------------------------------
FILES = ("config.json", "labels.json", "vocab.json", "model.safetensors")
OTHER_TYPES = [None, True, "ZZZ", 0, 1.5, [], {}, ["ZZZ"], {"ZZZ": 1}]
CASTS = ("float64", "float16", "bfloat16")  # another floating dtype: cast as the tensor loads
TENSOR_CHANGES = [*CASTS, "int64", "int32", "bool", "drop_row", "add_row", "flatten", "unsqueeze", "nan", "inf", "-inf",
                  "delete", "rename", "extra"]
FRESH = {"words": "qqq", "chars": "ζ"}  # an entry the lookup can produce, in neither the vocabulary nor the sentences
FUZZ = settings(max_examples=250, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def _json_type(value) -> str:
    return "bool" if isinstance(value, bool) else "number" if isinstance(value, (int, float)) else type(value).__name__


def _nodes(value, path=()):
    """Every (path, value) under the root of a JSON document; the record of the training config (info.training_config,
    free-form: shown in the model card only) as one node."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    if path == ("info", "training_config"):
        children = ()
    for key, child in children:
        yield path + (key,), child
        yield from _nodes(child, path + (key,))


def _replace(document, path, value):
    node = document
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _draw_json_change(data, original, used):
    """(file, description, change(document), renamed label or None, must_fail); ``used``: the words (as the lookup
    reads them) and characters of TINY_SENTENCES."""
    file = data.draw(st.sampled_from(["config.json", "labels.json", "vocab.json"]), label="file")
    document = original[file]
    path, old = data.draw(st.sampled_from(list(_nodes(document))), label="path")
    kind = data.draw(st.sampled_from(["retype", "out_of_range", "rename", "drop", "duplicate", "add_key"]), label="kind")
    in_vocab_or_labels = file != "config.json"
    if kind == "rename" and file == "vocab.json" and len(path) == 3 and path[2] >= 2 and old not in used[path[0]]:
        # a vocabulary entry that the sentences never use, renamed to a fresh one: the same tags
        new = FRESH[path[0]]
        return file, f"{path} = {new!r}", lambda d: _replace(d, path, new), None, False
    if kind == "rename":
        kind = "out_of_range"
    if kind == "retype" or (kind == "out_of_range" and isinstance(old, (bool, dict, list, type(None)))):
        new = data.draw(st.sampled_from([v for v in OTHER_TYPES if _json_type(v) != _json_type(old)]), label="new")
        return file, f"{path} = {new!r}", lambda d: _replace(d, path, new), None, in_vocab_or_labels
    if kind == "out_of_range":
        if isinstance(old, str):
            # a fresh name: "ZZZ" (no span label, no lowercased word, not one character) or ""; not "" for a word: an
            # empty word may come from a vector file, and renaming a word to it only makes the old word unknown
            choices = ["ZZZ"] if path[:2] == ("words", "itos") else ["ZZZ", ""]
            new = data.draw(st.sampled_from(choices), label="new")
            renamed = (path[0], old, new) if file == "labels.json" else None
            must_fail = in_vocab_or_labels and not renamed
            return file, f"{path} = {new!r}", lambda d: _replace(d, path, new), renamed, must_fail
        new = data.draw(st.sampled_from([v for v in (-1, 0, -0.5, 1.5, old + 1, old * 2) if v != old]), label="new")
        return file, f"{path} = {new!r}", lambda d: _replace(d, path, new), None, in_vocab_or_labels
    if kind == "add_key":  # to the nearest object at or above the path
        target = next(path[:n] for n in range(len(path), -1, -1) if isinstance(_get(document, path[:n]), dict))
        return file, f"add key ZZZ to {target}", lambda d: _get(d, target).update(ZZZ=1), None, in_vocab_or_labels

    def change(d):
        parent = _get(d, path[:-1])
        if kind == "drop":
            del parent[path[-1]]
        elif isinstance(parent, list):
            parent.insert(data.draw(st.integers(0, len(parent)), label="at"), parent[path[-1]])
        else:
            parent["ZZZ"] = parent[path[-1]]

    # dropping or repeating a label, a vocabulary entry or a section changes what the weights need
    return file, f"{kind} {path}", change, None, in_vocab_or_labels


def _get(document, path):
    for key in path:
        document = document[key]
    return document


def _tensor_change(tensors, name, how):
    t = tensors[name]
    if how in (*CASTS, "int64", "int32", "bool"):
        tensors[name] = t.to(getattr(torch, how))
    elif how == "drop_row":
        tensors[name] = t[:-1].clone()
    elif how == "add_row":
        tensors[name] = torch.cat([t, t[:1]])
    elif how == "flatten":
        tensors[name] = t.flatten().clone() if t.dim() > 1 else t.unsqueeze(0).clone()
    elif how == "unsqueeze":
        tensors[name] = t.unsqueeze(0).clone()
    elif how in ("nan", "inf", "-inf"):
        t.view(-1)[t.numel() // 2] = float(how)
    elif how == "delete":
        del tensors[name]
    elif how == "rename":
        tensors[name + "_"] = tensors.pop(name)
    else:
        tensors["heads.extra.proj.bias"] = torch.zeros(3)


def _predictions_with_rounded(model: MultiTaskTagger, name: str, dtype: torch.dtype) -> dict:
    """``model``'s predictions with the tensor ``name`` rounded to ``dtype`` (as a cast file loads it)."""
    tensor = model.state_dict()[name]  # shares the model's storage
    saved = tensor.clone()
    try:
        tensor.copy_(tensor.to(dtype))
        return model.predict(TINY_SENTENCES)
    finally:
        tensor.copy_(saved)


@pytest.mark.slow
def test_a_tampered_folder_loads_to_the_same_predictions_or_names_the_file(trained):
    """250 tampered folders (derandomized: the same every run), one change each. A refusal names the tampered file,
    or the other file of two whose sizes disagree and says so; a folder that loads tags as the original (or as the
    original with the label renamed, or with the weight rounded to the dtype it was stored in). Every file ends both
    ways at least once; ``pytest -s`` shows the counts."""
    folder, expected = trained
    original = {name: json.loads((folder / name).read_text()) for name in FILES if name.endswith(".json")}
    data_section = original["config.json"]["data"]
    lookup = WordLookup(Vocab([]), data_section["lowercase"], data_section["normalize_digits"])
    used = {"words": {lookup.key(w) for s in TINY_SENTENCES for w in s}, "chars": {c for s in TINY_SENTENCES
                                                                                   for w in s for c in w}}
    assert not set(FRESH.values()) & {*original["vocab.json"]["words"]["itos"], *original["vocab.json"]["chars"]["itos"]}
    reference = MultiTaskTagger.from_pretrained(folder)
    outcomes: collections.Counter = collections.Counter()

    @FUZZ
    @given(data=st.data())
    def load_tampered(data):
        renamed = cast = None
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "model"
            shutil.copytree(folder, copy)
            if data.draw(st.integers(0, 3), label="file") == 0:  # the weights, or (_draw_json_change) a JSON file
                file, must_fail = "model.safetensors", True
                name = data.draw(st.sampled_from(sorted(load_file(str(folder / file)))), label="tensor")
                how = data.draw(st.sampled_from(TENSOR_CHANGES), label="change")
                if how in CASTS:
                    must_fail, cast = False, (name, getattr(torch, how))
                edit_tensors(copy, file, lambda tensors: _tensor_change(tensors, name, how))
                note(f"{file}: {how} {name}")
            else:
                file, what, change, renamed, must_fail = _draw_json_change(data, original, used)
                edit_json(copy, file, change)
                note(f"{file}: {what}")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # a bad info value is dropped with a warning
                    tags = MultiTaskTagger.from_pretrained(copy).predict(TINY_SENTENCES)
            except InvalidModelFolderError as err:
                blamed, message = Path(err.path).name, str(err)
                assert blamed == file or f"{file} and {blamed} disagree" in message \
                    or f"{blamed} and {file} disagree" in message, message
                assert cast is None, f"a tensor stored as another floating dtype was refused: {message}"
                outcomes[file, "refused"] += 1
                return
        assert not must_fail, f"{file} was tampered with in a way that must be refused, but it loaded"
        want = expected
        if renamed is not None:  # a label of a task without a span scheme renamed: the same tags under the new name
            task, old, new = renamed
            want = {**expected, task: [[new if tag == old else tag for tag in seq] for seq in expected[task]]}
        if cast is not None:
            want = _predictions_with_rounded(reference, *cast)
        assert tags == want
        outcomes[file, "same predictions"] += 1

    load_tampered()
    table = "\n".join(f"  {file:<18} refused {outcomes[file, 'refused']:>3}   same predictions "
                      f"{outcomes[file, 'same predictions']:>3}" for file in FILES)
    print(f"\ntampered folders: {sum(outcomes.values())}\n{table}")
    for file in FILES:
        assert outcomes[file, "refused"] and outcomes[file, "same predictions"], table
