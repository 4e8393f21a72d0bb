"""Crashes at the worst moment, two runs in one folder, finished runs, diverging losses, damaged checkpoints.

The fault-injection tests count every file-system step a tiny run takes (each write, rename and removal under its
output_dir), crash the run at each one in turn, and check that ``--resume`` ends with the model an uninterrupted
run trains, tensor for tensor.
"""
from __future__ import annotations

import errno
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sparseshare.run_folder import RunFolderError, RunLock
from sparseshare.training.checkpoints import CheckpointError, TrainingDiverged, latest_checkpoint
from sparseshare.recipes.train import run_training

from conftest import ROOT, quiet, tiny_config, tiny_overrides


class Crash(BaseException):
    """A crash: not an Exception, so that no ``except Exception`` on the way can swallow it."""


class FileSystemSteps:
    """Counts the writes, renames and removals under ``root``; raises :class:`Crash` at step ``crash_at``."""

    def __init__(self, monkeypatch, root: Path, crash_at: int | None = None, only=("write", "rename", "replace",
                                                                                    "rmtree")):
        self.root, self.crash_at, self.steps = str(root), crash_at, []
        for kind, owner, name in (("write", Path, "write_text"), ("rename", Path, "rename"),
                                  ("replace", os, "replace"), ("rmtree", shutil, "rmtree")):
            if kind in only:
                monkeypatch.setattr(owner, name, self._wrap(kind, getattr(owner, name)))

    def _wrap(self, kind, original):
        def step(*args, **kwargs):
            target = str(args[0])
            if target == self.root or target.startswith(self.root + os.sep):
                self.steps.append(f"{kind} {target[len(self.root):]}")
                if len(self.steps) == self.crash_at:
                    raise Crash(self.steps[-1])
            return original(*args, **kwargs)
        return step


def _tensors(model_dir: Path) -> dict:
    return load_file(str(model_dir / "model.safetensors"))


def _assert_same_model(a: Path, b: Path) -> None:
    x, y = _tensors(a), _tensors(b)
    assert x.keys() == y.keys()
    assert all(torch.equal(x[k], y[k]) for k in x), [k for k in x if not torch.equal(x[k], y[k])]


