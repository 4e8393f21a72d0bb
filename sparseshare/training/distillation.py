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

import logging
from pathlib import Path

import torch

from .. import model_folder
from ..config import ConfigError
from ..data.batching import bucketed_batches
from ..errors import ModelFolderError
from ..heads import HEADS
from ..model import REQUIRED_FILES, MultiTaskTagger
from ..tasks import TaskSpec
from .data import TaskData

logger = logging.getLogger(__name__)


class TeacherTargets:
    """Soft targets of the teachers, per task, one dict of tensors per training sentence."""

    def __init__(self, targets: dict[str, list[dict[str, torch.Tensor]]]):
        self.targets = targets

    def __contains__(self, task: str) -> bool:
        return task in self.targets

    @classmethod
    def compute(cls, teachers: dict[str, str], data: dict[str, TaskData], student: MultiTaskTagger,
                batch_size: int = 256) -> "TeacherTargets":
        """The soft targets of ``teachers`` (task -> model folder) on the tasks' training sentences, each teacher
        loaded in turn. ``teachers`` passed :func:`check_teachers` (run_training checks them before it writes
        anything)."""
        targets = {}
        device = next(student.parameters()).device
        for task, folder in teachers.items():
            teacher, order = load_teacher(folder, task, student)
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
            logger.info(f"[{task}] distilling from {folder}: soft targets for {len(sentences)} training sentences")
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


def check_teachers(teachers: dict[str, str], student: MultiTaskTagger) -> None:
    """``train.distill_from`` (task -> teacher model folder) checked against ``student`` without loading a teacher:
    each task is one of the student's (by its name: a task file's ``name:``, not its path), and each folder has a
    model's files, whose config.json and labels.json (read and checked as loading reads them; the weights are not
    read) give the task with the student's labels, train scheme and kind of head. The recipes call it before they
    write anything; errors name the config key."""
    unknown = [task for task in teachers if task not in student.tasks]
    if unknown:
        raise ConfigError(f"config key 'train.distill_from' names {unknown}, not among the run's tasks "
                          f"{list(student.tasks)}")
    for task, folder in teachers.items():
        directory = Path(folder)
        missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
        if missing:
            raise ModelFolderError(f"config key 'train.distill_from.{task}': the teacher {folder} is missing "
                                   f"{', '.join(missing)}")
        model, tasks, _, _ = model_folder.read_config(directory / "config.json")
        labels = model_folder.read_labels(directory / "labels.json", tasks)
        _fit(folder, task, student, {spec.name: spec for spec in tasks}, labels, HEADS[model.head])


def load_teacher(folder: str, task: str, student: MultiTaskTagger) -> tuple[MultiTaskTagger, list[int]]:
    """The teacher of ``task`` in ``folder``, checked against ``student`` (same labels, same kind of head), and for
    each of the student's labels its index among the teacher's."""
    device = next(student.parameters()).device
    # building a model draws from torch's generator: a resumed run (whose generator was restored from the
    # checkpoint) must draw the same dropout masks afterwards as a run that never stopped
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        teacher = MultiTaskTagger.from_pretrained(folder, device=device)
    head = type(teacher.heads[task]) if task in teacher.heads else None
    order = _fit(folder, task, student, teacher.tasks, teacher.labels, head)
    return teacher, order


def _fit(folder, task: str, student: MultiTaskTagger, tasks: dict[str, TaskSpec], labels: dict[str, list[str]],
         head: type | None) -> list[int]:
    """The teacher in ``folder`` (its ``tasks``, ``labels`` and ``head`` class for ``task``) fits ``student`` for
    ``task``: it has the task, with the same labels (in any order) and train scheme, and the same kind of head.
    For each of the student's labels, its index among the teacher's."""
    if task not in tasks:
        raise ValueError(f"config key 'train.distill_from.{task}': the teacher {folder} has no task {task!r} "
                         f"(it has {list(tasks)})")
    ours, theirs = student.labels[task], labels[task]
    if sorted(ours) != sorted(theirs) or tasks[task].train_scheme != student.tasks[task].train_scheme:
        raise ValueError(f"config key 'train.distill_from.{task}': the teacher {folder} was trained on other "
                         f"{task!r} labels ({tasks[task].train_scheme}: {theirs}) than this model's "
                         f"({student.tasks[task].train_scheme}: {ours})")
    if head is not type(student.heads[task]):
        raise ValueError(f"config key 'train.distill_from.{task}': the teacher {folder} has a "
                         f"{head.__name__} for {task!r}, this model a {type(student.heads[task]).__name__}; "
                         f"distillation needs the same kind of head")
    return [theirs.index(label) for label in ours]


def gold_weight(step: int, total_steps: int, distill_weight: float | None) -> float:
    """The weight of the gold labels' loss at optimisation step ``step`` (0-based) of ``total_steps``: teacher
    annealing (0 at the first step, 1 at the last) when ``distill_weight`` is None, else ``1 - distill_weight``."""
    if distill_weight is not None:
        return 1.0 - distill_weight
    return step / max(total_steps - 1, 1)

