"""Multi-task epoch plans: round robin, proportional and temperature sampling."""
from collections import Counter

import numpy as np
import pytest

from sparseshare.data.schedules import SCHEDULES, epoch_plan, epoch_steps, step_plan


def _batches(sizes: dict[str, int]) -> dict[str, list[list[int]]]:
    return {task: [[i, i + 1000] for i in range(n)] for task, n in sizes.items()}


def test_round_robin_uses_every_batch_once_and_alternates():
    batches = _batches({"pos": 5, "chunk": 2, "ner": 3, "empty": 0})
    plan = epoch_plan("round_robin", batches, np.random.default_rng(0))
    assert len(plan) == 10
    for task, task_batches in batches.items():
        used = [b for t, b in plan if t == task]
        assert used == task_batches  # each batch once, in order
    # rounds: all three tasks, then the ones with batches left, same task order in every round
    tasks = [t for t, _ in plan]
    first = tasks[:3]
    assert sorted(first) == ["chunk", "ner", "pos"]
    assert tasks[3:6] == first
    assert tasks[6:8] == [t for t in first if t != "chunk"]
    assert tasks[8:] == ["pos", "pos"]
    assert "empty" not in tasks
    for a, b in zip(tasks, tasks[1:]):
        assert a != b or a == "pos"  # only the biggest task repeats, once others are used up


def test_round_robin_random_task_order_and_determinism():
    batches = _batches({"a": 3, "b": 3, "c": 3, "d": 3})
    orders = set()
    for seed in range(20):
        plan = epoch_plan("round_robin", batches, np.random.default_rng(seed))
        assert plan == epoch_plan("round_robin", batches, np.random.default_rng(seed))
        orders.add(tuple(t for t, _ in plan[:4]))
    assert len(orders) > 1  # the order of tasks within a round is drawn from the rng


@pytest.mark.parametrize("schedule", [s for s in SCHEDULES if s != "joint"])
def test_same_seed_same_plan(schedule):
    batches = _batches({"a": 7, "b": 3, "c": 11})
    p1 = epoch_plan(schedule, batches, np.random.default_rng(42), temperature=3.0)
    p2 = epoch_plan(schedule, batches, np.random.default_rng(42), temperature=3.0)
    assert p1 == p2
    assert len(p1) == 21
    assert {t for t, _ in p1} <= {"a", "b", "c"}
    for task, batch in p1:
        assert batch in batches[task]
    assert step_plan(schedule, batches, np.random.default_rng(42), temperature=3.0) == [[item] for item in p1]


def test_a_joint_step_holds_a_batch_of_every_task():
    batches = _batches({"a": 4, "b": 2, "c": 3, "empty": 0})
    plan = step_plan("joint", batches, np.random.default_rng(0))
    assert len(plan) == 4 == epoch_steps({"a": 4, "b": 2, "c": 3}, schedule="joint")
    # every task in every step, in the order of the tasks; the smaller ones cycle through their batches again
    assert plan == [[("a", batches["a"][r]), ("b", batches["b"][r % 2]), ("c", batches["c"][r % 3])] for r in range(4)]
    with pytest.raises(ValueError, match="use step_plan"):
        epoch_plan("joint", batches, np.random.default_rng(0))


def test_proportional_frequencies_and_batches():
    sizes = {"a": 6000, "b": 3000, "c": 1000}
    batches = _batches(sizes)
    plan = epoch_plan("proportional", batches, np.random.default_rng(0))
    assert len(plan) == 10000
    counts = Counter(t for t, _ in plan)
    for task, n in sizes.items():
        assert abs(counts[task] / 10000 - n / 10000) < 0.02
    # each task goes through its own batches in order (cycling when drawn more often than it has batches)
    for task, n in sizes.items():
        used = [b for t, b in plan if t == task]
        assert used == [batches[task][i % n] for i in range(len(used))]


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_temperature_frequencies(temperature):
    sizes = {"a": 8000, "b": 1000, "c": 1000}
    batches = _batches(sizes)
    plan = epoch_plan("temperature", batches, np.random.default_rng(1), temperature=temperature)
    assert len(plan) == 10000
    weights = {t: n ** (1 / temperature) for t, n in sizes.items()}
    total = sum(weights.values())
    counts = Counter(t for t, _ in plan)
    for task in sizes:
        assert abs(counts[task] / 10000 - weights[task] / total) < 0.02
    # small tasks cycle through their batches again when exhausted
    if temperature > 1:
        used_b = [b for t, b in plan if t == "b"]
        assert len(used_b) > 1000
        assert used_b[1000] == batches["b"][0]


def test_unknown_schedule():
    with pytest.raises(ValueError, match="unknown schedule"):
        epoch_plan("random", _batches({"a": 1}), np.random.default_rng(0))


