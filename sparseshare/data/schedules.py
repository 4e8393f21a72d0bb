"""Multi-task schedules: which task trains at each step of an epoch.

The plan for an epoch depends only on (seed, epoch), so every process of a distributed run, and a run
resumed mid-epoch, follows exactly the same sequence of tasks and batches.
"""
from __future__ import annotations

import numpy as np

SCHEDULES = ("round_robin", "proportional", "temperature", "joint")
EPOCH_LENGTHS = ("batches", "weighted")


def epoch_steps(batches_per_task: dict[str, int], weights: dict[str, float] | None = None,
                epoch_length: str = "batches", schedule: str = "round_robin") -> int:
    """The number of steps of one epoch: the total number of batches, or with ``epoch_length="weighted"`` each
    task's batches times its weight (tasks not named weigh 1), so that a weight adds steps to its task instead of
    taking them from the others; under the ``joint`` schedule, the largest task's number of batches."""
    if epoch_length not in EPOCH_LENGTHS:
        raise ValueError(f"unknown epoch length {epoch_length!r}; expected one of {EPOCH_LENGTHS}")
    if schedule == "joint":
        return max(n for n in batches_per_task.values())
    weights = weights if epoch_length == "weighted" else None
    return int(round(sum(n * (weights or {}).get(t, 1.0) for t, n in batches_per_task.items())))


def epoch_plan(schedule: str, batches: dict[str, list[list[int]]], rng: np.random.Generator,
               temperature: float = 2.0, weights: dict[str, float] | None = None,
               epoch_length: str = "batches") -> list[tuple[str, list[int]]]:
    """``(task, sentence indices)`` for every step of one epoch.

    - ``round_robin`` (the sparse-sharing paper's): tasks in a random order, one batch per task in turn,
      until each task's batches are used up.
    - ``proportional``: each step draws a task with probability proportional to its number of batches.
    - ``temperature``: probability proportional to ``n_batches ** (1 / temperature)`` (T=1 is proportional,
      large T approaches uniform); small tasks cycle through their batches again when exhausted.

    ``weights`` (proportional and temperature only; tasks not named weigh 1) multiply a task's probability before
    normalisation: ``{ner: 2}`` on three tasks of equal size gives NER half of the steps, and NER then cycles through
    its batches again within the epoch while the others see three quarters of theirs.

    Every schedule has the same number of steps per epoch: the total number of batches, or with
    ``epoch_length="weighted"`` (proportional and temperature) :func:`epoch_steps` with the weights, so that under
    the proportional schedule every task keeps its whole epoch of batches and ``{ner: 2}`` adds a second pass of
    NER's on top (in expectation).
    """
    tasks = [t for t in batches if batches[t]]
    if schedule == "joint":
        raise ValueError("a step of the joint schedule holds every task's batch: use step_plan")
    if schedule == "round_robin":
        order = [tasks[i] for i in rng.permutation(len(tasks))]
        longest = max(len(batches[t]) for t in tasks)
        return [(t, batches[t][r]) for r in range(longest) for t in order if r < len(batches[t])]
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    sizes = np.array([len(batches[t]) for t in tasks], dtype=np.float64)
    odds = sizes if schedule == "proportional" else sizes ** (1.0 / temperature)
    odds = odds * np.array([(weights or {}).get(t, 1.0) for t in tasks])
    steps = epoch_steps({t: len(batches[t]) for t in tasks}, weights, epoch_length)
    draws = rng.choice(len(tasks), size=steps, p=odds / odds.sum())
    cursor = {t: 0 for t in tasks}
    plan = []
    for d in draws:
        task = tasks[d]
        plan.append((task, batches[task][cursor[task] % len(batches[task])]))
        cursor[task] += 1
    return plan


def step_plan(schedule: str, batches: dict[str, list[list[int]]], rng: np.random.Generator,
              temperature: float = 2.0, weights: dict[str, float] | None = None,
              epoch_length: str = "batches") -> list[list[tuple[str, list[int]]]]:
    """The optimiser steps of one epoch, each a list of ``(task, sentence indices)`` whose losses one step sums.

    Under ``round_robin``, ``proportional`` and ``temperature`` a step holds one task's batch (:func:`epoch_plan`).
    Under ``joint`` every step holds a batch of every task, in the order of ``batches``, and one optimiser step
    follows their summed losses (as Maximum Roaming's official code trains, and as a multi-task loss is usually
    written); the epoch has as many steps as the largest task has batches, and a smaller task cycles through
    its batches again.
    """
    if schedule != "joint":
        return [[item] for item in epoch_plan(schedule, batches, rng, temperature, weights, epoch_length)]
    tasks = [t for t in batches if batches[t]]
    longest = max(len(batches[t]) for t in tasks)
    return [[(t, batches[t][r % len(batches[t])]) for t in tasks] for r in range(longest)]
