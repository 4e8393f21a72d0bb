"""The benchmark driver's bookkeeping: several drivers share a grid through lock files, and a lock left by a
driver that was killed (a session's end) must not block the run for ever."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import run_grid  # noqa: E402


def test_a_lock_is_held_by_a_live_driver_and_taken_over_from_a_dead_one(tmp_path):
    lock = tmp_path / "running.lock"
    assert run_grid._take(lock) and lock.read_text() == str(os.getpid())
    assert not run_grid._take(lock)  # this process is alive
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    lock.write_text(str(finished.pid))
    assert run_grid._take(lock) and lock.read_text() == str(os.getpid())
    lock.write_text("")  # a driver between creating the lock and writing its id
    assert not run_grid._take(lock)
