"""Inference through the Python API on CoNLL-2003 test: raw text in, tags and spans out.

    python benchmarks/tagger_throughput.py \\
        --model hard=benchmarks/runs/conll03/hard_seed1/model \\
        --model sparse=benchmarks/runs/conll03/sparse_seed1/joint/model \\
        --model minilm_hard=benchmarks/runs/conll03/minilm_hard_seed1/model \\
        --export minilm_ner_softmax=benchmarks/runs/conll03/minilm_ner_softmax_seed1/model \\
        --out benchmarks/results/tagger_throughput.json

The 3,453 test sentences are detokenised into raw text (one text per sentence), so the timed path is
the whole of ``Tagger.__call__``: tokenisation, sentence splitting, featurisation, encoding, decoding and
span extraction. Each model runs in its own process, which reports its load time and its peak resident
memory (VmHWM) after tagging. For every multi-task model: all tasks, then each task alone (what an extra
task costs). ``--export``: the model's task is exported to transformers and
``pipeline("token-classification")`` tags the corpus tokens joined by spaces; the script reports both
speeds and the share of words whose pipeline tag (read at the word's first character, i.e. its first
subword) equals the sparseshare tag, and equals the class the sparseshare head chose (named in the corpus
scheme, before sparseshare repairs ill-formed BIOES sequences).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NO_SPACE_BEFORE = {",", ".", ";", ":", "!", "?", "%", ")", "]", "}", "'s", "'S", "n't", "N'T", "'re", "'ve", "'ll",
                   "'d", "'m", "..."}
NO_SPACE_AFTER = {"(", "[", "{", "$"}


def read_conll_tokens(path: Path) -> list[list[str]]:
    from sparseshare.data.readers import read_conll

    return [row["tokens"] for row in read_conll(path, ["tokens", "pos", "chunk", "ner"])]


def detokenize(tokens: list[str]) -> str:
    """Newswire-looking text: no space before closing punctuation and clitics, none after opening brackets;
    double quotes alternate between opening and closing."""
    out, quote_open, glue_next = "", False, True
    for token in tokens:
        glue = glue_next or token in NO_SPACE_BEFORE
        glue_next = token in NO_SPACE_AFTER
        if token == '"':
            glue = glue or quote_open  # a closing quote sticks to the word before it
            glue_next = not quote_open  # an opening quote sticks to the word after it
            quote_open = not quote_open
        out += ("" if glue else " ") + token
    return out


def run_model(path: str, texts: list[str], gold: list[list[str]], repeats: int) -> dict:
    import torch

    from sparseshare import Tagger

    started = time.perf_counter()
    tagger = Tagger.from_pretrained(path)
    load_s = time.perf_counter() - started
    rss_loaded = _memory()["VmRSS"]
    tagger(texts[:200])  # warm-up: allocator, kernels
    runs = []
    for tasks in [None] + ([[t] for t in tagger.tasks] if len(tagger.tasks) > 1 else []):
        best, docs = float("inf"), None
        for _ in range(repeats):
            started = time.perf_counter()
            docs = tagger(texts, tasks=tasks, batch_size=256)
            best = min(best, time.perf_counter() - started)
        n_tokens = sum(len(d) for d in docs)
        runs.append({"tasks": tasks or "all", "seconds": best, "tokens": n_tokens, "tokens_per_s": n_tokens / best,
                     "spans": sum(len(s) for d in docs for s in d.spans.values())})
    started = time.perf_counter()
    tagger.tag_tokens(gold, batch_size=256)
    pretokenized_s = time.perf_counter() - started
    retokenized = [d.tokens for d in tagger(texts, tasks=tagger.tasks[:1])]
    memory = _memory()
    return {"model": path, "tasks": tagger.tasks, "sharing": tagger.model.config.sharing,
            "encoder": tagger.model.config.encoder, "threads": torch.get_num_threads(), "load_s": load_s,
            "runs": runs, "pretokenized_all_tasks_tokens_per_s": sum(map(len, gold)) / pretokenized_s,
            "sentences_tokenized_like_gold": sum(r == g for r, g in zip(retokenized, gold)) / len(gold),
            "rss_after_load_mb": rss_loaded, "peak_rss_mb": memory["VmHWM"]}


def run_export(path: str, gold: list[list[str]]) -> dict:
    import torch
    from transformers import pipeline

    from sparseshare import Tagger
    from sparseshare.data.schemes import first_invalid_transition
    from sparseshare.export import corpus_label, export_task

    tagger = Tagger.from_pretrained(path)
    task = "ner" if "ner" in tagger.tasks else tagger.tasks[0]
    spaced = [" ".join(s) for s in gold]  # the corpus tokens, separated by spaces
    with tempfile.TemporaryDirectory() as tmp:
        export_task(tagger.model, task, Path(tmp) / "export")
        runner = pipeline("token-classification", model=str(Path(tmp) / "export"), device="cpu")
        runner(spaced[:50])
        started = time.perf_counter()
        runner(spaced, batch_size=64, aggregation_strategy="first")
        pipeline_s = time.perf_counter() - started
        every_token = runner(spaced, batch_size=64, ignore_labels=[])
    tagger(spaced[:50])
    started = time.perf_counter()
    tagger(spaced, tasks=[task], batch_size=64)
    tagger_s = time.perf_counter() - started
    ours = tagger.model.predict(gold, [task], batch_size=64)[task]
    head = tagger.model.predict(gold, [task], batch_size=64, head_scheme=True)[task]
    spec = tagger.model.tasks[task]
    agree = same_class = ill_formed = 0
    for words, entities, expected, classes in zip(gold, every_token, ours, head):
        starts = [sum(len(w) + 1 for w in words[:i]) for i in range(len(words))]
        at = {e["start"]: e["entity"] for e in entities}
        exported = [at.get(s) for s in starts]  # None: no subword starts at the word (counts as a disagreement)
        agree += sum(a == b for a, b in zip(exported, expected))
        same_class += sum(a == corpus_label(c, spec.train_scheme, spec.scheme) for a, c in zip(exported, classes))
        ill_formed += first_invalid_transition(classes, spec.train_scheme) is not None
    n = sum(map(len, gold))
    return {"model": path, "task": task, "threads": torch.get_num_threads(), "words": n,
            "pipeline_words_per_s": n / pipeline_s, "tagger_words_per_s": n / tagger_s,
            "agreement_with_tagger_tags": agree / n, "words_disagreeing": n - agree,
            "agreement_with_head_classes": same_class / n, "sentences": len(gold),
            "sentences_with_ill_formed_head_output": ill_formed}


def _memory() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="name=model folder")
    parser.add_argument("--export", action="append", default=[], help="name=single-task softmax Transformer model")
    parser.add_argument("--test", default=str(ROOT.parent / "shared" / "data" / "conll2003" / "test.txt"))
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per measurement (the fastest counts)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tagger_throughput.json"))
    parser.add_argument("--max-sentences", type=int, help="first N test sentences only (smoke tests)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # internal: kind, path
    args = parser.parse_args()
    gold = read_conll_tokens(Path(args.test))[: args.max_sentences]
    texts = [detokenize(s) for s in gold]
    if args.child:
        kind, path = args.child
        result = run_model(path, texts, gold, args.repeats) if kind == "model" else run_export(path, gold)
        print(json.dumps(result))
        return
    results = {"test": args.test, "sentences": len(gold), "gold_tokens": sum(map(len, gold)), "models": {},
               "exports": {}}
    for kind, specs, key in (("model", args.model, "models"), ("export", args.export, "exports")):
        for spec in specs:
            name, path = spec.split("=", 1)
            done = subprocess.run([sys.executable, __file__, "--test", args.test, "--repeats", str(args.repeats),
                                   *(["--max-sentences", str(args.max_sentences)] if args.max_sentences else []),
                                   "--child", kind, path], capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                raise SystemExit(f"{name}: failed\n{done.stderr[-3000:]}")
            results[key][name] = json.loads(done.stdout.strip().splitlines()[-1])
            print(name, json.dumps(results[key][name]), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
