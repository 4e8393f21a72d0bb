"""End-to-end: training beats the majority baseline, resume after an interruption, checkpoints, CLI."""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from sparseshare.config import load_config
from sparseshare.model import MultiTaskTagger
from sparseshare.training.checkpoints import latest_checkpoint
from sparseshare.recipes.train import run_training

from conftest import train_interrupted_and_resumed
from conftest import tiny_overrides


def _quiet(*_args, **_kwargs):
    pass


@pytest.mark.slow
def test_tiny_training_beats_majority_baseline(conll03_subset, tmp_path):
    overrides = tiny_overrides(conll03_subset, tmp_path / "run", **{
        "model.bilstm.hidden": 32, "train.epochs": 6, "train.lr": 0.1, "model.bilstm.dropout": 0.2})
    results = run_training(load_config(None, overrides), log=_quiet)

    dev = results["dev"]
    model = MultiTaskTagger.from_pretrained(tmp_path / "run" / "model")
    # Majority baseline on dev: every token gets train's most frequent tag (for spans: O, F1 = 0).
    train_pos = [t for line in (conll03_subset / "train.txt").read_text().splitlines()
                 if line.strip() for t in [line.split()[1]]]
    majority = Counter(train_pos).most_common(1)[0][0]
    gold_pos = [line.split()[1] for line in (conll03_subset / "dev.txt").read_text().splitlines() if line.strip()]
    baseline = 100 * sum(t == majority for t in gold_pos) / len(gold_pos)
    assert dev["pos"]["accuracy"] > baseline + 20, (dev["pos"]["accuracy"], baseline)
    assert dev["chunk"]["f1"] > 30.0
    assert dev["ner"]["f1"] > 0.0
    assert set(results["test"]) == {"pos", "chunk", "ner"}
    assert results["selected_epoch"] == max(range(len(results["history"])),
                                            key=lambda i: results["history"][i]["dev_mean"]) + 1
    assert model.labels["ner"][0].startswith(("B-", "E-", "I-", "O", "S-"))  # NER head is BIOES


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_interrupted_training_resumes_to_the_same_model(tiny_corpus, tmp_path):
    extra = {"train.epochs": 3, "train.checkpoint_every": 4, "model.bilstm.dropout": 0.3, "train.patience": 0}
    reference, resumed = train_interrupted_and_resumed(tiny_corpus, tmp_path, extra)

    a, b = _weights(tmp_path / "a" / "model"), _weights(tmp_path / "b" / "model")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    assert resumed["dev"] == reference["dev"]
    assert [h["dev"] for h in resumed["history"]] == [h["dev"] for h in reference["history"]]


def test_checkpoints_are_pruned_and_complete(tiny_corpus, tmp_path):
    config = load_config(None, tiny_overrides(tiny_corpus, tmp_path, **{"train.checkpoint_every": 5,
                                                                      "train.keep_checkpoints": 2}))
    run_training(config, log=_quiet)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert len(kept) == 2
    assert all((tmp_path / "checkpoints" / k / "train_state.json").is_file() for k in kept)
    assert json.loads((tmp_path / "results.json").read_text())["epochs_run"] == 2


def test_unseen_dev_labels_are_counted_not_fatal(tiny_corpus, tmp_path):
    dev = (tiny_corpus / "dev.txt").read_text().replace("Paris NNP B-NP B-LOC", "Paris NNP B-NP B-GPE", 1)
    (tiny_corpus / "dev.txt").write_text(dev)
    results = run_training(load_config(None, tiny_overrides(tiny_corpus, tmp_path, **{"train.epochs": 1})),
                           log=_quiet)
    assert results["dev"]["ner"]["unseen_labels"] == 1
    assert results["dev"]["ner"]["unseen_label_names"] == ["B-GPE"]
    assert results["dev"]["pos"]["unseen_labels"] == 0


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_a_bilstm_trains_under_bf16_autocast(tiny_corpus, tmp_path):
    # with earlier torch versions this tiny BiLSTM failed inside oneDNN's LSTM primitive under bf16 autocast
    results = run_training(load_config(None, tiny_overrides(tiny_corpus, tmp_path, **{
        "train.epochs": 1, "train.mixed_precision": "bf16"})), log=_quiet)
    assert all(0 <= r["score"] <= 100 for r in results["dev"].values())
    weights = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert all(t.dtype == torch.float32 and bool(torch.isfinite(t).all()) for t in weights.values())


