"""How well does each sentence splitter find the sentence boundaries of raw multi-sentence text?

The text: the paragraphs of UD English-EWT (web text: blogs, e-mails, reviews, answers, newsgroups), each
paragraph's sentences (their ``# text`` lines, the raw text as written) joined with one space, the treebank's
sentence starts as the gold boundaries. No splitter was tuned on this file (the toolkit's rules were written for
news text; EWT is only used as a training corpus for xpos, from its train split). The splitters:

- ``sparseshare``: ``sparseshare.text.tokenize`` + ``split_sentences`` (what ``Tagger`` uses);
- ``segtok``: ``segtok.segmenter.split_single`` (flair's choice), if installed;
- ``pysbd``: ``pysbd.Segmenter(language="en", clean=False, char_span=True)``, if installed.

A boundary is the character offset at which a sentence other than a paragraph's first starts. Reported per
splitter: boundary precision / recall / F1, the share of paragraphs split exactly right, and the same recall
restricted to gold boundaries that follow ``.``, ``!`` or ``?`` (no splitter can see one without punctuation,
as EWT often has, when the sentences are joined with a space).

    python benchmarks/sentence_splitters.py ../shared/data/ud_ewt/dev.conllu --out benchmarks/results/sentence_splitters.json
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from sparseshare.text import split_sentences, tokenize


def paragraphs(conllu: Path) -> list[tuple[str, set[int]]]:
    """``(text, gold boundary offsets)`` for every paragraph with two sentences or more."""
    out, sentences = [], []

    def close():
        if len(sentences) > 1:
            text, starts = "", set()
            for i, sentence in enumerate(sentences):
                if i:
                    text += " "
                    starts.add(len(text))
                text += sentence
            out.append((text, starts))
        sentences.clear()

    for line in conllu.read_text(encoding="utf-8").splitlines():
        if line.startswith(("# newpar", "# newdoc")):
            close()
        elif line.startswith("# text = "):
            sentences.append(line[len("# text = "):].strip())
    close()
    return out


AFTER_PUNCTUATION = re.compile(r"[.!?][\"'”’)\]]*$")  # a boundary after . ! or ?, with closing quotes or brackets


def _ours(text: str) -> set[int]:
    tokens = tokenize(text)
    return {tokens[start].start for start, _ in split_sentences(tokens, text)[1:]}


def _from_strings(text: str, pieces) -> set[int]:
    """Boundaries of sentences given as strings, found in ``text`` in order."""
    starts, cursor = set(), 0
    for i, piece in enumerate(pieces):
        piece = piece.strip()
        if not piece:
            continue
        at = text.find(piece, cursor)
        if at < 0:
            raise ValueError(f"splitter output not found in the text: {piece!r}")
        if i:
            starts.add(at)
        cursor = at + len(piece)
    starts.discard(0)
    return starts


def splitters() -> dict:
    found = {"sparseshare": _ours}
    try:
        from segtok.segmenter import split_single

        found["segtok"] = lambda text: _from_strings(text, split_single(text))
    except ImportError:
        pass
    try:
        import pysbd

        segmenter = pysbd.Segmenter(language="en", clean=False, char_span=True)
        found["pysbd"] = lambda text: {span.start for span in segmenter.segment(text)} - {0}
    except ImportError:
        pass
    return found


def score(split, data: list[tuple[str, set[int]]]) -> dict:
    tp = fp = fn = exact = punct_gold = punct_found = 0
    started = time.perf_counter()
    for text, gold in data:
        found = split(text)
        tp, fp, fn = tp + len(found & gold), fp + len(found - gold), fn + len(gold - found)
        exact += found == gold
        after_punct = {b for b in gold if AFTER_PUNCTUATION.search(text[:b].rstrip())}
        punct_gold, punct_found = punct_gold + len(after_punct), punct_found + len(after_punct & found)
    seconds = time.perf_counter() - started
    p, r = tp / max(1, tp + fp), tp / max(1, tp + fn)
    return {"precision": round(100 * p, 2), "recall": round(100 * r, 2),
            "f1": round(100 * 2 * p * r / max(1e-9, p + r), 2), "errors": fp + fn,
            "paragraphs_exact": round(100 * exact / len(data), 2),
            "recall_after_punctuation": round(100 * punct_found / max(1, punct_gold), 2), "seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("conllu", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    data = paragraphs(args.conllu)
    results = {"file": args.conllu.name, "paragraphs": len(data), "boundaries": sum(len(g) for _, g in data),
               "splitters": {name: score(split, data) for name, split in splitters().items()}}
    print(f"{results['paragraphs']} paragraphs, {results['boundaries']} gold boundaries ({args.conllu.name})")
    print("| splitter | precision | recall | F1 | errors | paragraphs exact | recall after .!? | s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results["splitters"].items():
        print(f"| {name} | {r['precision']} | {r['recall']} | {r['f1']} | {r['errors']} | {r['paragraphs_exact']} | "
              f"{r['recall_after_punctuation']} | {r['seconds']} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
