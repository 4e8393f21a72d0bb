"""Where a NER model's errors are: entity F1 on test split by whether the entity's surface string (with its type)
occurs as an entity in the training data (issue 23: do multi-task models lose on memorised or on new names?).

    python benchmarks/ner_seen_unseen.py --train ../shared/data/conll2003/train.txt \\
        --vectors ../shared/data/glove/glove.6B.50d.filtered.txt benchmarks/results/conll03_converged/{ner,hard}_seed{1,2,3}

Reads each run's committed ``predictions/test.ner.conll.gz`` (``token gold predicted`` per line) and prints, per
run and as means over the runs of the same name, the F1 of seen and of unseen entities: an entity (gold or
predicted) counts as unseen when its text never occurs as an entity (of any type) in train, so that a span's group
does not depend on the type given to it and precision and recall use one split. Unseen entities are split further (columns ``u:train``,
``u:vector``, ``u:unk``): every word of the entity occurs in train (lowercased), or some word never does; with
``--vectors``, the latter by whether every such new word has a pretrained vector (which no step has moved) or
not (it is UNK). IOB2 spans, exact match as in conlleval.
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


def train_entities(path: Path) -> set[str]:
    seen = set()
    for sentence in read_sentences(path, (0, 3)):
        words, tags = [w for w, _ in sentence], [t for _, t in sentence]
        seen |= {" ".join(words[a:b]) for a, b, _ in spans(tags)}
    return seen


def train_words(path: Path) -> set[str]:
    return {w.lower() for sentence in read_sentences(path, (0,)) for (w,) in sentence}


def vector_words(path: Path) -> set[str]:
    with open(path, encoding="utf-8") as f:
        return {line.split(" ", 1)[0] for line in f}


GROUPS = ("all", "seen", "unseen", "u:train", "u:vector", "u:unk")


def unseen_kind(words: list[str], known: set[str], vectors: set[str] | None) -> str:
    """Why an unseen entity is new: all its words occur in train, or some word never does (with a vector or not)."""
    new = [w.lower() for w in words if w.lower() not in known]
    if not new:
        return "u:train"
    if vectors is None:
        return "u:vector"
    return "u:vector" if all(w in vectors for w in new) else "u:unk"


def scores(prediction_file: Path, seen: set, known: set[str], vectors: set[str] | None
           ) -> dict[str, dict[str, float]]:
    counts = {g: defaultdict(int) for g in GROUPS}
    for sentence in read_sentences(prediction_file, (0, 1, 2)):
        words = [w for w, _, _ in sentence]
        gold, predicted = spans([g for _, g, _ in sentence]), spans([p for _, _, p in sentence])
        for name, group in (("gold", gold), ("predicted", predicted)):
            for a, b, kind in group:
                split = "seen" if " ".join(words[a:b]) in seen else "unseen"
                groups = (split, "all") if split == "seen" else (split, "all", unseen_kind(words[a:b], known, vectors))
                for g in groups:
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
    parser.add_argument("--vectors", help="the word vectors file: splits unseen entities with a new word by "
                                          "whether every new word has a vector")
    parser.add_argument("runs", nargs="+", help="run folders holding predictions/test.ner.conll.gz")
    args = parser.parse_args()
    seen, known = train_entities(Path(args.train)), train_words(Path(args.train))
    vectors = vector_words(Path(args.vectors)) if args.vectors else None
    groups = GROUPS if vectors is not None else GROUPS[:-1]
    by_name = defaultdict(list)
    print(f"{'run':<22} " + " ".join(f"{g:>8}" for g in groups))
    for i, run in enumerate(map(Path, args.runs)):
        result = scores(run / "predictions" / "test.ner.conll.gz", seen, known, vectors)
        if i == 0:
            print(f"{'(gold entities)':<22} " + " ".join(f"{result[g]['gold']:>8}" for g in groups))
        by_name[re.sub(r"_seed\d+$", "", run.name)].append(result)
        print(f"{run.name:<22} " + " ".join(f"{result[g]['f1']:8.2f}" for g in groups))
    print("\nmean over seeds")
    for name, results in by_name.items():
        print(f"{name + f' ({len(results)})':<22} "
              + " ".join(f"{np.mean([r[g]['f1'] for r in results]):8.2f}" for g in groups))


if __name__ == "__main__":
    main()
