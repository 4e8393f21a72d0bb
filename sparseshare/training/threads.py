"""How many CPU threads a training process uses.

``accelerate launch`` sets ``OMP_NUM_THREADS=1`` in every process it starts unless it is given
``--num_cpu_threads_per_process`` or finds ``OMP_NUM_THREADS`` set already, so a CPU run started the way the
README says would otherwise train on one core of many (torchrun does the same with several processes per machine).
The recipes therefore pick the thread count themselves: ``train.threads`` when set; else ``OMP_NUM_THREADS`` when
someone chose it (any value outside those launchers, a value other than their default 1 under them); else this
process's share of the cores, the cores it may run on divided by the training processes on this machine.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

logger = logging.getLogger(__name__)
# launchers that put OMP_NUM_THREADS=1 into the processes they start unless it is set: `accelerate launch` (its
# variables) and torchrun with several processes per machine (TORCHELASTIC_RUN_ID)
_LAUNCHED_BY = ("ACCELERATE_MIXED_PRECISION", "TORCHELASTIC_RUN_ID")
# the training processes on this machine, as torchrun / accelerate and the MPI launchers name them
_LOCAL_SIZE = ("LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE")


def available_cores() -> int:
    """Physical cores this process may run on: the CPU affinity mask, a cgroup CPU quota and hyper-threading
    (two logical CPUs of one core share its arithmetic units) each lower the count."""
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = logical
    try:
        import psutil  # installed with accelerate

        physical, all_logical = psutil.cpu_count(logical=False), psutil.cpu_count(logical=True)
        if physical and all_logical and all_logical > physical:
            cores = max(1, logical * physical // all_logical)
    except ImportError:
        pass
    quota = _cgroup_cpu_quota()
    return max(1, min(cores, quota) if quota else cores)


def _cgroup_cpu_quota() -> int | None:
    """The CPUs a cgroup v2 quota allows (``cpu.max``, e.g. a container started with ``--cpus 2``), if any."""
    try:
        limit, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if limit == "max":
        return None
    return max(1, int(int(limit) / int(period)))


def training_threads(setting: int | None, environ: dict[str, str] | None = None, cores: int | None = None) -> int:
    """The number of threads for one training process (see the module's docstring for the rule)."""
    if setting is not None:
        return setting
    environ = os.environ if environ is None else environ
    chosen = environ.get("OMP_NUM_THREADS", "").strip()
    launched = any(name in environ for name in _LAUNCHED_BY)
    if chosen.isdigit() and int(chosen) > 0 and (not launched or int(chosen) != 1):
        return int(chosen)
    local_processes = next((int(environ[name]) for name in _LOCAL_SIZE if environ.get(name, "").isdigit()), 1)
    return max(1, (available_cores() if cores is None else cores) // max(1, local_processes))


def use_training_threads(setting: int | None) -> int:
    """Set torch's intra-op thread count for this training process; returns it (for the run's log)."""
    threads = training_threads(setting)
    logger.debug(
        f"threads: train.threads={setting}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
        f"LOCAL_WORLD_SIZE={os.environ.get('LOCAL_WORLD_SIZE')}, cores available {available_cores()} -> {threads}")
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
