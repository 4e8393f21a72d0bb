"""Files: JSON in and out, and writes that never leave a half-written file or folder behind.

Everything is write-then-rename. A file goes to ``<name>.partial`` and is renamed over ``<name>`` (atomic on
POSIX). A folder is swapped in two renames: the current one to ``<name>.old``, the new one into place; a crash
between the two leaves ``<name>.old`` and no ``<name>``, which :func:`recover_folder` puts back, so that every
crash point leaves something a resumed run can use.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path


def save_json(obj, path: str | Path) -> None:
    Path(path).write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")


def load_json(path: str | Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def load_json_object(path: str | Path) -> dict:
    """A JSON file that must hold an object; a corrupt file or another value is an error naming the file."""
    try:
        value = load_json(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: corrupt JSON ({err})") from err
    if not isinstance(value, dict):
        raise ValueError(f"{path}: must hold a JSON object, found a {type(value).__name__}")
    return value


@contextmanager
def atomic_path(path: str | Path):
    """``with atomic_path(p) as partial:`` write ``partial``; it replaces ``p`` when the block succeeds."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    yield partial
    os.replace(partial, path)


def write_json_atomically(path: str | Path, value) -> None:
    with atomic_path(path) as partial:
        partial.write_text(json.dumps(value, indent=1))


def replace_folder(new: Path, target: Path) -> None:
    """Move the complete folder ``new`` to ``target``, replacing what was there."""
    old = _restore_old(target)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _restore_old(target: Path) -> Path:
    """After a replace cut between its renames, ``<name>.old`` is the last good folder: put it back (or drop it when
    ``<name>`` is in place). Returns the ``.old`` path, now free."""
    old = target.with_name(target.name + ".old")
    if old.exists():
        if target.exists():
            shutil.rmtree(old)
        else:
            old.rename(target)
    return old


def recover_folder(target: Path) -> None:
    """Undo a :func:`replace_folder` cut between its two renames; drop a half-written ``<name>.partial``."""
    _restore_old(target)
    partial = target.with_name(target.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
