"""A run's output folder: one writer at a time, and nothing finished replaced by accident.

- :class:`RunLock`: an advisory ``fcntl`` lock on ``<output_dir>/.lock``, held for the whole run. The kernel
  drops it when the process dies, so a lock left by a killed run never blocks the next one; the file names
  the process that holds it.
- :func:`check_run_folder`: a folder that holds a run is continued (``--resume``), replaced
  (``--overwrite``) or refused, never silently overwritten.

What a run writes, it writes atomically (:mod:`sparseshare.files`).
"""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not protected against a second writer
    fcntl = None

LOCK_FILE = ".lock"


class RunFolderError(ValueError):
    pass


class RunLock:
    """``with RunLock(folder):`` holds the folder's lock or raises :class:`RunFolderError` naming the holder.
    ``file_name`` picks another lock in the same folder (the benchmark driver's, held around the run's own)."""

    def __init__(self, folder: str | Path, file_name: str = LOCK_FILE):
        self.folder = Path(folder)
        self.file_name = file_name
        self.handle = None

    def acquire(self) -> "RunLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / self.file_name, "a+", encoding="utf-8")
        _take(handle, self.folder, file_name=self.file_name)
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self.handle = handle
        return self

    def release(self) -> None:
        if self.handle is not None:
            self.handle.seek(0)
            self.handle.truncate()
            self.handle.close()  # closing the file drops the flock
            self.handle = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_for_all_processes(folder: Path, is_main_process: bool, num_processes: int) -> RunLock | None:
    """The main process locks ``folder``; under a distributed launch every process raises the same error when the
    folder is taken (one process raising alone would leave the others waiting in a collective)."""
    lock, error = None, None
    if is_main_process:
        try:
            lock = RunLock(folder).acquire()
        except (RunFolderError, OSError) as err:  # e.g. output_dir is a file: every process must hear of it
            error = str(err) if isinstance(err, RunFolderError) else f"cannot lock {folder}: {err}"
    if num_processes > 1:
        from accelerate.utils import broadcast_object_list

        error = broadcast_object_list([error])[0]
    if error:
        raise RunFolderError(error)
    return lock


def _take(handle, folder: Path, mode: int | None = None, file_name: str = LOCK_FILE) -> None:
    if fcntl is None:
        return
    try:
        fcntl.flock(handle, (fcntl.LOCK_EX if mode is None else mode) | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunFolderError(f"{folder} is in use by {holder} (lock {folder / file_name}); wait for that run to "
                             f"end or choose another output_dir") from None


def raise_if_in_use(folder: Path) -> None:
    """Look at the lock without taking it (and without writing anything)."""
    path = Path(folder) / LOCK_FILE
    if fcntl is None or not path.is_file():
        return
    with open(path, encoding="utf-8") as handle:
        # shared: it conflicts with a run's exclusive lock, not with other processes probing at the same time
        _take(handle, Path(folder), fcntl.LOCK_SH)  # released when the file closes


# What a training run writes into its output_dir (removed by --overwrite, in this order: the done marker first and
# config.yaml last, so that a crash mid-removal never leaves a folder that looks finished; other files are left).
RUN_OUTPUTS = ("results.json", "checkpoints", "model", "model.partial", "model.old", "config.yaml")


def finished_outputs(folder: Path, names=RUN_OUTPUTS) -> list[str]:
    """The names of ``names`` that exist in ``folder``."""
    return [name for name in names if (folder / name).exists()]


def check_run_folder(folder: Path, resume: bool, overwrite: bool, has_checkpoint: bool,
                     outputs=RUN_OUTPUTS, done_marker: str = "results.json", probe_lock: bool = False) -> None:
    """Refuse to start in a folder that holds a run unless told what to do with it. With ``probe_lock`` (a look
    before taking the lock), a folder refused because another run is writing into it says so."""
    try:
        _check_run_folder(folder, resume, overwrite, has_checkpoint, outputs, done_marker)
    except RunFolderError:
        if probe_lock:
            raise_if_in_use(folder)
        raise


def _check_run_folder(folder: Path, resume: bool, overwrite: bool, has_checkpoint: bool, outputs,
                      done_marker: str) -> None:
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other: continue the run in output_dir, or "
                             "replace it, not both")
    if overwrite:
        return
    found = finished_outputs(folder, outputs)
    if not resume and found:
        what = "a finished run" if done_marker in found else "a run"
        raise RunFolderError(f"{folder} already holds {what} ({', '.join(found)}); pass --resume to continue it, "
                             f"--overwrite to replace it, or choose another output_dir")
    if resume and not has_checkpoint and done_marker in found:
        raise RunFolderError(f"{folder} holds a finished run ({done_marker}) without the checkpoints to continue it; "
                             f"nothing to resume (pass --overwrite to train again)")


def remove_outputs(folder: Path, names=RUN_OUTPUTS, inputs=()) -> None:
    """Remove a run's outputs for --overwrite; refuses when one of ``inputs`` (files the run reads) is among them."""
    doomed = [(folder / name).resolve() for name in names]
    for path in inputs:
        if path and any(Path(path).resolve() == d or d in Path(path).resolve().parents for d in doomed):
            raise RunFolderError(f"--overwrite would delete {path}, which this run reads; move it out of {folder}")
    for name in names:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
