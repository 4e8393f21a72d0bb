"""The benchmark driver's bookkeeping: several drivers share a grid through lock files; a run is locked while its
driver or its training lives, and a killed driver (a session's end) must not block the run for ever. And the
summary table reads each run from the folder it should."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import run_grid  # noqa: E402

from sparseshare.run_folder import RunFolderError, RunLock  # noqa: E402

# another process holding the lock, as a driver killed at a session's end would have held it
HOLD = "import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); " \
       "print('locked', flush=True); time.sleep(60)"


def _driver_lock(folder: Path) -> RunLock:
    return RunLock(folder, run_grid.DRIVER_LOCK)


def test_a_run_is_refused_to_a_second_driver_and_freed_when_its_holder_is_killed(tmp_path):
    with _driver_lock(tmp_path):
        assert str(os.getpid()) in (tmp_path / f"{run_grid.DRIVER_LOCK}.holder").read_text()
        with pytest.raises(RunFolderError, match=f"process {os.getpid()}"):  # another open of the file
            _driver_lock(tmp_path).acquire()
        with RunLock(tmp_path):  # the training's own lock is another file
            pass
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / run_grid.DRIVER_LOCK)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(RunFolderError):
            _driver_lock(tmp_path).acquire()
    finally:
        holder.kill()  # as at a session's end: no clean-up runs
        holder.wait()
    with _driver_lock(tmp_path):
        pass


def test_a_training_that_outlived_its_driver_is_left_alone_by_a_second_driver(tmp_path):
    """A driver killed while its training goes on frees running.lock; the training's own lock on the run folder
    keeps a second driver from touching the run (no copied search, no training started, no wall time written)."""
    import argparse

    out = tmp_path / "hard_seed1"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        args = argparse.Namespace(out=str(tmp_path), epochs=None, data_root="data", overrides=[], threads=1)
        said = run_grid.run_one("hard", 1, args)
        assert said.startswith(f"{out}: still training without its driver") and "in use by another process" in said
        assert sorted(p.name for p in out.iterdir()) == [".lock", run_grid.DRIVER_LOCK]  # the locks, nothing else
        with pytest.raises(RunFolderError, match=r"in use by another process \(lock .*\.lock\)"):
            RunLock(out).acquire()  # what a training started anyway would do first
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()


def test_a_run_that_changes_only_the_joint_stage_copies_the_search_of_the_run_it_shares_it_with(tmp_path):
    """sparse_private_words trains its joint stage with a private word table per task; its warm-up and search are
    those of "sparse" (one network), so the driver copies them instead of computing them again, and refuses to
    when the source ran with other settings."""
    import argparse

    import yaml

    from sparseshare.config import load_config

    args = argparse.Namespace(epochs=None, data_root=str(tmp_path / "data"), out=str(tmp_path), overrides=[])
    assert run_grid.SHARES_SEARCH["sparse_private_words"] == "sparse"
    source = tmp_path / "sparse_seed1"
    config_file, *overrides = run_grid._config_args("sparse", 1, source, args)
    theirs = load_config(config_file, overrides).to_dict()
    for stage in ("warmup", "search"):
        (source / stage).mkdir(parents=True)
        (source / stage / "results.json").write_text("{}")
    (source / "masks.safetensors").write_bytes(b"")
    (source / "config.yaml").write_text(yaml.safe_dump(theirs))
    out = tmp_path / "sparse_private_words_seed1"
    out.mkdir()
    assert run_grid.copy_search(source, out, "sparse_private_words", 1, args) is None
    assert (out / "warmup" / "results.json").is_file() and (out / "search" / "results.json").is_file()
    assert (out / "search_copied_from.txt").read_text().strip() == str(source)
    # the selection is made after the search, from its records: another tie tolerance shares the search too
    assert run_grid.copy_search(source, tmp_path / "tol", "sparse_private_words_tol25", 1, args) is None
    # a source that wrote its config.yaml before strategy options had sections (model.prunable, model.routing_rho,
    # ... every option of every strategy, flat) ran with the same settings
    flat = {**{k: v for k, v in theirs["model"].items() if k != "sparse"}, **theirs["model"]["sparse"],
            "routing_rho": 0.3, "roaming_ratio": 0.5, "bottom_layers": 1, "task_layers": {}}
    (source / "config.yaml").write_text(yaml.safe_dump({**theirs, "model": flat}))
    assert run_grid.copy_search(source, tmp_path / "flat", "sparse_private_words", 1, args) is None

    (source / "config.yaml").write_text(yaml.safe_dump({**theirs, "train": {**theirs["train"], "lr": 0.1}}))
    refused = run_grid.copy_search(source, tmp_path / "other", "sparse_private_words", 1, args)
    assert "ran with other settings" in refused and not (tmp_path / "other" / "warmup").exists()


def test_every_run_of_the_grid_has_a_valid_config(tmp_path):
    """A run whose overrides no longer fit its config file (e.g. a strategy that refuses an option the shipped
    config turned on) would fail hours into a grid; each one loads here."""
    import argparse

    from sparseshare.config import load_config

    args = argparse.Namespace(epochs=None, data_root=str(tmp_path / "data"), out=str(tmp_path), overrides=[])
    for name in run_grid.RUNS:
        config_file, *overrides = run_grid._config_args(name, 1, tmp_path / name, args)
        load_config(config_file, overrides)


def _record(folder: Path, ner_test: float) -> None:
    import json

    folder.mkdir(parents=True)
    scores = {"ner": {"score": ner_test}}
    (folder / "results.json").write_text(json.dumps({"dev": scores, "test": scores, "parameters": 10,
                                                     "selected_epoch": 1, "epochs_run": 1}))


def test_summarize_takes_a_run_from_the_folder_its_name_gives_and_refuses_to_mix_two_grids(tmp_path, capsys):
    import summarize

    _record(tmp_path / "converged" / "ner_seed1", 90.0)
    _record(tmp_path / "converged" / "control_seed1", 88.0)
    _record(tmp_path / "today" / "control_seed1", 89.5)
    _record(tmp_path / "today" / "control_seed2", 89.7)
    folders = [str(tmp_path / "converged"), str(tmp_path / "today")]
    summarize.main(folders, ["ner", "today/control"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "seeds" not in line]
    assert [row.split(" | ")[:2] for row in rows] == [["| ner", "1"], ["| today/control", "1,2"]]
    assert "89.60 ± 0.14" in rows[1] and "88.00" not in rows[1]
    with pytest.raises(SystemExit, match=r"'control' is in both .* name its folder in --runs \(today/control\)"):
        summarize.main(folders, ["control"])
    with pytest.raises(SystemExit, match=r"folder\(s\) \['elsewhere'\]"):
        summarize.main(folders, ["elsewhere/control"])
