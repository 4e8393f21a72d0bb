"""Multi-task schedules: which task trains at each step of an epoch.

The plan for an epoch depends only on (seed, epoch), so every process of a distributed run, and a run
resumed mid-epoch, follows exactly the same sequence of tasks and batches.
"""
from __future__ import annotations

import numpy as np

SCHEDULES = ("round_robin", "proportional", "temperature")


def epoch_plan(schedule: str, batches: dict[str, list[list[int]]], rng: np.random.Generator,
               temperature: float = 2.0, weights: dict[str, float] | None = None) -> list[tuple[str, list[int]]]:
    """``(task, sentence indices)`` for every step of one epoch.

    - ``round_robin`` (the sparse-sharing paper's): tasks in a random order, one batch per task in turn,
      until each task's batches are used up.
    - ``proportional``: each step draws a task with probability proportional to its number of batches.
    - ``temperature``: probability proportional to ``n_batches ** (1 / temperature)`` (T=1 is proportional,
      large T approaches uniform); small tasks cycle through their batches again when exhausted.

    ``weights`` (proportional and temperature only; tasks not named weigh 1) multiply a task's probability before
    normalisation: ``{ner: 2}`` on three tasks of equal size gives NER half of the steps, and NER then cycles through
    its batches again within the epoch while the others see three quarters of theirs.

    Every schedule has the same number of steps per epoch (the total number of batches).
    """
    tasks = [t for t in batches if batches[t]]
    if schedule == "round_robin":
        order = [tasks[i] for i in rng.permutation(len(tasks))]
        longest = max(len(batches[t]) for t in tasks)
        return [(t, batches[t][r]) for r in range(longest) for t in order if r < len(batches[t])]
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    sizes = np.array([len(batches[t]) for t in tasks], dtype=np.float64)
    odds = sizes if schedule == "proportional" else sizes ** (1.0 / temperature)
    odds = odds * np.array([(weights or {}).get(t, 1.0) for t in tasks])
    draws = rng.choice(len(tasks), size=int(sizes.sum()), p=odds / odds.sum())
    cursor = {t: 0 for t in tasks}
    plan = []
    for d in draws:
        task = tasks[d]
        plan.append((task, batches[task][cursor[task] % len(batches[task])]))
        cursor[task] += 1
    return plan