def test_a_span_task_whose_dev_set_has_no_spans_is_named_in_a_warning(tiny_corpus, tmp_path):
    # its F1 is 0 at every epoch whatever the model predicts: selection and early stopping cannot use it
    lines = (tiny_corpus / "dev.txt").read_text().splitlines()
    (tiny_corpus / "dev.txt").write_text("".join(
        (" ".join(line.split()[:3] + ["O"]) if len(line.split()) == 4 and not line.startswith("-DOCSTART-") else line)
        + "\n" for line in lines))
    messages = []
    run_training(load_config(None, tiny_overrides(tiny_corpus, tmp_path, **{"train.epochs": 1})), log=messages.append)
    assert any(m.startswith("task 'ner': its dev set has no spans (every label is O)") for m in messages), messages
    assert not any("task 'chunk'" in m for m in messages)


@pytest.mark.parametrize("schedule", ["proportional", "temperature"])
def test_sampling_schedules_train(tiny_corpus, tmp_path, schedule):
    results = run_training(load_config(None, tiny_overrides(tiny_corpus, tmp_path, **{
        "train.schedule": schedule, "train.epochs": 1, "train.optimizer": "adamw", "train.lr": 0.01,
        "train.lr_schedule": "linear", "train.warmup_steps": 2})), log=_quiet)
    assert results["epochs_run"] == 1


def test_resume_from_an_incomplete_checkpoint_names_the_missing_file(tiny_corpus, tmp_path):
    config = load_config(None, tiny_overrides(tiny_corpus, tmp_path, **{"train.epochs": 1}))
    run_training(config, log=_quiet)
    (latest_checkpoint(tmp_path) / "optimizer.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"incomplete: missing optimizer\.bin"):
        run_training(config, resume=True, log=_quiet)


def test_resume_without_checkpoint_starts_from_scratch(tiny_corpus, tmp_path):
    messages = []
    config = load_config(None, tiny_overrides(tiny_corpus, tmp_path, **{"train.epochs": 1}))
    results = run_training(config, resume=True, log=messages.append)
    assert any("no checkpoint" in m for m in messages) and results["epochs_run"] == 1


def test_new_run_refuses_an_output_dir_with_checkpoints(tiny_corpus, tmp_path):
    config = load_config(None, tiny_overrides(tiny_corpus, tmp_path, **{"train.epochs": 1}))
    run_training(config, log=_quiet)
    with pytest.raises(ValueError, match="already holds a finished run.*checkpoints.*--resume"):
        run_training(config, log=_quiet)


def test_resume_refuses_a_changed_config(tiny_corpus, tmp_path):
    run_training(load_config(None, tiny_overrides(tiny_corpus, tmp_path, **{"train.epochs": 1})), log=_quiet)
    changed = load_config(None, tiny_overrides(tiny_corpus, tmp_path, **{"train.epochs": 2, "train.lr": 0.5}))
    with pytest.raises(ValueError, match=r"train\.lr: 0\.05 -> 0\.5"):
        run_training(changed, resume=True, log=_quiet)
    longer = load_config(None, tiny_overrides(tiny_corpus, tmp_path, **{"train.epochs": 2}))
    assert run_training(longer, resume=True, log=_quiet)["epochs_run"] == 2  # more epochs: allowed


def test_resume_accepts_another_spelling_of_the_same_paths(tiny_corpus, tmp_path, monkeypatch):
    """A run started with absolute paths resumes with relative ones naming the same folders (and back); a path
    naming another folder is still a change."""
    run_training(load_config(None, tiny_overrides(tiny_corpus, tmp_path / "run", **{"train.epochs": 1})), log=_quiet)
    monkeypatch.chdir(tmp_path)
    relative = {"data.dir": os.path.relpath(tiny_corpus, tmp_path), "train.epochs": 2}
    assert run_training(load_config(None, tiny_overrides(tiny_corpus, "run", **relative)), resume=True,
                        log=_quiet)["epochs_run"] == 2
    other = tmp_path / "other_corpus"
    shutil.copytree(tiny_corpus, other)
    moved = {**relative, "data.dir": "other_corpus", "train.epochs": 3}
    with pytest.raises(ValueError, match=r"data\.dir: .* -> 'other_corpus'"):
        run_training(load_config(None, tiny_overrides(tiny_corpus, "run", **moved)), resume=True, log=_quiet)


def test_resume_after_early_stop_trains_no_further(tiny_corpus, tmp_path):
    extra = {"train.epochs": 30, "train.patience": 1, "train.lr": 1e-6, "train.optimizer": "adamw"}
    config = load_config(None, tiny_overrides(tiny_corpus, tmp_path, **extra))
    first = run_training(config, log=_quiet)
    assert first["stopped_early"] and first["epochs_run"] < 30
    again = run_training(config, resume=True, log=_quiet)
    assert again["epochs_run"] == first["epochs_run"] and again["dev"] == first["dev"]


def test_ill_formed_training_labels_are_rejected(tiny_corpus, tmp_path):
    train = (tiny_corpus / "train.txt").read_text().replace("Paris NNP B-NP B-LOC", "Paris NNP B-NP I-LOC", 1)
    (tiny_corpus / "train.txt").write_text(train)
    with pytest.raises(ValueError, match=r"task 'ner': 1 training sentence\(s\) are not valid IOB2.*O -> I-LOC"):
        run_training(load_config(None, tiny_overrides(tiny_corpus, tmp_path)), log=_quiet)


def test_training_from_a_hub_dataset_folder_matches_local_files(tiny_corpus, tmp_path):
    """`data.source=hub` goes through datasets.load_dataset; a local dataset folder takes the same path."""
    from datasets import ClassLabel, Dataset, Features, Sequence, Value

    from sparseshare.data.readers import read_conll

    rows = read_conll(tiny_corpus / "train.txt", ["tokens", "pos", "chunk", "ner"])
    names = sorted({t for r in rows for t in r["ner"]})
    features = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=names))})
    hub = tmp_path / "hub"
    hub.mkdir()
    for split in ("train", "validation", "test"):
        Dataset.from_dict({"tokens": [r["tokens"] for r in rows],
                           "ner_tags": [[names.index(t) for t in r["ner"]] for r in rows]},
                          features=features).to_parquet(str(hub / f"{split}.parquet"))
    common = {"tasks": "[ner]", "train.epochs": 1, "model.sharing": "single"}
    local = run_training(load_config(None, tiny_overrides(tiny_corpus, tmp_path / "local", **common)), log=_quiet)
    from_hub = run_training(load_config(None, tiny_overrides(tiny_corpus, tmp_path / "hub_run", **common, **{
        "data.source": "hub", "data.hub_paths": "{ner: %s}" % hub})), log=_quiet)
    assert from_hub["dev"]["ner"] == local["dev"]["ner"]


