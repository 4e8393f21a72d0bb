"""A regular (non-editable) install carries the built-in task files."""
from __future__ import annotations

import subprocess
import sys
import zipfile

from conftest import ROOT

from sparseshare.tasks import builtin_tasks


def test_wheel_contains_every_builtin_task(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("sparseshare-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"sparseshare/tasks/{task}.yaml" for task in builtin_tasks()} <= names
    assert len(builtin_tasks()) >= 7
