"""Scoring a model on labelled sentences: per task the metric of its task file (accuracy, span F1 with
seqeval), and how many gold tokens carry a label never seen in training."""
from __future__ import annotations

import numpy as np

from .metrics import score_task
from .model import MultiTaskTagger
from .tasks import TaskSpec


def unseen_labels(spec: TaskSpec, train_labels: list[str], gold: list[list[str]]) -> tuple[int, set[str]]:
    """Gold tokens whose label (entity type, for span tasks) never occurs in training."""
    def kind(label):
        return label.split("-", 1)[1] if spec.scheme != "none" and "-" in label else label

    known = {kind(label) for label in train_labels}
    missing = [label for seq in gold for label in seq if kind(label) not in known]
    return len(missing), set(missing)

def evaluate(model: MultiTaskTagger, datasets_by_task: dict[str, object], batch_size: int = 256,
             strict: bool = False, predictions: dict | None = None) -> dict[str, dict]:
    """Scores per task; ``predictions``, when given, receives each task's predicted labels (corpus scheme)."""
    results = {}
    for task, dataset in datasets_by_task.items():
        spec = model.tasks[task]
        gold = list(dataset["labels"])
        pred = model.predict_corpus(list(dataset["tokens"]), [task], batch_size)[task]
        if predictions is not None:
            predictions[task] = pred
        result = score_task(spec.metric, gold, pred, spec.ignore_labels, strict=strict, scheme=spec.scheme)
        count, names = unseen_labels(spec, model.labels[task], gold)
        result.update(unseen_labels=count, unseen_label_names=sorted(names))
        results[task] = result
    return results

def mean_score(results: dict[str, dict]) -> float:
    return float(np.mean([r["score"] for r in results.values()]))