TRAIN = {"train.epochs": 2, "train.checkpoint_every": 1000, "train.keep_checkpoints": 1}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted tiny run and the list of its file-system steps."""
    from conftest import write_tiny_corpus

    root = tmp_path_factory.mktemp("faults")
    data = write_tiny_corpus(root)
    with pytest.MonkeyPatch.context() as monkeypatch:
        steps = FileSystemSteps(monkeypatch, root / "reference")
        results = run_training(tiny_config(data, root / "reference", **TRAIN), log=quiet)
    return data, root / "reference", results, steps.steps


def test_the_fault_points_cover_every_save(reference):
    _, _, _, steps = reference
    # two epoch-end checkpoints, a model save per improving epoch and the final save, results.json last
    assert any("checkpoints/step_00000036.partial/train_state.json" in s for s in steps)
    assert sum(s.startswith("rename ") and s.endswith("/model.partial") for s in steps) >= 2
    assert steps[-1].startswith("replace ") and "results.json" in steps[-1]
    assert len(steps) >= 20


@pytest.mark.slow
def test_a_crash_at_any_file_system_step_resumes_to_the_same_model(reference, tmp_path, monkeypatch):
    data, reference_dir, expected, steps = reference
    for k in range(1, len(steps) + 1):
        run = tmp_path / f"crash_{k:02d}"
        config = tiny_config(data, run, **TRAIN)
        with monkeypatch.context() as patch:
            FileSystemSteps(patch, run, crash_at=k)
            with pytest.raises(Crash):
                run_training(config, log=quiet)
        resumed = run_training(config, resume=True, log=quiet)
        _assert_same_model(run / "model", reference_dir / "model")
        assert resumed["dev"] == expected["dev"] and resumed["test"] == expected["test"], steps[k - 1]
        assert not (run / "model.old").exists() and not (run / "model.partial").exists()


def test_a_crash_between_the_renames_of_the_final_save_leaves_a_resumable_folder(reference, tmp_path, monkeypatch):
    """The case of the issue: model/ renamed to model.old, model.partial not yet in place."""
    data, reference_dir, _, steps = reference
    final = max(i for i, s in enumerate(steps, start=1) if s.startswith("rename ") and s.endswith("/model"))
    run = tmp_path / "run"
    config = tiny_config(data, run, **TRAIN)
    with monkeypatch.context() as patch:
        FileSystemSteps(patch, run, crash_at=final + 1)  # the rename of model.partial -> model
        with pytest.raises(Crash):
            run_training(config, log=quiet)
    assert not (run / "model").exists() and (run / "model.old").is_dir() and (run / "model.partial").is_dir()
    run_training(config, resume=True, log=quiet)
    _assert_same_model(run / "model", reference_dir / "model")


@pytest.mark.slow
def test_sparse_pipeline_resumes_after_a_crash_at_every_stage_transition(tiny_corpus, tmp_path, monkeypatch):
    """Every stage marks its end by an atomic replace (a mask file, a round's round.json, a run's results.json, the
    search's search.json, masks.safetensors, the report): crash at each, resume, compare the final model."""
    from sparseshare.config import load_config
    from sparseshare.recipes.train_sparse import run_sparse

    extra = {"tasks": "[ner]", "model.sharing": "sparse", "sparse.rounds": 1, "train.epochs": 1,
             "train.checkpoint_every": 1000}

    def config(folder):
        return load_config(None, tiny_overrides(tiny_corpus, folder, **extra))

    with monkeypatch.context() as patch:
        counter = FileSystemSteps(patch, tmp_path / "reference", only=("replace",))
        expected = run_sparse(config(tmp_path / "reference"), log=quiet)
    transitions = counter.steps
    assert any("round.json" in s for s in transitions) and any("search.json" in s for s in transitions)
    assert transitions[-1].endswith("report.json.partial")
    for k in range(1, len(transitions) + 1):
        run = tmp_path / f"crash_{k:02d}"
        with monkeypatch.context() as patch:
            FileSystemSteps(patch, run, crash_at=k, only=("replace",))
            with pytest.raises(Crash):
                run_sparse(config(run), log=quiet)
        report = run_sparse(config(run), resume=True, log=quiet)
        _assert_same_model(run / "joint" / "model", tmp_path / "reference" / "joint" / "model")
        assert report["test"] == expected["test"], transitions[k - 1]


@pytest.mark.slow
def test_a_sparse_joint_stage_with_private_word_tables_resumes_exactly_from_a_mid_epoch_checkpoint(
        tiny_corpus, tmp_path, monkeypatch):
    """The joint stage's checkpoint holds each task's own word table: killed after its first checkpoint, the
    resumed pipeline ends with the uninterrupted run's model."""
    from sparseshare.config import load_config
    from sparseshare.recipes.train_sparse import run_sparse

    extra = {"tasks": "[pos, ner]", "model.sharing": "sparse", "model.private_embedder": "words",
             "sparse.rounds": 1, "train.epochs": 2, "train.checkpoint_every": 2}

    def config(folder):
        return load_config(None, tiny_overrides(tiny_corpus, folder, **extra))

    with monkeypatch.context() as patch:
        counter = FileSystemSteps(patch, tmp_path / "reference", only=("write",))
        run_sparse(config(tmp_path / "reference"), log=quiet)
    joint_checkpoints = [k for k, step in enumerate(counter.steps, 1)
                         if "/joint/checkpoints/" in step and step.endswith("train_state.json")]
    assert len(joint_checkpoints) >= 2
    run = tmp_path / "crashed"
    with monkeypatch.context() as patch:  # writing the second checkpoint's state: the first one is complete
        FileSystemSteps(patch, run, crash_at=joint_checkpoints[1], only=("write",))
        with pytest.raises(Crash):
            run_sparse(config(run), log=quiet)
    lines = []
    run_sparse(config(run), resume=True, log=lambda *a: lines.append(" ".join(map(str, a))))
    assert any(line.startswith("resumed from") and "joint" in line for line in lines)
    _assert_same_model(run / "joint" / "model", tmp_path / "reference" / "joint" / "model")
    assert any(k.startswith("sharing.private.ner.words.") for k in _tensors(run / "joint" / "model"))


def test_a_finished_sparse_pipeline_is_never_replaced_without_overwrite(tiny_corpus, tmp_path):
    from sparseshare.config import load_config
    from sparseshare.recipes.train_sparse import run_sparse

    overrides = tiny_overrides(tiny_corpus, tmp_path / "run", **{
        "tasks": "[ner]", "model.sharing": "sparse", "sparse.rounds": 0, "train.epochs": 1})
    first = run_sparse(load_config(None, overrides), log=quiet)
    with pytest.raises(RunFolderError, match=r"already holds a finished run \(report.json, report.md, overlap.png, "
                                             r"joint, masks.safetensors, search, warmup, config.yaml\)"):
        run_sparse(load_config(None, overrides), log=quiet)
    assert run_sparse(load_config(None, overrides), resume=True, log=quiet)["test"] == first["test"]
    with RunLock(tmp_path / "run"):
        with pytest.raises(RunFolderError, match="in use by process"):
            run_sparse(load_config(None, overrides), resume=True, log=quiet)
    again = run_sparse(load_config(None, overrides + ["train.lr=0.1"]), overwrite=True, log=quiet)
    assert again["test"] != first["test"] and "lr: 0.1" in (tmp_path / "run" / "config.yaml").read_text()


# -- one run per folder ----------------------------------------------------------------------------------------
def test_a_run_stopped_early_goes_on_when_resumed_with_a_patience_that_would_not_have_stopped_it(tiny_corpus,
                                                                                                  tmp_path, capsys):
    """train.patience is a resumable change: resumed with more patience, a run that stopped early trains on from its
    last epoch's checkpoint, to the model of an uninterrupted run with that patience (it trained nothing, and kept
    the new settings in config.yaml)."""
    # a rate too small to change a prediction: every epoch after the first is one without a better dev score
    flat = {"tasks": "[pos]", "train.lr": 1e-12, "train.epochs": 4, "train.checkpoint_every": 1000}
    stopped = run_training(tiny_config(tiny_corpus, tmp_path / "run", **flat, **{"train.patience": 1}), log=quiet)
    assert stopped["stopped_early"] and stopped["epochs_run"] == 2
    again = run_training(tiny_config(tiny_corpus, tmp_path / "run", **flat, **{"train.patience": 1}), resume=True)
    assert again["epochs_run"] == 2 and "trains no more with train.patience=1" in capsys.readouterr().out
    resumed = run_training(tiny_config(tiny_corpus, tmp_path / "run", **flat, **{"train.patience": 0}), resume=True)
    whole = run_training(tiny_config(tiny_corpus, tmp_path / "whole", **flat, **{"train.patience": 0}), log=quiet)
    assert resumed["epochs_run"] == whole["epochs_run"] == 4 and not resumed["stopped_early"]
    assert [h["dev"] for h in resumed["history"]] == [h["dev"] for h in whole["history"]]
    _assert_same_model(latest_checkpoint(tmp_path / "run"), latest_checkpoint(tmp_path / "whole"))


@pytest.mark.parametrize("schedule, refused", [("linear", True), ("cosine", True), ("constant", False)])
def test_more_epochs_on_resume_are_refused_where_the_epochs_size_the_learning_rate(tiny_corpus, tmp_path, schedule,
                                                                                   refused):
    """A linear or cosine decay spans train.epochs: a run resumed with another value had decayed over one length
    and would continue over the other (the rate rose again from 0), training neither run."""
    flat = {"tasks": "[pos]", "train.epochs": 1, "train.lr_schedule": schedule}
    run_training(tiny_config(tiny_corpus, tmp_path / "run", **flat), log=quiet)
    longer = tiny_config(tiny_corpus, tmp_path / "run", **{**flat, "train.epochs": 2})
    if refused:
        with pytest.raises(ValueError, match=rf"train\.epochs 1 -> 2: with train\.lr_schedule '{schedule}' the "
                                             rf"number of epochs sizes the learning-rate decay"):
            run_training(longer, resume=True, log=quiet)
    else:
        assert run_training(longer, resume=True, log=quiet)["epochs_run"] == 2


@pytest.mark.parametrize("distill, refused", [
    (["train.distill_from={ner: teacher}"], True), (["model.sharing=sparse", "sparse.distill=true"], True),
    (["train.distill_from={ner: teacher}", "train.distill_weight=0.5"], False)])
def test_more_epochs_on_resume_are_refused_where_teacher_annealing_spans_the_run(distill, refused):
    """Teacher annealing moves from the teachers to the gold labels over train.epochs: like a decaying rate."""
    from sparseshare.config import load_config
    from sparseshare.training.checkpoints import check_resume_config

    saved, longer = (load_config(None, ["tasks=[ner]", f"train.epochs={n}", *distill]).to_dict() for n in (2, 3))
    if refused:
        with pytest.raises(ValueError, match=r"train\.epochs 2 -> 3: the teacher annealing of distillation"):
            check_resume_config(saved, longer)
    else:
        check_resume_config(saved, longer)


def test_a_second_run_into_a_locked_folder_is_refused_naming_the_holder(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    with RunLock(run):
        with pytest.raises(RunFolderError, match=rf"in use by process {os.getpid()} on "):
            run_training(tiny_config(tiny_corpus, run), log=quiet)
    assert not (run / "config.yaml").exists()  # nothing was written into the other run's folder
    run_training(tiny_config(tiny_corpus, run, **{"train.epochs": 1}), log=quiet)  # released: the folder is free


def test_a_lock_left_by_a_killed_process_does_not_block(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    hold = ("import sys, time; from sparseshare.run_folder import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match=rf"in use by process {holder.pid} "):
            run_training(tiny_config(tiny_corpus, run, **{"train.epochs": 1}), log=quiet)
    finally:
        holder.kill()  # kill -9: no clean-up runs, the lock file stays behind
        holder.wait()
    assert (run / ".lock").exists()
    results = run_training(tiny_config(tiny_corpus, run, **{"train.epochs": 1}), log=quiet)
    assert results["epochs_run"] == 1


@pytest.mark.slow
def test_two_cli_trainings_into_one_folder_at_once_one_is_refused(tiny_corpus, tmp_path):
    overrides = tiny_overrides(tiny_corpus, tmp_path / "run", **{"train.epochs": 1000})
    command = [sys.executable, "-m", "sparseshare.cli", "train"]
    first = subprocess.Popen([*command, *overrides], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "run" / "config.yaml").exists():  # written once the first run holds the lock
            assert first.poll() is None and time.time() < deadline, first.stderr.read() if first.poll() else ""
            time.sleep(0.1)
        second = subprocess.run([*command, *overrides], cwd=ROOT, capture_output=True, text=True)
        assert second.returncode != 0 and f"in use by process {first.pid} " in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None  # the first run goes on undisturbed
    finally:
        first.kill()
        first.wait()


# -- finished runs ---------------------------------------------------------------------------------------------
def test_a_finished_run_is_never_replaced_without_overwrite(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    config = tiny_config(tiny_corpus, run, **{"train.epochs": 1})
    run_training(config, log=quiet)
    shutil.rmtree(run / "checkpoints")  # the case of the issue: a finished run whose checkpoints were removed
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    changed = tiny_config(tiny_corpus, run, **{"train.epochs": 2, "train.lr": 0.1})
    with pytest.raises(RunFolderError, match=r"already holds a finished run \(results.json, model, config.yaml\).*"
                                             r"--overwrite"):
        run_training(changed, log=quiet)
    with pytest.raises(RunFolderError, match="without the checkpoints to continue it"):
        run_training(changed, resume=True, log=quiet)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"} == before
    with pytest.raises(RunFolderError, match="contradict"):
        run_training(changed, resume=True, overwrite=True, log=quiet)
    results = run_training(changed, overwrite=True, log=quiet)
    assert results["epochs_run"] == 2 and "lr: 0.1" in (run / "config.yaml").read_text()
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(RunFolderError, match=r"output_dir .*afile is a file, not a folder"):
            run_training(tiny_config(tiny_corpus, afile), overwrite=overwrite, log=quiet)
    assert afile.read_text() == "mine"


def test_overwrite_never_deletes_a_file_the_run_reads(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    run_training(tiny_config(tiny_corpus, run, **{"train.epochs": 1}), log=quiet)
    vectors = run / "model" / "vectors.txt"
    vectors.write_text("paris " + " ".join(["0.1"] * 16) + "\n")
    config = tiny_config(tiny_corpus, run, **{"train.epochs": 1, "model.bilstm.embeddings": str(vectors)})
    with pytest.raises(RunFolderError, match=r"--overwrite would delete .*vectors.txt, which this run reads"):
        run_training(config, overwrite=True, log=quiet)
    assert vectors.is_file() and (run / "results.json").is_file()


CHUNK_TASK = ("name: mychunk\nformat: conll\ncolumns: [tokens, pos, chunk, ner]\nlabel_column: chunk\n"
              "files: {train: train.txt, dev: dev.txt, test: test.txt}\nscheme: iob2\nmetric: span_f1\n")


def _input_inside(kind: str, run: Path, data: Path) -> tuple[dict, Path]:
    """(overrides, the file the run reads) for an input of ``kind`` placed inside one of ``run``'s outputs."""
    if kind == "corpus":  # the layout of the issue: output_dir=run2 data.dir=run2/model
        shutil.copytree(data, run / "model")
        return {"data.dir": str(run / "model")}, run / "model" / "train.txt"
    if kind == "task file":
        (run / "model").mkdir(parents=True)
        (run / "model" / "mychunk.yaml").write_text(CHUNK_TASK)
        return {"tasks": f"[pos,{run / 'model' / 'mychunk.yaml'}]"}, run / "model" / "mychunk.yaml"
    if kind == "masks":
        (run / "model").mkdir(parents=True)
        (run / "model" / "masks.safetensors").write_bytes(b"")  # only its place matters: refused before it is read
        return {"model.sharing": "sparse", "sparse.masks": str(run / "model" / "masks.safetensors")}, \
            run / "model" / "masks.safetensors"
    if kind == "teacher":
        (run / "checkpoints" / "teacher").mkdir(parents=True)
        (run / "checkpoints" / "teacher" / "config.json").write_text("{}")
        return {"train.distill_from.ner": str(run / "checkpoints" / "teacher")}, run / "checkpoints" / "teacher"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["corpus", "task file", "masks", "teacher"])
def test_no_run_deletes_or_replaces_a_file_it_reads_whatever_the_layout(kind, tiny_corpus, tmp_path):
    run = tmp_path / "run"
    extra, read = _input_inside(kind, run, tiny_corpus)
    before = sorted(p for p in run.rglob("*"))
    config = tiny_config(tiny_corpus, run, **{"train.epochs": 1, **extra})
    with pytest.raises(RunFolderError, match=rf"--overwrite would delete {read}, which this run reads \("):
        run_training(config, overwrite=True, log=quiet)
    # without --overwrite, training would replace model/ (or checkpoints/) as it goes: refused as well
    with pytest.raises(RunFolderError, match=rf"this run would replace {read}, which it reads .* when it writes "
                                             rf"{run}/"):
        run_training(config, resume=True, log=quiet)
    assert sorted(p for p in run.rglob("*")) == before  # nothing deleted, nothing written


def test_overwrite_never_replaces_the_config_file_it_was_given(tiny_corpus, tmp_path):
    from sparseshare.cli import main

    run = tmp_path / "run"
    main(["train", *tiny_overrides(tiny_corpus, run, **{"train.epochs": 1})])
    config_file = run / "config.yaml"
    config_file.write_text(config_file.read_text() + "# my notes\n")
    with pytest.raises(SystemExit, match=rf"--overwrite would delete {config_file}, which this run reads \(the config "
                                         rf"file\)"):
        main(["train", "--config", str(config_file), "--overwrite", f"output_dir={run}"])
    assert config_file.read_text().endswith("# my notes\n") and (run / "results.json").is_file()
    # --resume rewrites config.yaml with the settings it checked it against: a run's own config resumes it
    main(["train", "--config", str(config_file), "--resume"])
    assert (run / "results.json").is_file()


@pytest.mark.parametrize("sharing", ["hard", "sparse"])
def test_a_config_file_written_into_output_dir_by_hand_is_never_replaced(sharing, tiny_corpus, tmp_path):
    """Only a run's own config.yaml, checked against its checkpoint's settings, is rewritten by --resume: a user's
    config kept as output_dir/config.yaml before any run was replaced, comments gone and the override baked in."""
    from sparseshare.cli import main

    run = tmp_path / "run"
    run.mkdir()
    config_file = run / "config.yaml"
    config_file.write_text(f"# my experiment: lr tuned by hand\ntasks: [ner]\noutput_dir: {run}\n")
    before = config_file.read_text()
    overrides = [o for o in tiny_overrides(tiny_corpus, run, **{"train.epochs": 1, "model.sharing": sharing})
                 if not o.startswith(("tasks=", "output_dir="))]
    command = "train-sparse" if sharing == "sparse" else "train"
    for flags in ([], ["--resume"]):
        with pytest.raises(SystemExit, match=rf"this run would replace {config_file}, which it reads \(the config "
                                             rf"file\)"):
            main([command, "--config", str(config_file), *flags, *overrides, "train.lr=0.5"])
    assert config_file.read_text() == before and sorted(run.iterdir()) == [config_file]
    # the config.yaml a run writes before its first checkpoint (killed then) is its own: it resumes the run
    from sparseshare.config import load_config
    from sparseshare.run_folder import run_config_text

    config_file.write_text(run_config_text(load_config(str(config_file), [*overrides, "train.lr=0.5"]).to_dict()))
    main([command, "--config", str(config_file), "--resume"])
    assert (run / ("report.json" if sharing == "sparse" else "results.json")).is_file()


@pytest.mark.parametrize("kind", ["corpus", "masks"])
def test_the_sparse_pipeline_never_deletes_a_file_it_reads(kind, tiny_corpus, tmp_path):
    from sparseshare.config import load_config
    from sparseshare.recipes.train_sparse import run_sparse

    run = tmp_path / "run"
    if kind == "corpus":
        shutil.copytree(tiny_corpus, run / "warmup")
        extra, read = {"data.dir": str(run / "warmup")}, run / "warmup" / "train.txt"
    else:
        run.mkdir()
        (run / "masks.safetensors").write_bytes(b"")
        extra, read = {"sparse.masks": str(run / "masks.safetensors")}, run / "masks.safetensors"
    config = load_config(None, tiny_overrides(tiny_corpus, run, **{"tasks": "[ner]", "model.sharing": "sparse",
                                                                    "train.epochs": 1, **extra}))
    with pytest.raises(RunFolderError, match=rf"--overwrite would delete {read}, which this run reads"):
        run_sparse(config, overwrite=True, log=quiet)
    with pytest.raises(RunFolderError, match=rf"this run would replace {read}"):
        run_sparse(config, resume=True, log=quiet)
    assert read.is_file()


def test_nothing_is_written_before_the_inputs_are_checked(tiny_corpus, tmp_path):
    (tiny_corpus / "dev.txt").write_text("John NNP B-NP\n")  # a column missing
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"dev.txt:1: expected 4 columns"):
        run_training(tiny_config(tiny_corpus, run), log=quiet)
    assert not run.exists()


def test_the_cli_overwrite_flag(tiny_corpus, tmp_path):
    from sparseshare.cli import main

    overrides = tiny_overrides(tiny_corpus, tmp_path / "run", **{"train.epochs": 1})
    main(["train", *overrides])
    with pytest.raises(SystemExit, match="already holds a finished run"):
        main(["train", *overrides])
    main(["train", "--overwrite", *overrides])
    assert (tmp_path / "run" / "results.json").is_file()


# -- diverging training ----------------------------------------------------------------------------------------
def test_a_nan_loss_stops_naming_step_and_task_and_keeps_the_last_good_checkpoint(tiny_corpus, tmp_path,
                                                                                   monkeypatch):
    from sparseshare.model import MultiTaskTagger

    run = tmp_path / "run"
    config = tiny_config(tiny_corpus, run, **{"train.epochs": 3, "train.checkpoint_every": 4})
    forward, calls = MultiTaskTagger.forward, []

    def nan_at_step_23(self, batch, task):
        calls.append(task)
        losses = forward(self, batch, task)
        return losses * float("nan") if len(calls) == 23 else losses

    monkeypatch.setattr(MultiTaskTagger, "forward", nan_at_step_23)
    with pytest.raises(TrainingDiverged, match=r"diverged at step 23 \(epoch 2, task '\w+'\): loss nan") as err:
        run_training(config, log=quiet)
    assert "step_00000020" in str(err.value) and "model of epoch 1" in str(err.value)
    checkpoint = latest_checkpoint(run)
    assert checkpoint.name == "step_00000020"
    assert all(torch.isfinite(t).all() for t in load_file(str(checkpoint / "model.safetensors")).values())
    assert all(torch.isfinite(t).all() for t in _tensors(run / "model").values())
    assert not (run / "results.json").exists()


def test_the_cli_reports_divergence_without_a_traceback(tiny_corpus, tmp_path, monkeypatch, capsys):
    from sparseshare.cli import main
    from sparseshare.model import MultiTaskTagger

    forward = MultiTaskTagger.forward
    monkeypatch.setattr(MultiTaskTagger, "forward", lambda self, batch, task: forward(self, batch, task) * float("inf"))
    with pytest.raises(SystemExit, match=r"sparseshare train: error: training diverged at step 1 "):
        main(["train", *tiny_overrides(tiny_corpus, tmp_path / "run")])


# -- a full disk ----------------------------------------------------------------------------------------------
def _no_space(path):
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def test_a_full_disk_stops_the_run_in_one_line_and_resume_continues_it(reference, tmp_path, monkeypatch):
    from sparseshare.run_folder import DiskFullError

    data, reference_dir, _, _ = reference
    run = tmp_path / "run"
    config = tiny_config(data, run, **TRAIN)
    save = torch.save

    def full_at_the_epoch_2_checkpoint(obj, f, *args, **kwargs):  # the optimizer state, written by Accelerate
        if "step_00000036" in str(f):
            raise _no_space(f)
        return save(obj, f, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", full_at_the_epoch_2_checkpoint)
        with pytest.raises(DiskFullError, match=rf"^no space left on device: cannot write into {run} \(.*step_00000036"
                                                 rf".*\), \d+ [MK]iB free; free some space, then continue the run with "
                                                 rf"--resume$"):
            run_training(config, log=quiet)
    assert latest_checkpoint(run).name == "step_00000018"
    results = run_training(config, resume=True, log=quiet)  # space freed
    assert results["epochs_run"] == 2
    _assert_same_model(run / "model", reference_dir / "model")


def _raise(make_error):
    def fail(*args, **kwargs):
        raise make_error()
    return fail


def _torch_writer_failure():
    """What torch.save raises on a full disk: two chained RuntimeErrors that never say why."""
    try:
        try:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        finally:
            raise RuntimeError("basic_ios::clear: iostream error")
    except RuntimeError as err:
        return err


@pytest.mark.parametrize("writer", ["torch", "safetensors", "python"])
def test_the_cli_reports_a_full_disk_in_one_line_naming_the_folder(writer, tiny_corpus, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    import sparseshare.run_folder as run_folder
    from sparseshare.cli import main
    from sparseshare.model import MultiTaskTagger

    run = tmp_path / "run"
    if writer == "torch":  # torch's error names no cause: the free space on the output_dir's file system tells
        monkeypatch.setattr(torch, "save", _raise(_torch_writer_failure))
        monkeypatch.setattr(run_folder, "_free_bytes", lambda folder: 4096)
    elif writer == "safetensors":  # the model folder's weights
        monkeypatch.setattr(MultiTaskTagger, "save_pretrained", _raise(lambda: SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)")))
    else:  # the first file the run writes, config.yaml
        write_text = Path.write_text

        def full_for_config_yaml(path, *args, **kwargs):
            if path.name == "config.yaml.partial":
                raise _no_space(path)
            return write_text(path, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", full_for_config_yaml)
    with pytest.raises(SystemExit) as exit_:
        main(["train", *tiny_overrides(tiny_corpus, run, **{"train.epochs": 1})])
    message = str(exit_.value.code)
    assert message.startswith(f"sparseshare train: error: no space left on device: cannot write into {run}")
    assert "\n" not in message and message.endswith("continue the run with --resume")


def test_other_torch_write_failures_are_not_taken_for_a_full_disk(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", _raise(_torch_writer_failure))
    with pytest.raises(RuntimeError, match="iostream error"):  # plenty of space left: torch's own error
        run_training(tiny_config(tiny_corpus, tmp_path / "run", **{"train.epochs": 1}), log=quiet)


# -- damaged checkpoints ---------------------------------------------------------------------------------------
def _interrupted_run(data, run, steps=6):
    config = tiny_config(data, run, **{"train.checkpoint_every": 4})

    def crash(step):
        if step == steps:
            raise Crash

    with pytest.raises(Crash):
        run_training(config, callbacks=[crash], log=quiet)
    return config, latest_checkpoint(run)


def test_resume_refuses_a_corrupt_random_state_file(tiny_corpus, tmp_path):
    config, checkpoint = _interrupted_run(tiny_corpus, tmp_path / "run")
    state = checkpoint / "random_states_0.pkl"
    state.write_bytes(state.read_bytes()[:40])  # truncated
    with pytest.raises(CheckpointError, match=rf"cannot restore the random states from {state}"):
        run_training(config, resume=True, log=quiet)
    state.write_bytes(pickle.dumps({"random_state": "not a state"}))
    with pytest.raises(CheckpointError, match="random_states_0.pkl"):
        run_training(config, resume=True, log=quiet)


class _Payload:
    """A pickle that creates a file when unpickled (what a malicious checkpoint would do)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_checkpoint_pickles_are_loaded_weights_only(tiny_corpus, tmp_path):
    config, checkpoint = _interrupted_run(tiny_corpus, tmp_path / "run")
    witness = tmp_path / "code_ran"
    with open(checkpoint / "random_states_0.pkl", "wb") as handle:
        pickle.dump(_Payload(witness), handle)
    with pytest.raises(CheckpointError, match="random_states_0.pkl.*Unpickl|random_states_0.pkl.*weights_only"):
        run_training(config, resume=True, log=quiet)
    assert not witness.exists()


# -- logs ------------------------------------------------------------------------------------------------------
def test_progress_is_a_few_plain_lines_when_stderr_is_not_a_terminal(tiny_corpus, tmp_path, capsys):
    run_training(tiny_config(tiny_corpus, tmp_path / "run", **{"train.progress_bar": "true"}), log=quiet)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1"] * 4 + ["epoch 2"] * 4
    assert lines[3].startswith("epoch 1: 18/18 steps (") and "task " in lines[3] and "loss " in lines[3]


@pytest.mark.parametrize("command", ["train", "train-sparse"])
def test_resume_with_a_damaged_config_yaml_ends_in_one_line_naming_the_file_and_line(command, tiny_corpus, tmp_path):
    from sparseshare.cli import main

    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000001").mkdir(parents=True)  # a checkpoint: train --resume compares configs
    (run / "checkpoints" / "step_00000001" / "train_state.json").write_text("{}")
    (run / "warmup").mkdir()  # a stage's output: so does train-sparse --resume
    saved = run / "config.yaml"
    saved.write_text("tasks: [ner]\ntrain: {epochs: 1\nmodel:\n  sharing: sparse\n")  # the flow mapping never closes
    extra = {"tasks": "[ner]", "train.epochs": 1, **({"model.sharing": "sparse"} if command == "train-sparse" else {})}
    with pytest.raises(SystemExit) as info:
        main([command, *tiny_overrides(tiny_corpus, run, **extra), "--resume"])
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"sparseshare {command}: error: {saved}:3:6: YAML syntax error: "), message
    assert saved.read_text().startswith("tasks: [ner]\ntrain: {epochs: 1\n")  # left as it was
    # a config.yaml that is valid YAML but not a mapping is named as well
    saved.write_text("- not a config\n")
    with pytest.raises(SystemExit, match=rf"error: {saved}: not a run's saved config \(a YAML mapping"):
        main([command, *tiny_overrides(tiny_corpus, run, **extra), "--resume"])
