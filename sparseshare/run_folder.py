"""A run's output folder: one writer at a time, and nothing finished replaced by accident.

- :class:`RunLock`: a ``filelock`` lock on ``<output_dir>/.lock``, held for the whole run (``flock`` on Unix,
  ``msvcrt`` on Windows). The operating system drops it when the process dies, so a lock left by a killed run
  never blocks the next one; ``.lock.holder`` names the process that holds it.
- :func:`check_run_folder`: a folder that holds a run is continued (``--resume``), replaced
  (``--overwrite``) or refused, never silently overwritten; and no run deletes or replaces a file it reads
  (:func:`check_inputs_kept`).
- :func:`disk_full_reported`: a full disk stops the run with one line naming the folder (:class:`DiskFullError`).

What a run writes, it writes atomically (:mod:`sparseshare.files`).
"""
from __future__ import annotations

import errno
import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

import yaml
from filelock import FileLock, Timeout

from .errors import SparseshareError

LOCK_FILE = ".lock"
# how long taking a lock waits for it: long enough to wait out another process's probe (raise_if_in_use holds the
# lock for a moment), short enough that a run refused because another one holds its folder says so at once
LOCK_WAIT_S = 1.0


class RunFolderError(SparseshareError, ValueError):
    pass


class RunLock:
    """``with RunLock(folder):`` holds the folder's lock or raises :class:`RunFolderError` naming the holder.
    ``file_name`` picks another lock in the same folder (the benchmark driver's, held around the run's own).

    The holder is written to a file of its own (``<file_name>.holder``): some platforms' locks keep other
    processes from reading the locked file, and some ``filelock`` versions empty it when they open it."""

    def __init__(self, folder: str | Path, file_name: str = LOCK_FILE):
        self.folder = Path(folder)
        self.file_name = file_name
        self.lock = FileLock(self.folder / file_name, timeout=LOCK_WAIT_S)

    @property
    def holder_file(self) -> Path:
        return self.folder / f"{self.file_name}.holder"

    def acquire(self) -> "RunLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        _take(self.lock, self.folder, self.file_name)
        try:  # replaced whole: a process refused at this moment reads the old holder or the new one, never half
            partial = self.holder_file.with_name(f"{self.holder_file.name}.{os.getpid()}.partial")
            partial.write_text(f"process {os.getpid()} on {socket.gethostname()}\n", encoding="utf-8")
            os.replace(partial, self.holder_file)
        except BaseException:
            self.lock.release()
            raise
        return self

    def release(self) -> None:
        if self.lock.is_locked:
            self.holder_file.unlink(missing_ok=True)
            self.lock.release()

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


def _take(lock: FileLock, folder: Path, file_name: str = LOCK_FILE) -> None:
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = (folder / f"{file_name}.holder").read_text(encoding="utf-8").strip()
        except OSError:
            holder = ""
        raise RunFolderError(f"{folder} is in use by {holder or 'another process'} (lock {folder / file_name}); "
                             f"wait for that run to end or choose another output_dir") from None
    except (NotImplementedError, OSError) as err:  # e.g. a file system without file locks
        raise RunFolderError(f"cannot lock {folder / file_name} ({type(err).__name__}: {err}); choose an output_dir "
                             f"on a file system with file locks (a local disk)") from None


def raise_if_in_use(folder: Path) -> None:
    """Look at the lock without keeping it (and without creating it where no run has taken it)."""
    path = Path(folder) / LOCK_FILE
    if not path.is_file():
        return
    lock = FileLock(path, timeout=LOCK_WAIT_S)
    _take(lock, Path(folder))
    lock.release()


# What a training run writes into its output_dir (removed by --overwrite, in this order: the done marker first and
# config.yaml last, so that a crash mid-removal never leaves a folder that looks finished; other files are left).
RUN_OUTPUTS = ("results.json", "checkpoints", "model", "model.partial", "model.old", "config.yaml")


def finished_outputs(folder: Path, names=RUN_OUTPUTS) -> list[str]:
    """The names of ``names`` that exist in ``folder``."""
    return [name for name in names if (folder / name).exists()]


def run_config_text(config: dict) -> str:
    """The run's ``config.yaml``, as every run writes it."""
    return yaml.safe_dump(config, sort_keys=False)


def check_run_folder(folder: Path, resume: bool, overwrite: bool, has_checkpoint: bool,
                     outputs=RUN_OUTPUTS, done_marker: str = "results.json", probe_lock: bool = False,
                     inputs: dict | None = None, config: dict | None = None) -> None:
    """Refuse to start in a folder that holds a run unless told what to do with it, and refuse a run whose outputs
    hold one of its ``inputs`` (see :func:`check_inputs_kept`; ``config``, the run's settings, tells whether a
    config.yaml there is what the run would write anyway). With ``probe_lock`` (a look before taking the lock), a
    folder refused because another run is writing into it says so."""
    try:
        _check_run_folder(folder, resume, overwrite, has_checkpoint, outputs, done_marker, inputs or {}, config)
    except RunFolderError:
        if probe_lock:
            raise_if_in_use(folder)
        raise


