"""Inference throughput of `sparseshare tag` on CoNLL-2003 test (3,453 sentences, 46,435 tokens).

    python benchmarks/inference.py benchmarks/runs/conll03/hard_seed1/model benchmarks/runs/conll03/ner_seed1/model

For each model: the CLI end to end (process start, model load, reading, tagging, writing), the tagging
throughput the CLI reports, and, for multi-task models, all tasks vs each task alone (the cost of an
extra task when the encoder is shared). Also the model's load time in-process.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def conll_to_text(path: Path, out: Path) -> int:
    from sparseshare.data.readers import read_conll

    sentences = [row["tokens"] for row in read_conll(path, ["tokens", "pos", "chunk", "ner"])]
    out.write_text("\n".join(" ".join(s) for s in sentences) + "\n", encoding="utf-8")
    return sum(len(s) for s in sentences)


def tag(model: str, text: Path, tasks: list[str] | None) -> dict:
    cmd = [sys.executable, "-m", "sparseshare.cli", "tag", model, str(text), "--tokenized"] + (["--tasks", *tasks] if tasks else [])
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    wall = time.perf_counter() - started
    tagging = float(re.search(r"\(([\d.]+) tokens/s\)", done.stderr).group(1))
    return {"tasks": tasks or "all", "tagging_tokens_per_s": tagging, "end_to_end_s": wall}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--test", default=str(ROOT.parent / "shared" / "data" / "conll2003" / "test.txt"))
    args = parser.parse_args()
    from sparseshare.model import MultiTaskTagger

    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "test.txt"
        tokens = conll_to_text(Path(args.test), text)
        for model in args.models:
            started = time.perf_counter()
            tasks = list(MultiTaskTagger.from_pretrained(model).tasks)
            load_s = time.perf_counter() - started
            rows = [tag(model, text, None)]
            if len(tasks) > 1:
                rows += [tag(model, text, [t]) for t in tasks]
            for row in rows:
                row["end_to_end_tokens_per_s"] = tokens / row["end_to_end_s"]
            print(json.dumps({"model": model, "tokens": tokens, "load_s": load_s, "runs": rows}), flush=True)


if __name__ == "__main__":
    main()
