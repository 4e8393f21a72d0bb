"""Saved models: JSON + safetensors only, identical predictions after reload, clear errors on bad folders."""
from __future__ import annotations

import json

import pytest

from safetensors.torch import load_file

from sparseshare.config import load_config
from sparseshare.model import MultiTaskTagger, ModelFolderError
from sparseshare.recipes.train import run_training

from conftest import tiny_overrides, write_tiny_corpus

SENTENCES = [["John", "lives", "in", "Paris", "."], ["The", "United", "Nations", "met", "in", "New", "York", "."],
             ["Unknownword", "zzz", "1999"]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = write_tiny_corpus(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("run")
    run_training(load_config(None, tiny_overrides(data, out, **{"train.epochs": 3})), log=lambda *a: None)
    return out / "model"


def test_model_folder_holds_only_json_and_safetensors(trained):
    names = sorted(p.name for p in trained.iterdir())
    assert names == ["README.md", "config.json", "labels.json", "model.safetensors", "vocab.json"]
    config = json.loads((trained / "config.json").read_text())
    assert config["format_version"] == 1 and set(config["tasks"]) == {"pos", "chunk", "ner"}


def test_reload_gives_identical_predictions(trained, tmp_path):
    model = MultiTaskTagger.from_pretrained(trained)
    before = model.predict(SENTENCES)
    model.save_pretrained(tmp_path / "again")
    after = MultiTaskTagger.from_pretrained(tmp_path / "again").predict(SENTENCES)
    assert before == after
    assert [len(s) for s in before["ner"]] == [len(s) for s in SENTENCES]
    # NER is decoded in BIOES and returned in the corpus scheme (IOB2).
    assert all(not tag.startswith(("S-", "E-")) for seq in before["ner"] for tag in seq)


def test_predict_keeps_input_order_and_subsets_tasks(trained):
    model = MultiTaskTagger.from_pretrained(trained)
    together = model.predict(SENTENCES, batch_size=2)
    one_by_one = [model.predict([s], ["pos"])["pos"][0] for s in SENTENCES]
    assert together["pos"] == one_by_one
    assert list(model.predict(SENTENCES, ["ner"])) == ["ner"]


def test_bad_prediction_inputs(trained):
    model = MultiTaskTagger.from_pretrained(trained)
    with pytest.raises(ValueError, match=r"unknown task.*\['pos', 'chunk', 'ner'\]"):
        model.predict(SENTENCES, ["srl"])
    with pytest.raises(ValueError, match="sentence 1 is empty"):
        model.predict([["a"], []])


@pytest.mark.parametrize("missing", ["config.json", "vocab.json", "labels.json", "model.safetensors"])
def test_missing_file_is_named(trained, tmp_path, missing):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(trained, folder)
    (folder / missing).unlink()
    with pytest.raises(ModelFolderError, match=missing.replace(".", r"\.")):
        MultiTaskTagger.from_pretrained(folder)


def test_corrupt_files_are_named(trained, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(trained, folder)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="model.safetensors"):
        MultiTaskTagger.from_pretrained(folder)
    shutil.copy(trained / "model.safetensors", folder / "model.safetensors")
    (folder / "labels.json").write_text("{broken")
    with pytest.raises(ValueError, match="labels.json: corrupt JSON"):
        MultiTaskTagger.from_pretrained(folder)


def test_newer_format_version_is_refused(trained, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(trained, folder)
    config = json.loads((folder / "config.json").read_text())
    config["format_version"] = 99
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"format 99 \(written by sparseshare .*\) is not supported .* upgrade"):
        MultiTaskTagger.from_pretrained(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(ModelFolderError, match="not found"):
        MultiTaskTagger.from_pretrained(tmp_path / "nope")


def test_word_dropout_trains_the_unknown_word_vector(tiny_corpus, tmp_path):
    def unk_row(extra):
        out = tmp_path / f"run{len(extra)}"
        run_training(load_config(None, tiny_overrides(tiny_corpus, out, **{"train.epochs": 1, **extra})),
                     log=lambda *a: None)
        return load_file(str(out / "model" / "model.safetensors"))["sharing.encoder.embedder.words.weight"][1]

    import torch

    untouched, trained = unk_row({}), unk_row({"model.bilstm.word_dropout": 0.3})
    assert not torch.equal(untouched, trained)


def test_scratch_transformer_encoder_trains_and_reloads(tiny_corpus, tmp_path):
    overrides = tiny_overrides(tiny_corpus, tmp_path, **{
        "model.encoder": "scratch", "model.scratch.dim": 32, "model.scratch.heads": 2, "model.scratch.ff": 64,
        "train.epochs": 2, "train.optimizer": "adamw", "train.lr": 3e-3, "model.scratch.dropout": 0.0})
    results = run_training(load_config(None, overrides), log=lambda *a: None)
    assert results["dev"]["pos"]["accuracy"] > 20
    model = MultiTaskTagger.from_pretrained(tmp_path / "model")
    first = model.predict(SENTENCES)
    model.save_pretrained(tmp_path / "again")
    assert MultiTaskTagger.from_pretrained(tmp_path / "again").predict(SENTENCES) == first