def _check_run_folder(folder: Path, resume: bool, overwrite: bool, has_checkpoint: bool, outputs,
                      done_marker: str, inputs: dict, config: dict | None) -> None:
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other: continue the run in output_dir, or "
                             "replace it, not both")
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"output_dir {folder} is a file, not a folder; give a folder for the run")
    # a run killed before its first checkpoint left the config.yaml it would write again: resumable with it
    written = folder / "config.yaml"
    unchanged = config is not None and written.is_file() and _text_or_none(written) == run_config_text(config)
    check_inputs_kept(folder, inputs, outputs, overwrite, config_checked=resume and (has_checkpoint or unchanged))
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


def check_inputs_kept(folder: Path, inputs: dict, names=RUN_OUTPUTS, overwrite: bool = True,
                      config_checked: bool = False) -> None:
    """Refuse, naming the file, a run that would delete or replace a file it reads: one of ``inputs`` (path -> what
    it is, from ``training.data.run_inputs``) that is one of the outputs ``names`` in ``folder`` or lies inside one.
    ``--overwrite`` deletes them all; any run replaces them as it writes (model/ at every new best epoch), except
    config.yaml when ``config_checked``: a resumed run rewrites it with the settings it was checked against (its
    checkpoint's), or that it holds already, so a run's own config.yaml given back as --config to resume it stays
    what it was. Otherwise a config.yaml there that the run reads is the user's own file."""
    written = [name for name in names if overwrite or not (config_checked and name == "config.yaml")]
    for path, what in inputs.items():
        name = next((name for name in written if _is_within(Path(path), Path(folder) / name)), None)
        if name is None:
            continue
        if overwrite:
            raise RunFolderError(f"--overwrite would delete {path}, which this run reads ({what}); move it out of "
                                 f"{folder}, or choose another output_dir")
        raise RunFolderError(f"this run would replace {path}, which it reads ({what}), when it writes "
                             f"{Path(folder) / name}; move it out of {folder}, or choose another output_dir")


def _text_or_none(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _is_within(path: Path, output: Path) -> bool:
    """Whether ``path`` is ``output`` or lies inside it, by its name as given and by the file it names: a symbolic
    link inside ``output`` is deleted with it (its target is not), a file reached through a linked folder is."""
    output = output.parent.resolve() / output.name  # the output itself is removed, not followed, when it is a link
    for candidate in {Path(os.path.abspath(path)), Path(path).resolve()}:
        if candidate == output or output in candidate.parents:
            return True
    return False


def remove_outputs(folder: Path, names=RUN_OUTPUTS, inputs: dict | None = None) -> None:
    """Remove a run's outputs for --overwrite; refuses (before removing anything) when one of ``inputs`` (the files
    the run reads, ``training.data.run_inputs``) is among them."""
    check_inputs_kept(folder, inputs or {}, names, overwrite=True)
    for name in names:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


class DiskFullError(SparseshareError, OSError):
    """No space left where a run writes. One line (the folder and what to do), not the writer's own error: torch's
    says only ``unexpected pos ...``. What the run had saved stays consistent, so ``--resume`` continues it once
    space is freed."""

    def __init__(self, folder: Path, file: str | None = None):
        free = _free_bytes(folder)
        super().__init__(f"no space left on device: cannot write into {folder}" + (f" ({file})" if file else "")
                         + (f", {_size(free)} free" if free is not None else "")
                         + "; free some space, then continue the run with --resume")
        self.errno = errno.ENOSPC  # set after: OSError(errno, text) would print as "[Errno 28] text"


@contextmanager
def disk_full_reported(folder: Path):
    """``with disk_full_reported(output_dir):`` turns an out-of-space failure of any writer (Python's, torch's,
    safetensors') into a :class:`DiskFullError` naming ``folder``; other errors pass unchanged."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as err:  # noqa: BLE001 - torch and safetensors raise their own types; only a full disk is caught
        if not _is_disk_full(err, Path(folder)):
            raise
        file = next((e.filename for e in _chain(err) if isinstance(e, OSError) and e.filename), None)
        raise DiskFullError(Path(folder), file) from err


NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# Messages of writers that do not raise OSError: safetensors ("No space left on device (os error 28)") and torch's
# zip writer, whose error names no cause ("unexpected pos ...", "iostream error", "file write failed").
NO_SPACE_MESSAGES = ("no space left on device", "disk quota exceeded", "os error 28")
TORCH_WRITE_FAILED = ("PytorchStreamWriter", "inline_container.cc", "iostream error", "file write failed")
LOW_SPACE = 16 * 2**20  # bytes: after a failed write the file system is full to within a few blocks


def _chain(err: BaseException):
    """``err`` and the errors it was raised from or while handling (torch's writer raises two)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _is_disk_full(err: BaseException, folder: Path) -> bool:
    for e in _chain(err):
        if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS:
            return True
        if any(text in str(e).lower() for text in NO_SPACE_MESSAGES):
            return True
    # torch's writer loses the errno: a failed torch write on a (nearly) full file system is taken for a full disk
    if any(text in str(e) for e in _chain(err) for text in TORCH_WRITE_FAILED):
        free = _free_bytes(folder)
        return free is not None and free < LOW_SPACE
    return False


def _size(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n // 1024} KiB"


def _free_bytes(folder: Path) -> int | None:
    """Free bytes on the file system of ``folder`` (or of its nearest existing parent)."""
    for path in (Path(folder), *Path(folder).absolute().parents):
        if path.exists():
            try:
                return shutil.disk_usage(path).free
            except OSError:
                return None
    return None
