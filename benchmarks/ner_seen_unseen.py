"""Where a NER model's errors are: entity F1 on test split by whether the entity's surface string (with its type)
occurs as an entity in the training data (issue 23: do multi-task models lose on memorised or on new names?).

    python benchmarks/ner_seen_unseen.py --train ../shared/data/conll2003/train.txt \\
        benchmarks/results/conll03_converged/{ner,hard,sparse}_seed{1,2,3}

Reads each run's committed ``predictions/test.ner.conll.gz`` (``token gold predicted`` per line) and prints, per
run and as means over the runs of the same name, the F1 of seen and of unseen entities: a gold entity counts as
unseen when its (type, text) never occurs as an entity in train; a predicted one is scored in the group its text
would fall in (so precision and recall use one split). IOB2 spans, exact match as in conlleval.
"""
from __future__ import annotations

import argparse
import gzip
import re
from collections import defaultdict
from pathlib import Path

import numpy as np


def spans(tags: list[str]) -> set[tuple[int, int, str]]:
    """(start, end exclusive, type) of IOB2 tags (an I- without a B- starts a span, as conlleval does)."""
    found, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        if start is not None and (tag == "O" or tag.startswith("B-") or tag[2:] != kind):
            found.add((start, i, kind))
            start = None
        if tag != "O" and start is None:
            start, kind = i, tag[2:]
    return found


def read_sentences(path: Path, columns: tuple[int, ...]) -> list[list[tuple[str, ...]]]:
    opener = gzip.open if path.suffix == ".gz" else open
    sentences, current = [], []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if not parts or parts[0] == "-DOCSTART-":
                if current:
                    sentences.append(current)
                current = []
                continue
            current.append(tuple(parts[c] for c in columns))
    if current:
        sentences.append(current)
    return sentences


def train_entities(path: Path) -> set[tuple[str, str]]:
    seen = set()
    for sentence in read_sentences(path, (0, 3)):
        words, tags = [w for w, _ in sentence], [t for _, t in sentence]
        seen |= {(kind, " ".join(words[a:b])) for a, b, kind in spans(tags)}
    return seen


def scores(prediction_file: Path, seen: set) -> dict[str, dict[str, float]]:
    counts = {g: defaultdict(int) for g in ("seen", "unseen", "all")}
    for sentence in read_sentences(prediction_file, (0, 1, 2)):
        words = [w for w, _, _ in sentence]
        gold, predicted = spans([g for _, g, _ in sentence]), spans([p for _, _, p in sentence])
        for name, group in (("gold", gold), ("predicted", predicted)):
            for a, b, kind in group:
                split = "seen" if (kind, " ".join(words[a:b])) in seen else "unseen"
                for g in (split, "all"):
                    counts[g][name] += 1
                    counts[g]["correct"] += name == "gold" and (a, b, kind) in predicted
    result = {}
    for g, c in counts.items():
        p, r = c["correct"] / max(c["predicted"], 1), c["correct"] / max(c["gold"], 1)
        result[g] = {"f1": 100 * 2 * p * r / max(p + r, 1e-12), "gold": c["gold"]}
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, help="the CoNLL-2003 training file")
    parser.add_argument("runs", nargs="+", help="run folders holding predictions/test.ner.conll.gz")
    args = parser.parse_args()
    seen = train_entities(Path(args.train))
    by_name = defaultdict(list)
    print(f"{'run':<28} {'all':>7} {'seen':>7} {'unseen':>7}   (gold entities: seen / unseen)")
    for run in map(Path, args.runs):
        result = scores(run / "predictions" / "test.ner.conll.gz", seen)
        by_name[re.sub(r"_seed\d+$", "", run.name)].append(result)
        print(f"{run.name:<28} {result['all']['f1']:7.2f} {result['seen']['f1']:7.2f} {result['unseen']['f1']:7.2f}"
              f"   ({result['seen']['gold']} / {result['unseen']['gold']})")
    print("\nmean over seeds")
    for name, results in by_name.items():
        means = {g: np.mean([r[g]["f1"] for r in results]) for g in ("all", "seen", "unseen")}
        print(f"{name + f' ({len(results)})':<28} {means['all']:7.2f} {means['seen']:7.2f} {means['unseen']:7.2f}")


if __name__ == "__main__":
    main()
