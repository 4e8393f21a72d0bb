"""The toolkit's messages go through the `sparseshare` logger (sparseshare/logs.py)."""
from __future__ import annotations

import logging
import os

import pytest

from sparseshare import logs
from sparseshare.cli import main
from sparseshare.config import load_config
from sparseshare.recipes.train import run_training

from conftest import tiny_overrides


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def collected():
    handler = _Collect()
    logs.logger.addHandler(handler)
    yield handler.messages
    logs.logger.removeHandler(handler)


def test_a_run_writes_its_messages_to_standard_output_by_default(tiny_corpus, tmp_path, capsys, collected):
    run_training(load_config(None, tiny_overrides(tiny_corpus, tmp_path, **{"train.epochs": 1})))
    out = capsys.readouterr().out
    assert "epoch 1: dev" in out and "[ner] train 48 / dev 48 / test 48 sentences" in out
    assert any(m.startswith("epoch 1: dev") for m in collected)  # an application's handler sees them too


def test_a_log_callable_takes_the_messages_instead_of_standard_output(tiny_corpus, tmp_path, capsys, collected):
    messages = []
    run_training(load_config(None, tiny_overrides(tiny_corpus, tmp_path, **{"train.epochs": 1})), log=messages.append)
    assert any(m.startswith("epoch 1: dev") for m in messages)
    assert "epoch 1" not in capsys.readouterr().out
    assert any(m.startswith("epoch 1: dev") for m in collected)
    assert logs._default_handler in logs.logger.handlers  # put back after the run


def test_the_default_handler_comes_back_when_a_run_with_a_log_callable_fails(tmp_path):
    from sparseshare.config import ConfigError

    with pytest.raises((ConfigError, FileNotFoundError)):
        run_training(load_config(None, [f"output_dir={tmp_path}", f"data.dir={tmp_path / 'missing'}"]),
                     log=lambda message: None)
    assert logs._default_handler in logs.logger.handlers
    assert not [h for h in logs.logger.handlers if isinstance(h, logs._Callback)]


@pytest.mark.parametrize("flag, shown", [("--quiet", False), ("-q", False), ("--verbose", True), (None, True)])
def test_quiet_hides_progress_messages_and_is_undone_after_the_command(tiny_corpus, tmp_path, capsys, flag, shown):
    argv = ["train", *tiny_overrides(tiny_corpus, tmp_path, **{"train.epochs": 1})]
    main(argv + ([flag] if flag else []))
    out = capsys.readouterr().out
    assert ("epoch 1: dev" in out) == shown
    assert logs.logger.level == logging.INFO


@pytest.mark.parametrize("value, level", [("WARNING", logging.WARNING), ("debug", logging.DEBUG), ("loud", logging.INFO)])
def test_a_child_process_takes_the_level_its_parent_hands_over(value, level):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import sparseshare; print(sparseshare.logs.logger.level)"],
                          env={**os.environ, logs.VERBOSITY_VARIABLE: value}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == str(level), done.stderr


def test_an_mpi_rank_other_than_0_writes_warnings_only(monkeypatch, capsys):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "2")
    logs.logger.info("progress")
    assert capsys.readouterr().out == ""


def test_other_processes_of_a_distributed_run_write_warnings_only(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    logs.logger.info("progress")
    logs.logger.info("each rank's own line", extra=logs.EVERY_PROCESS)
    logs.logger.warning("a warning")
    assert capsys.readouterr().out.splitlines() == ["each rank's own line", "a warning"]
    monkeypatch.setenv("RANK", "0")
    logs.logger.info("progress")
    assert capsys.readouterr().out == "progress\n"
