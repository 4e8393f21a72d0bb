"""The timed training loop shared by the step-time benchmarks (sparse_speed.py, strategy_cost.py): the same
round-robin batches for every model, blocks of steps alternating between the models so that machine noise
hits all alike. One step is what run_training does: collate, forward, backward (mean loss over the batch),
hand the per-sentence losses to the sharing strategy, clip to 5, optimiser step, the strategy's after_step."""
from __future__ import annotations

import time

import numpy as np
import torch


def round_robin_plan(data, tasks: list[str], steps: int, batch_size: int = 32) -> list[tuple[str, list[int]]]:
    """``steps`` (task, sentence indices) batches, the tasks in turn, each task's batches length-bucketed."""
    from sparseshare.data.batching import bucketed_batches

    rng = np.random.default_rng(0)
    order = {t: bucketed_batches([len(s) for s in data[t].train_tokens], batch_size, rng) for t in tasks}
    return [(tasks[i % len(tasks)], order[tasks[i % len(tasks)]][i // len(tasks)]) for i in range(steps)]


def run_block(model, optimizer, data, block, *, steps, word_ids: bool = True, before_step=None) -> float:
    """Seconds to train ``model`` on the batches of ``block``. ``steps``: the model's own ``itertools.count(1)``,
    kept across its blocks, that numbers its steps for ``after_step`` (roaming moves its masks every delta steps).
    ``word_ids``: collate with the word ids cached in the task data (only valid for the vocabulary they were
    computed with). ``before_step(task)`` runs before each optimiser step (e.g. a masked optimiser takes the
    task's masks)."""
    model.train()
    started = time.perf_counter()
    for task, index in block:
        d = data[task]
        ids = [d.train_word_ids[i] for i in index] if word_ids else None
        batch = model.featurizer.collate([d.train_tokens[i] for i in index], [d.train_labels[i] for i in index], ids)
        loss = model(batch, task)
        (loss.sum() / len(index)).backward()
        model.sharing.observe_losses(task, loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        if before_step is not None:
            before_step(task)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.sharing.after_step(next(steps))  # e.g. Maximum Roaming's mask moves, as the training loop does
    return time.perf_counter() - started


def alternating_seconds(run, names: list[str], plan, steps: int, repeats: int, warmup) -> dict[str, float]:
    """Total seconds of each model over ``repeats`` blocks of ``steps`` batches of ``plan``; ``run(name,
    block)`` trains one model on a block. Each model first runs the ``warmup`` batches (allocator, thread
    pools); the block order reverses every other repeat."""
    for name in names:
        run(name, warmup)
    seconds = dict.fromkeys(names, 0.0)
    for r in range(repeats):
        block = plan[r * steps:(r + 1) * steps]
        for name in (names if r % 2 == 0 else names[::-1]):
            seconds[name] += run(name, block)
    return seconds
