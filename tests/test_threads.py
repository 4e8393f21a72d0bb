"""The CPU thread count of a training process (sparseshare/training/threads.py): `accelerate launch`'s default of
one thread per process does not decide it, a chosen count does."""
from __future__ import annotations

import pytest
import torch

from sparseshare.config import ConfigError, load_config
from sparseshare.recipes.train import run_training
from sparseshare.training.threads import training_threads

from conftest import tiny_overrides

LAUNCHED = {"ACCELERATE_MIXED_PRECISION": "no"}  # what `accelerate launch` puts in every process it starts


@pytest.mark.parametrize("setting, environ, expected", [
    (None, {}, 8),  # nothing chosen: every core
    (None, {"OMP_NUM_THREADS": "1"}, 1),  # chosen outside accelerate launch (the grid's --threads 1)
    (None, {"OMP_NUM_THREADS": "3"}, 3),
    (None, {**LAUNCHED, "OMP_NUM_THREADS": "1"}, 8),  # accelerate launch's default: not a choice
    (None, {**LAUNCHED, "OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "2"}, 4),  # 2 processes share 8 cores
    (None, {**LAUNCHED, "OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "16"}, 1),  # never 0
    (None, {**LAUNCHED, "OMP_NUM_THREADS": "3"}, 3),  # --num_cpu_threads_per_process 3
    (None, {"OMP_NUM_THREADS": "many"}, 8),  # not a count: ignored
    # torchrun with 2 processes per machine puts OMP_NUM_THREADS=1 in each unless it was set
    (None, {"TORCHELASTIC_RUN_ID": "x", "OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "2"}, 4),
    (None, {"MPI_LOCALNRANKS": "4"}, 2),  # an MPI launcher's processes on this machine
    (2, {"OMP_NUM_THREADS": "1"}, 2),  # train.threads wins over everything
    (5, {**LAUNCHED, "OMP_NUM_THREADS": "3"}, 5),
])
def test_thread_count_rule(setting, environ, expected):
    assert training_threads(setting, environ, cores=8) == expected


def test_thread_count_must_be_positive():
    with pytest.raises(ConfigError, match="train.threads"):
        load_config(None, ["train.threads=0"])


@pytest.mark.skipif(torch.accelerator.is_available(), reason="the thread count is set for CPU training only")
def test_training_runs_with_the_configured_threads_and_resumes_with_others(tiny_corpus, tmp_path):
    before = torch.get_num_threads()
    messages = []
    try:
        run_training(load_config(None, tiny_overrides(tiny_corpus, tmp_path, **{
            "train.epochs": 1, "train.threads": 2})), log=messages.append)
        assert torch.get_num_threads() == 2 and "2 CPU threads per process" in messages
        # another thread count is not another experiment: a run may continue with it
        longer = load_config(None, tiny_overrides(tiny_corpus, tmp_path, **{"train.epochs": 2, "train.threads": 1}))
        assert run_training(longer, resume=True, log=messages.append)["epochs_run"] == 2
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
