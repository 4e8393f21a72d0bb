"""The benchmark driver's bookkeeping: several drivers share a grid through lock files; a run is locked while its
driver or its training lives, and a killed driver (a session's end) must not block the run for ever."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import run_grid  # noqa: E402

from sparseshare.run_folder import RunFolderError, RunLock  # noqa: E402

HOLD = "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); " \
       "print('locked', flush=True); time.sleep(60)"


def _driver_lock(folder: Path) -> RunLock:
    return RunLock(folder, run_grid.DRIVER_LOCK)


def test_a_run_is_refused_to_a_second_driver_and_freed_when_its_holder_is_killed(tmp_path):
    with _driver_lock(tmp_path):
        assert str(os.getpid()) in (tmp_path / run_grid.DRIVER_LOCK).read_text()
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


def test_a_training_keeps_its_run_locked_after_its_driver_let_go(tmp_path):
    with _driver_lock(tmp_path) as lock:  # what run_grid passes to the training it starts
        training = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                    pass_fds=(lock.handle.fileno(),))
    try:
        with pytest.raises(RunFolderError):
            _driver_lock(tmp_path).acquire()
    finally:
        training.kill()
        training.wait()
    with _driver_lock(tmp_path):
        pass