def test_optimizer_groups_exempt_biases_norms_and_crf_from_weight_decay():
    from sparseshare.data.vocab import Vocab
    from sparseshare.tasks import load_task
    from sparseshare.optim import build_optimizer

    def groups(*overrides):
        config = load_config(None, ["tasks=[ner]", *overrides])
        model = MultiTaskTagger(config.model, [load_task("ner")], {"ner": ["O", "B-PER", "I-PER", "E-PER", "S-PER"]},
                                Vocab(["a"]), Vocab(["a"]))
        names = {id(p): n for n, p in model.named_parameters()}
        return [(g["lr"], g["weight_decay"], {names[id(p)] for p in g["params"]})
                for g in build_optimizer(config, model).param_groups]

    assert len(groups()) == 1  # no decay, no head lr: one plain group (as the paper's SGD)
    decayed = {n for lr, wd, ns in groups("train.weight_decay=0.01", "model.encoder=scratch") if wd for n in ns}
    assert "sharing.encoder.layers.0.linear1.weight" in decayed and "heads.ner.proj.weight" in decayed
    assert not any(n.endswith("bias") or ".crf." in n or "norm" in n for n in decayed)
    head_lrs = {lr for lr, _, ns in groups("train.head_lr=0.001") if any(n.startswith("heads.") for n in ns)}
    assert head_lrs == {0.001}


def test_momentum_does_not_move_a_head_its_task_did_not_use(tiny_corpus, tmp_path):
    from sparseshare.training.data import build_model, load_task_data
    from sparseshare.optim import build_optimizer

    config = load_config(None, tiny_overrides(tiny_corpus, tmp_path))
    data = load_task_data(config)
    model = build_model(config, data)
    optimizer = build_optimizer(config, model)  # SGD with momentum 0.9

    def step(task):
        d = data[task]
        batch = model.featurizer.collate(d.train_tokens[:8], d.train_labels[:8], d.train_word_ids[:8])
        model(batch, task).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step("pos")
    pos_head = {n: p.detach().clone() for n, p in model.heads["pos"].named_parameters()}
    step("ner")
    step("ner")
    for name, value in model.heads["pos"].named_parameters():
        assert torch.equal(value, pos_head[name]), name
