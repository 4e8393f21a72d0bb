"""The one metric module: span micro-F1 through seqeval (with per-type rows) and token accuracy.

Span F1 defaults to seqeval's conlleval-compatible mode; ``strict=True`` scores BIOES/IOB2 spans strictly.
Gold labels never seen in training are counted and reported, never an error.
"""
from __future__ import annotations

from seqeval.metrics import classification_report
from seqeval.scheme import IOB2, IOBES

from .data.schemes import iob1_to_iob2

_STRICT_SCHEMES = {"iob2": IOB2, "bioes": IOBES}


def _check_lengths(gold, pred):
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold labels but {len(p)} predicted")


def token_accuracy(gold: list[list[str]], pred: list[list[str]], ignore: tuple[str, ...] = ()) -> dict:
    _check_lengths(gold, pred)
    pairs = [(g, p) for gs, ps in zip(gold, pred) for g, p in zip(gs, ps) if g not in ignore]
    correct = sum(g == p for g, p in pairs)
    return {"accuracy": 100.0 * correct / len(pairs) if pairs else 0.0, "correct": correct, "total": len(pairs)}


def span_f1(gold: list[list[str]], pred: list[list[str]], strict: bool = False, scheme: str = "iob2") -> dict:
    """Micro P/R/F1 over spans (percentages) and a row per entity type."""
    _check_lengths(gold, pred)
    if strict and scheme == "iob1":  # IOB1 has no strict reading of its own: score it as IOB2
        gold, pred = [iob1_to_iob2(s) for s in gold], [iob1_to_iob2(s) for s in pred]
        scheme = "iob2"
    if strict and scheme not in _STRICT_SCHEMES:
        raise ValueError(f"strict span scoring supports {sorted(_STRICT_SCHEMES) + ['iob1']}, not {scheme!r}")
    kwargs = {"mode": "strict", "scheme": _STRICT_SCHEMES[scheme]} if strict else {}
    report = classification_report(gold, pred, output_dict=True, zero_division=0, **kwargs)
    micro = report.pop("micro avg")
    for key in ("macro avg", "weighted avg"):
        report.pop(key, None)
    types = {
        name: {"precision": 100 * row["precision"], "recall": 100 * row["recall"], "f1": 100 * row["f1-score"],
               "support": int(row["support"])}
        for name, row in sorted(report.items())
    }
    return {"precision": 100 * micro["precision"], "recall": 100 * micro["recall"], "f1": 100 * micro["f1-score"],
            "support": int(micro["support"]), "types": types}


def score_task(metric: str, gold, pred, ignore_labels=(), strict: bool = False, scheme: str = "iob2") -> dict:
    """Scores for one task; ``score`` is the number used for model selection."""
    if metric == "accuracy":
        result = token_accuracy(gold, pred, tuple(ignore_labels))
        result["score"] = result["accuracy"]
    elif metric == "span_f1":
        result = span_f1(gold, pred, strict=strict, scheme=scheme)
        result["score"] = result["f1"]
    else:
        raise ValueError(f"unknown metric {metric!r}")
    return result


def format_table(results: dict[str, dict]) -> str:
    """A per-task table (with per-type rows for span tasks), like conlleval's summary."""
    lines = [f"{'task':<12} {'type':<8} {'prec':>7} {'rec':>7} {'F1/acc':>7} {'support':>8}"]
    for task, r in results.items():
        if "f1" in r:
            lines.append(f"{task:<12} {'ALL':<8} {r['precision']:7.2f} {r['recall']:7.2f} {r['f1']:7.2f} {r['support']:8d}")
            for name, row in r["types"].items():
                lines.append(f"{'':<12} {name:<8} {row['precision']:7.2f} {row['recall']:7.2f} {row['f1']:7.2f} {row['support']:8d}")
        else:
            lines.append(f"{task:<12} {'acc':<8} {'':>7} {'':>7} {r['accuracy']:7.2f} {r['total']:8d}")
        if r.get("unseen_labels"):
            lines.append(f"{'':<12} note: {r['unseen_labels']} gold token(s) carry labels unseen in training: "
                         f"{', '.join(sorted(r['unseen_label_names']))}")
    return "\n".join(lines)
