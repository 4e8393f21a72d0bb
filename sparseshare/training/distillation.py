"""Distillation from single-task teachers (Clark et al. 2019, "BAM! Born-Again Multi-Task Networks").

A teacher is a saved model folder that has the task (typically the converged single-task model; the sparse recipe
uses the dense network its mask search trains for each task anyway). Its posterior on every training sentence of
the task is computed once, before training, in eval mode: for a CRF head the marginals a linear-chain
distribution's cross-entropy needs (per token, and the expected transition counts per sentence), for a softmax
head the per-token label distributions. A step of task t then trains on

    gold_weight * loss(gold) + (1 - gold_weight) * cross_entropy(teacher, student)

with ``gold_weight`` rising linearly from 0 to 1 over the run (teacher annealing: the student first imitates
the teacher and ends on the gold labels), or fixed at ``1 - train.distill_weight``.

Targets are recomputed (deterministically) when a run resumes, so checkpoints hold nothing new.
"""
from __future__ import annotations


import torch

from ..data.batching import bucketed_batches
from ..model import MultiTaskTagger
from .data import TaskData


class TeacherTargets:
    """Soft targets of the teachers, per task, one dict of tensors per training sentence."""

    def __init__(self, targets: dict[str, list[dict[str, torch.Tensor]]]):
        self.targets = targets

    def __contains__(self, task: str) -> bool:
        return task in self.targets

    @classmethod
    def compute(cls, teachers: dict[str, str], data: dict[str, TaskData], student: MultiTaskTagger,
                batch_size: int = 256, log=print) -> "TeacherTargets":
        targets = {}
        unknown = [task for task in teachers if task not in data]
        if unknown:
            raise ValueError(f"config key 'train.distill_from' names {unknown}, not among the run's tasks {list(data)}")
        device = next(student.parameters()).device
        for task, folder in teachers.items():
            # building a model draws from torch's generator: a resumed run (whose generator was restored from the
            # checkpoint) must draw the same dropout masks afterwards as a run that never stopped
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                teacher = MultiTaskTagger.from_pretrained(folder, device=device)
            order = _label_order(teacher, student, task, folder)
            if type(teacher.heads[task]) is not type(student.heads[task]):
                raise ValueError(f"config key 'train.distill_from.{task}': the teacher {folder} has a "
                                 f"{type(teacher.heads[task]).__name__} for {task!r}, this model a "
                                 f"{type(student.heads[task]).__name__}; distillation needs the same kind of head")
            sentences = data[task].train_tokens
            per_sentence: list = [None] * len(sentences)
            for index in bucketed_batches([len(s) for s in sentences], batch_size, None):
                batch = teacher.featurizer.collate([sentences[i] for i in index]).to(device)
                with torch.no_grad():  # not inference_mode: the CRF's marginals are gradients of log Z
                    features = teacher.sharing.features_for_tasks(batch, [task])[task]
                    soft = teacher.heads[task].soft_targets(features, batch.mask)
                for row, i in enumerate(index):
                    n = len(sentences[i])
                    per_sentence[i] = {"unary": soft["unary"][row, :n][:, order].cpu()}
                    if "pairwise" in soft:
                        per_sentence[i]["pairwise"] = soft["pairwise"][row][order][:, order].cpu()
            targets[task] = per_sentence
            log(f"[{task}] distilling from {folder}: soft targets for {len(sentences)} training sentences")
        return cls(targets)

    def batch(self, task: str, indices: list[int], length: int, device) -> dict[str, torch.Tensor]:
        """The targets of sentences ``indices`` padded to ``length`` tokens (zeros at padding)."""
        rows = [self.targets[task][i] for i in indices]
        unary = torch.zeros(len(rows), length, rows[0]["unary"].shape[1])
        for r, row in enumerate(rows):
            unary[r, :len(row["unary"])] = row["unary"]
        out = {"unary": unary.to(device)}
        if "pairwise" in rows[0]:
            out["pairwise"] = torch.stack([row["pairwise"] for row in rows]).to(device)
        return out


def _label_order(teacher: MultiTaskTagger, student: MultiTaskTagger, task: str, folder) -> list[int]:
    """For each of the student's labels, its index among the teacher's (the same labels in any order)."""
    if task not in teacher.tasks:
        raise ValueError(f"config key 'train.distill_from.{task}': the teacher {folder} has no task {task!r} "
                         f"(it has {list(teacher.tasks)})")
    ours, theirs = student.labels[task], teacher.labels[task]
    if sorted(ours) != sorted(theirs) or teacher.tasks[task].train_scheme != student.tasks[task].train_scheme:
        raise ValueError(f"config key 'train.distill_from.{task}': the teacher {folder} was trained on other "
                         f"{task!r} labels ({teacher.tasks[task].train_scheme}: {theirs}) than this model's "
                         f"({student.tasks[task].train_scheme}: {ours})")
    return [theirs.index(label) for label in ours]


def gold_weight(step: int, total_steps: int, distill_weight: float | None) -> float:
    """The weight of the gold labels' loss at optimisation step ``step`` (0-based) of ``total_steps``: teacher
    annealing (0 at the first step, 1 at the last) when ``distill_weight`` is None, else ``1 - distill_weight``."""
    if distill_weight is not None:
        return 1.0 - distill_weight
    return step / max(total_steps - 1, 1)