@pytest.mark.parametrize("schedule", ["proportional", "temperature"])
def test_task_weights_multiply_the_sampling_probabilities(schedule):
    sizes = {"pos": 3000, "chunk": 3000, "ner": 3000}
    batches = _batches(sizes)
    plan = epoch_plan(schedule, batches, np.random.default_rng(2), weights={"ner": 2.0})
    assert len(plan) == 9000  # an epoch keeps its number of steps
    counts = Counter(t for t, _ in plan)
    assert abs(counts["ner"] / 9000 - 0.5) < 0.02 and abs(counts["pos"] / 9000 - 0.25) < 0.02
    used = [b for t, b in plan if t == "ner"]  # NER cycles through its batches again
    assert used == [batches["ner"][i % 3000] for i in range(len(used))] and len(used) > 3000
    assert epoch_plan(schedule, batches, np.random.default_rng(2), weights={}) == \
        epoch_plan(schedule, batches, np.random.default_rng(2))


def test_task_weights_multiply_the_tempered_sizes():
    sizes = {"a": 8000, "b": 1000, "c": 1000}  # T = 2: odds 89.4, 31.6, 31.6; b weighted x3
    plan = epoch_plan("temperature", _batches(sizes), np.random.default_rng(3), temperature=2.0, weights={"b": 3.0})
    odds = {"a": 8000 ** 0.5, "b": 3 * 1000 ** 0.5, "c": 1000 ** 0.5}
    counts = Counter(t for t, _ in plan)
    for task in sizes:  # not the weights applied to the raw sizes (which would give b 3000 / 12000 = 0.25)
        assert abs(counts[task] / 10000 - odds[task] / sum(odds.values())) < 0.02


def test_task_weights_are_checked_by_key(tiny_corpus, tmp_path):
    from conftest import quiet, tiny_config
    from sparseshare.config import ConfigError
    from sparseshare.recipes.train import run_training

    with pytest.raises(ConfigError, match=r"'train\.task_weights'.*needs train\.schedule proportional or temperature"):
        tiny_config(tiny_corpus, tmp_path, **{"train.task_weights": "{ner: 2}"})
    with pytest.raises(ConfigError, match=r"'train\.task_weights': weights must be > 0, got \{'ner': 0\.0\}"):
        tiny_config(tiny_corpus, tmp_path, **{"train.schedule": "proportional", "train.task_weights": "{ner: 0}"})
    config = tiny_config(tiny_corpus, tmp_path, **{"train.schedule": "proportional", "train.task_weights": "{nre: 2}"})
    with pytest.raises(ConfigError, match=r"'train\.task_weights': task\(s\) \['nre'\] are not among the run's tasks"):
        run_training(config, log=quiet)
    assert not (tmp_path / "config.yaml").exists()  # refused before anything was written


@pytest.mark.parametrize("schedule", ["proportional", "temperature"])
def test_a_weighted_epoch_adds_the_weighted_tasks_steps(schedule):
    sizes = {"pos": 3000, "chunk": 3000, "ner": 3000}
    batches = _batches(sizes)
    plan = epoch_plan(schedule, batches, np.random.default_rng(2), weights={"ner": 2.0}, epoch_length="weighted")
    assert len(plan) == 12000 == epoch_steps(sizes, {"ner": 2.0}, "weighted")  # 3000 + 3000 + 2 x 3000
    counts = Counter(t for t, _ in plan)
    # equal sizes: the same odds under both schedules; POS and chunk keep (about) their whole epoch
    assert abs(counts["ner"] / 12000 - 0.5) < 0.02 and abs(counts["pos"] / 3000 - 1.0) < 0.05
    assert epoch_steps(sizes, {"ner": 2.0}) == 9000  # "batches": the weight takes steps from the others
    assert epoch_steps({"a": 3, "b": 4}, {"b": 0.5}, "weighted") == 5
    with pytest.raises(ValueError, match="unknown epoch length 'long'"):
        epoch_steps(sizes, {}, "long")


def test_a_weighted_epoch_sizes_the_run(tiny_corpus, tmp_path):
    from conftest import quiet, tiny_config
    from sparseshare.config import ConfigError
    from sparseshare.recipes.train import run_training

    with pytest.raises(ConfigError, match=r"'train\.epoch_length': 'weighted' sizes the epoch by train\.task_weights"):
        tiny_config(tiny_corpus, tmp_path, **{"train.schedule": "proportional", "train.epoch_length": "weighted"})
    with pytest.raises(ConfigError, match=r"'train\.epoch_length': 'steps' is not one of \['batches', 'weighted'\]"):
        tiny_config(tiny_corpus, tmp_path, **{"train.epoch_length": "steps"})
    steps = []
    config = tiny_config(tiny_corpus, tmp_path, **{
        "train.schedule": "proportional", "train.task_weights": "{ner: 2}", "train.epoch_length": "weighted",
        "train.epochs": 2, "train.lr_schedule": "linear"})
    run_training(config, callbacks=[steps.append], log=quiet)
    assert steps[-1] == 2 * (6 + 6 + 2 * 6)  # 48 sentences in batches of 8 per task, NER's twice
