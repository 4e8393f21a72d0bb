"""Scoring a model on labelled sentences: per task the metric of its task file (accuracy, span F1 with
seqeval), and how many gold tokens carry a label never seen in training."""
from __future__ import annotations

import numpy as np

from .data.schemes import convert
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
    """Scores per task; ``predictions``, when given, receives each task's predicted labels (corpus scheme).

    ``strict`` scores spans in the scheme the head predicts (``train_scheme``, BIOES for NER) against the gold
    converted to it: converted to the corpus scheme first, an ill-formed sequence (``B-PER B-PER E-PER``) would be
    repaired as conlleval reads it, and strict scoring would see the repaired spans."""
    results = {}
    for task, dataset in datasets_by_task.items():
        spec = model.tasks[task]
        gold = list(dataset["labels"])
        head = model.predict_corpus(list(dataset["tokens"]), [task], batch_size, head_scheme=True)[task]
        pred = [convert(seq, spec.train_scheme, spec.scheme) for seq in head]
        if predictions is not None:
            predictions[task] = pred
        if strict and spec.metric == "span_f1" and spec.train_scheme != spec.scheme:
            gold_in_head_scheme = [convert(seq, spec.scheme, spec.train_scheme) for seq in gold]
            result = score_task(spec.metric, gold_in_head_scheme, head, spec.ignore_labels, strict=True,
                                scheme=spec.train_scheme)
        else:
            result = score_task(spec.metric, gold, pred, spec.ignore_labels, strict=strict, scheme=spec.scheme)
        count, names = unseen_labels(spec, model.labels[task], gold)
        result.update(unseen_labels=count, unseen_label_names=sorted(names))
        results[task] = result
    return results

def mean_score(results: dict[str, dict]) -> float:
    return float(np.mean([r["score"] for r in results.values()]))
