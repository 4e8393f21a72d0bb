"""Checkpoints and the state of a run: atomic checkpoint and model saves, what a crash leaves behind and how
it is put back, the checks before resuming (random states, config changes) and before saving (finite weights)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from ..config import Config, ConfigError, ModelConfig, read_yaml, upgrade_saved_model_config
from ..errors import SparseshareError
from ..files import recover_folder, replace_folder
from ..model import MultiTaskTagger


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # steps completed within the current epoch
    global_step: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list = field(default_factory=list)
    plugins: dict = field(default_factory=dict)  # what training plugins keep across steps (JSON values)

STATE_FILE = "train_state.json"

def _checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder is complete once its train_state.json exists)."""
    found = [p for p in (output_dir / "checkpoints").glob("step_*")
             if p.name[5:].isdigit() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))

def latest_checkpoint(output_dir: Path) -> Path | None:
    found = _checkpoints(output_dir)
    return found[-1] if found else None

def save_checkpoint(accelerator: Accelerator, output_dir: Path, state: TrainState, keep: int,
                    model: torch.nn.Module | None = None) -> None:
    """Write into a temporary folder and rename it into place, so that a crash mid-save never leaves a
    folder that looks complete (the epoch-end checkpoint may replace a step checkpoint of the same step)."""
    check_finite(model, state)
    folder = output_dir / "checkpoints" / f"step_{state.global_step:08d}"
    partial = folder.with_name(folder.name + ".partial")
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / STATE_FILE).write_text(json.dumps(dataclasses.asdict(state), indent=1))
        replace_folder(partial, folder)
        for old in _checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()

def save_model_atomically(model: MultiTaskTagger, folder: Path, extra: dict) -> None:
    partial = folder.with_name(folder.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    model.save_pretrained(partial, extra=extra)
    replace_folder(partial, folder)

def recover_interrupted_saves(output_dir: Path) -> None:
    """Put back the folders a crash left between the two renames of a save (see files.replace_folder)."""
    recover_folder(output_dir / "model")
    for old in (output_dir / "checkpoints").glob("step_*.old"):
        recover_folder(old.with_name(old.name[:-len(".old")]))
    for partial in (output_dir / "checkpoints").glob("step_*.partial"):
        shutil.rmtree(partial, ignore_errors=True)

def check_random_states(checkpoint: Path, process_index: int) -> None:
    """Accelerate's load_state only logs (at info level) when it cannot restore the RNG states, and the run then
    goes on with other dropout masks than the uninterrupted run: refuse instead. Loaded as Accelerate loads it
    (torch.load with weights_only=True), so a pickle that would run code is refused too."""
    from accelerate.utils import load

    path = checkpoint / f"random_states_{process_index}.pkl"
    try:
        states = load(str(path))
        if not isinstance(states, dict):
            raise TypeError(f"a {type(states).__name__}, not a dict of random states")
        random.Random().setstate(states["random_state"])
        np.random.RandomState().set_state(states["numpy_random_seed"])
        torch.Generator().set_state(states["torch_manual_seed"])
        if torch.cuda.is_available() and len(states["torch_cuda_manual_seed"]) != torch.cuda.device_count():
            raise ValueError(f"{len(states['torch_cuda_manual_seed'])} CUDA random states for "
                             f"{torch.cuda.device_count()} devices")
    except Exception as err:  # noqa: BLE001 - unpickling raises many types for a damaged file
        raise CheckpointError(f"checkpoint {checkpoint}: cannot restore the random states from {path} "
                              f"({type(err).__name__}: {err}); an exact resume is impossible from it. Delete the "
                              f"folder to resume from the previous checkpoint, if train.keep_checkpoints kept one"
                              ) from None

def check_finite(model: torch.nn.Module | None, state: TrainState) -> None:
    """A checkpoint or model with NaN/inf weights is never written over a good one."""
    if model is None:
        return
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise TrainingDiverged(f"training diverged by step {state.global_step}: {len(bad)} weight tensor(s) hold "
                               f"NaN/inf (first: {bad[0]}); nothing was saved over the last good checkpoint and model")

class CheckpointError(SparseshareError, ValueError):
    pass

class TrainingDiverged(SparseshareError, RuntimeError):
    pass

# Keys a resumed run may change: how long it runs and how it reports, not what it computes.
RESUMABLE_CHANGES = {"train.epochs", "train.patience", "train.progress_bar", "train.log_with",
                     "train.checkpoint_every", "train.keep_checkpoints", "train.eval_batch_size", "train.threads"}
# Learning-rate schedules that do not depend on the run's length: with the others (linear, cosine) train.epochs sizes
# the decay, so a resumed run with another value would have decayed over one length and continue over another
LENGTH_FREE_SCHEDULES = ("constant", "constant_with_warmup", "inverse_time")


def read_run_config(path: Path) -> dict:
    """The config a run saved in its folder (``config.yaml``), read by the config files' loader: a damaged file is a
    :class:`ConfigError` naming the file and line, never a YAML traceback."""
    saved = read_yaml(path)
    if not isinstance(saved, dict):
        raise ConfigError(f"{path}: not a run's saved config (a YAML mapping of config keys), got "
                          f"{type(saved).__name__}; restore it, or start the run again with --overwrite")
    return saved


def check_resume_config(saved: dict, current: dict) -> None:
    if isinstance(saved.get("model"), dict):
        saved = {**saved, "model": upgrade_saved_model_config(saved["model"])}
    old, new = flat_config("", saved, {}), flat_config("", current, {})
    # A key the checkpointed run's config.yaml lacks was added to sparseshare later: that run used its default.
    sharing = current.get("model", {}).get("sharing", ModelConfig.sharing)
    defaults = Config(model=ModelConfig(sharing=sharing)).to_dict()  # with the strategy's section
    old = {**{k: v for k, v in flat_config("", defaults, {}).items() if k in new}, **old}
    changed = sorted(k for k in old.keys() | new.keys()
                     if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES and not same_path(old.get(k), new.get(k)))
    if changed:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise ValueError(f"--resume: the config differs from the checkpointed run's config.yaml in {details}; "
                         f"resume with the same settings or use another output_dir")
    if old.get("train.epochs") != new.get("train.epochs"):
        schedule = new.get("train.lr_schedule", "constant")
        annealed = new.get("train.distill_weight") in (None, "None") and (  # (flat_config writes None as "None")
            new.get("sparse.distill") is True or any(k.startswith("train.distill_from.") for k in new))
        spans = None
        if schedule not in LENGTH_FREE_SCHEDULES:
            spans = f"with train.lr_schedule {schedule!r} the number of epochs sizes the learning-rate decay"
        elif annealed:
            spans = "the teacher annealing of distillation (train.distill_weight null) runs over the number of epochs"
        if spans:
            raise ValueError(f"--resume: train.epochs {old.get('train.epochs')!r} -> {new.get('train.epochs')!r}: "
                             f"{spans}, so the resumed run would train neither the {old.get('train.epochs')}-epoch "
                             f"run nor the {new.get('train.epochs')}-epoch one; resume with "
                             f"train.epochs={old.get('train.epochs')}, or start a new run")

def same_path(a, b) -> bool:
    """Whether two config values name one existing file or folder, e.g. ``../shared/data`` and its absolute form: a
    run started with one spelling resumes with the other."""
    if not (isinstance(a, str) and isinstance(b, str) and a and b):
        return False
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False

def flat_config(prefix: str, value, out: dict):
    if isinstance(value, dict):
        for k, v in value.items():
            flat_config(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out
