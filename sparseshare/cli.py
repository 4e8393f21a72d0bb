"""``sparseshare train | train-sparse | masks show | evaluate | tag``."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _train(args):
    from .config import load_config
    from .training import run_training

    config = load_config(args.config, args.overrides)
    run_training(config, resume=args.resume)


def _train_sparse(args):
    from .config import load_config
    from .sparse.pipeline import run_sparse

    config = load_config(args.config, args.overrides)
    run_sparse(config, resume=args.resume)


def _masks_show(args):
    from .model import MultiTaskTagger
    from .sparse.masks import draw_overlap, format_report
    from .sparse.pipeline import model_statistics

    model = MultiTaskTagger.from_pretrained(args.model)
    if model.config.sharing != "sparse":
        raise ValueError(f"{args.model} uses {model.config.sharing!r} sharing: it has no task masks")
    print(format_report(model.sharing.masks, model_statistics(model)["parameters"]))
    if args.png:
        print(f"wrote {draw_overlap(model.sharing.masks, args.png)}")


def _evaluate(args):
    from .data.corpus import load_split
    from .metrics import format_table
    from .model import MultiTaskTagger
    from .training import evaluate

    model = MultiTaskTagger.from_pretrained(args.model)
    datasets_by_task = {
        task: load_split(model.tasks[task], args.split, source=args.source,
                         data_dir=args.data_dir or Path(args.data_root) / model.tasks[task].corpus)
        for task in model.check_tasks(args.tasks)
    }
    results = evaluate(model, datasets_by_task, args.batch_size, strict=args.strict)
    print(f"{args.split}:\n{format_table(results)}")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1))
        print(f"wrote {args.output}")


def read_sentences(handle) -> list[list[str]]:
    """One sentence per line, tokens separated by whitespace; blank lines are skipped."""
    return [line.split() for line in handle if line.strip()]


def _tag(args):
    from .model import MultiTaskTagger

    model = MultiTaskTagger.from_pretrained(args.model)
    tasks = model.check_tasks(args.tasks)
    if args.input == "-":
        sentences = read_sentences(sys.stdin)
    else:
        with open(args.input, encoding="utf-8") as handle:
            sentences = read_sentences(handle)
    if not sentences:
        raise SystemExit(f"sparseshare tag: no text to tag in {'stdin' if args.input == '-' else args.input}")
    started = time.perf_counter()
    tags = model.predict(sentences, tasks, batch_size=args.batch_size)
    elapsed = time.perf_counter() - started
    out = sys.stdout
    for i, tokens in enumerate(sentences):
        if args.format == "json":
            out.write(json.dumps({"tokens": tokens, "tags": {t: tags[t][i] for t in tasks}}, ensure_ascii=False) + "\n")
        else:
            for j, token in enumerate(tokens):
                out.write("\t".join([token] + [tags[t][i][j] for t in tasks]) + "\n")
            out.write("\n")
    n_tokens = sum(len(s) for s in sentences)
    print(f"tagged {len(sentences)} sentences, {n_tokens} tokens in {elapsed:.2f}s "
          f"({n_tokens / max(elapsed, 1e-9):.0f} tokens/s)", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparseshare", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model from a YAML config")
    train.add_argument("--config", help="YAML config (recipes/configs/*.yaml)")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    train.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. data.dir=../shared/data/conll2003")
    train.set_defaults(run=_train)

    sparse = sub.add_parser("train-sparse", help="the sparse-sharing pipeline: warm-up, mask search, joint training")
    sparse.add_argument("--config", help="YAML config (recipes/configs/*sparse*.yaml)")
    sparse.add_argument("--resume", action="store_true", help="continue the pipeline in output_dir where it stopped")
    sparse.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. sparse.rounds=3")
    sparse.set_defaults(run=_train_sparse)

    masks = sub.add_parser("masks", help="inspect the task masks of a sparse model")
    masks_sub = masks.add_subparsers(dest="masks_command", required=True)
    show = masks_sub.add_parser("show", help="densities, overlap ratios and parameter counts")
    show.add_argument("model", help="model folder")
    show.add_argument("--png", help="also draw the overlap-ratio heatmap into this PNG file")
    show.set_defaults(run=_masks_show)

    ev = sub.add_parser("evaluate", help="score a saved model on a split; prints a per-task table")
    ev.add_argument("model", help="model folder")
    ev.add_argument("--split", default="test", choices=["train", "dev", "test"])
    ev.add_argument("--tasks", nargs="+", help="subset of the model's tasks")
    ev.add_argument("--data-root", default="../shared/data", help="folder holding one folder per corpus")
    ev.add_argument("--data-dir", help="folder holding the split files of every task (overrides --data-root)")
    ev.add_argument("--source", default="local", choices=["local", "hub"])
    ev.add_argument("--strict", action="store_true", help="strict span matching instead of conlleval's")
    ev.add_argument("--batch-size", type=int, default=256)
    ev.add_argument("--output", help="write the results as JSON here")
    ev.set_defaults(run=_evaluate)

    tag = sub.add_parser("tag", help="tag whitespace-tokenised text, one sentence per line")
    tag.add_argument("model", help="model folder")
    tag.add_argument("input", nargs="?", default="-", help="text file, or - for stdin (default)")
    tag.add_argument("--tasks", nargs="+", help="subset of the model's tasks")
    tag.add_argument("--format", default="conll", choices=["conll", "json"])
    tag.add_argument("--batch-size", type=int, default=256)
    tag.set_defaults(run=_tag)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"sparseshare {args.command}: error: {err}") from None
    finally:
        _close_process_group()


def _close_process_group():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
