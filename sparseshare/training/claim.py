"""The start of every run, the same for the training recipe and the sparse pipeline: take the output folder's lock,
look at it again under the lock, check a resumed run's settings against its ``config.yaml``, remove what
``--overwrite`` replaces and write the run's ``config.yaml``. The quick look before loading the data (the same check
without the lock) stays in the recipes, which know when their inputs have been read.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..config import Config
from ..files import atomic_path
from ..run_folder import (check_run_folder, disk_full_reported, lock_for_all_processes, remove_outputs,
                          run_config_text)
from .checkpoints import check_resume_config, read_run_config


@contextmanager
def claimed_output_dir(config: Config, state, *, resume: bool, overwrite: bool, inputs: dict, outputs,
                       done_marker: str, has_checkpoint: Callable[[], bool],
                       repair: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold ``config.output_dir`` for the block.

    ``state`` is the run's Accelerator or PartialState (every process calls this; the main one locks, removes and
    writes, the others wait for it). ``repair`` (main process, first) finishes what a crash interrupted, e.g. a
    half-renamed model folder, before ``has_checkpoint`` looks. A full disk is reported naming the folder."""
    out = Path(config.output_dir)
    lock = lock_for_all_processes(out, state.is_main_process, state.num_processes)
    try:
        with disk_full_reported(out):
            if repair is not None and state.is_main_process:
                repair()
            state.wait_for_everyone()
            found = has_checkpoint()
            check_run_folder(out, resume, overwrite, found, outputs=outputs, done_marker=done_marker, inputs=inputs,
                             config=config.to_dict())
            saved = out / "config.yaml"
            if resume and found and saved.is_file():
                check_resume_config(read_run_config(saved), config.to_dict())
            state.wait_for_everyone()  # every process has looked before the main one removes or writes
            if state.is_main_process:
                if overwrite:
                    remove_outputs(out, outputs, inputs=inputs)
                with atomic_path(saved) as partial:
                    partial.write_text(run_config_text(config.to_dict()))
            state.wait_for_everyone()
            yield
    finally:
        if lock is not None:
            lock.release()
