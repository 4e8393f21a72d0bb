"""``sparseshare train | train-sparse | masks show | routing show | evaluate | tag | push | export``."""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import SparseshareError


def command_line() -> str:
    """How this process was started, for the model card: ``python recipes/train.py ...`` or ``sparseshare ...``."""
    program, rest = sys.argv[0], sys.argv[1:]
    if program.endswith(".py") and Path(program).name != "cli.py":
        return shlex.join(["python", os.path.relpath(program), *rest])
    return shlex.join(["sparseshare", *rest])


def _train(args):
    from .config import load_config
    from .recipes.train import run_training

    config = load_config(args.config, args.overrides)
    run_training(config, resume=args.resume, overwrite=args.overwrite, command=command_line(), config_file=args.config)


def _train_sparse(args):
    from .config import load_config
    from .recipes.train_sparse import run_sparse

    config = load_config(args.config, args.overrides)
    run_sparse(config, resume=args.resume, overwrite=args.overwrite, command=command_line(), config_file=args.config)


def _masks_show(args):
    from .model import MultiTaskTagger
    from .sharing.sparse import SparseSharing
    from .sharing.masks import draw_overlap, format_report, model_statistics

    model = MultiTaskTagger.from_pretrained(args.model)
    if not isinstance(model.sharing, SparseSharing):
        raise ValueError(f"{args.model} uses {model.config.sharing!r} sharing: it has no task masks")
    _print(format_report(model.sharing.masks, model_statistics(model)["parameters"]))
    if args.png:
        _print(f"wrote {draw_overlap(model.sharing.masks, args.png)}")


def _routing_show(args):
    from .hub import resolve_model_folder
    from .sharing.routing import draw_routing_map, format_routing_map, load_routing_map

    source = Path(args.model)  # a routing.json of its own (e.g. a benchmark record), else a model folder / repo id
    routing = load_routing_map(source if source.is_file() else resolve_model_folder(args.model))
    _print(format_routing_map(routing, args.epoch))
    if args.png:
        _print(f"wrote {draw_routing_map(routing, args.png, args.epoch)}")


def _evaluate(args):
    from .data.corpus import load_split
    from .metrics import format_table
    from .model import MultiTaskTagger
    from .evaluation import evaluate

    _check_output_paths(args)
    model = MultiTaskTagger.from_pretrained(args.model)
    datasets_by_task = {
        task: load_split(model.tasks[task], args.split, source=args.source,
                         data_dir=args.data_dir or Path(args.data_root) / model.tasks[task].corpus)
        for task in model.check_tasks(args.tasks)
    }
    predicted: dict[str, list] = {}
    results = evaluate(model, datasets_by_task, args.batch_size, strict=args.strict, predictions=predicted)
    print(f"{args.split}:\n{format_table(results)}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=1))
        print(f"wrote {args.output}")
    if args.predictions:
        for task, dataset in datasets_by_task.items():
            path = write_conll_predictions(Path(args.predictions) / f"{args.split}.{task}.conll", dataset["tokens"],
                                           dataset["labels"], predicted[task], compress=args.gzip)
            print(f"wrote {path}")


def _check_output_paths(args) -> None:
    """Before the model is loaded and the data scored: an output that cannot be written would lose that work."""
    if args.output and Path(args.output).is_dir():
        raise ValueError(f"--output {args.output} is a directory; give a file name for the JSON results")
    if args.predictions and Path(args.predictions).exists() and not Path(args.predictions).is_dir():
        raise ValueError(f"--predictions {args.predictions} is a file; give a folder for the prediction files")
    for option, path in (("--output", args.output), ("--predictions", args.predictions)):
        parent = next((p for p in Path(path).absolute().parents if p.exists()), None) if path else None
        if parent is not None and not parent.is_dir():
            raise ValueError(f"{option} {path}: {parent} is a file, not a folder")


def write_conll_predictions(path: Path, tokens, gold, predicted, compress: bool = False) -> Path:
    """conlleval's input: ``token gold predicted`` a line, a blank line after each sentence (``.gz`` with
    ``compress``), so that any scorer can check the scores. A token with whitespace in it (CoNLL-U allows
    ``New York``) is written with ``_`` for each run of it, so that every line keeps three fields."""
    import gzip

    lines = []
    for sentence, gold_tags, tags in zip(tokens, gold, predicted):
        lines += [f"{'_'.join(t.split())} {g} {p}" for t, g, p in zip(sentence, gold_tags, tags)] + [""]
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# `tag` reads, tags and writes this many non-blank input lines at a time
TAG_CHUNK_LINES = 2048


def _read_lines(path: str) -> Iterator[tuple[int, str]]:
    """The non-blank lines of a UTF-8 text file or stdin (``-``), with their line numbers, read as they come (a
    large file is never held whole). Lines end at LF, CRLF or CR; a leading byte-order mark is dropped; bytes that
    are not UTF-8 text, or NUL bytes (binary input), are an error naming the line."""
    from .data.readers import decode_lines

    source = "stdin" if path == "-" else path
    if path != "-":
        if Path(path).is_dir():
            raise ValueError(f"{path} is a directory; give a text file, or - for stdin")
        if not Path(path).is_file():
            raise FileNotFoundError(f"input file not found: {path}")
    with contextlib.ExitStack() as stack:
        stream = sys.stdin.buffer if path == "-" else stack.enter_context(open(path, "rb"))
        number = 0
        for raw in stream:  # a raw line ends at LF: its own splitlines() gives what the whole data's would
            for offset, text in decode_lines(raw, source, first=number + 1):
                number = offset
                if "\x00" in text:
                    raise ValueError(f"{source}:{number}: a NUL byte; this looks like binary data, not text")
                if text.strip():
                    yield number, text


def _tag(args):
    from .text import blank_token
    from .tagger import Tagger

    tagger = Tagger.from_pretrained(args.model)
    tasks = tagger.model.check_tasks(args.tasks)
    source = "stdin" if args.input == "-" else args.input
    n_lines = n_tokens = 0
    elapsed = 0.0
    # TAG_CHUNK_LINES lines at a time: memory stays bounded and the tags of a large file come as it is read
    lines = _read_lines(args.input)
    while chunk := list(itertools.islice(lines, TAG_CHUNK_LINES)):
        started = time.perf_counter()
        if args.tokenized:
            sentences = [line.split() for _, line in chunk]
            for (number, _), tokens in zip(chunk, sentences):
                for j, token in enumerate(tokens):
                    if blank_token(token):  # what tag_tokens refuses, named by the input's line
                        raise ValueError(f"{source}:{number}: token {j + 1} ({token!r}) has no visible character")
            docs = tagger.tag_tokens(sentences, tasks, batch_size=args.batch_size)
        else:
            docs = tagger([line for _, line in chunk], tasks, batch_size=args.batch_size)
        elapsed += time.perf_counter() - started
        try:
            _write_docs(args, chunk, docs, tasks)
        except BrokenPipeError:  # the reader stopped early (e.g. `| head`): nothing is wrong, and nothing more to write
            _silence_stdout()
            return
        n_lines, n_tokens = n_lines + len(docs), n_tokens + sum(len(doc) for doc in docs)
    if not n_lines:
        raise SystemExit(f"sparseshare tag: no text to tag in {source}")
    from .logs import logger

    if logger.isEnabledFor(logging.INFO):  # a progress message, which --quiet drops; on stderr, as stdout is the tags
        print(f"tagged {n_lines} lines, {n_tokens} tokens in {elapsed:.2f}s "
              f"({n_tokens / max(elapsed, 1e-9):.0f} tokens/s)", file=sys.stderr)


def _print(text: str) -> None:
    """A report on stdout; a reader that stopped early (``| head``) loses the rest of it, and the command goes on (a
    --png is still drawn) and ends without an error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        _silence_stdout()


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at the null device so that Python's final flush raises no second error."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file descriptor (a notebook, captured output)
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


def _write_docs(args, lines, docs, tasks) -> None:
    out = sys.stdout
    for (number, _), doc in zip(lines, docs):
        if args.format == "json":  # blank lines are skipped: "line" maps an object back to its input line
            out.write(json.dumps({"line": number, **doc.to_dict()}, ensure_ascii=False) + "\n")
            continue
        for start, end in doc.sentences:  # CoNLL: one block per sentence, one column per task
            for j in range(start, end):
                out.write("\t".join([doc.tokens[j]] + [doc.tags[t][j] for t in tasks]) + "\n")
            out.write("\n")
    out.flush()  # inside the caller's try: a reader gone before the last bytes is a broken pipe too


def _push(args):
    from .hub import hub_errors_reported, push_folder
    from .model import MultiTaskTagger

    MultiTaskTagger.from_pretrained(args.model)  # only a folder that loads is uploaded, and as it is on disk
    with hub_errors_reported(f"could not upload {args.model} to {args.repo_id}"):  # main() prints it in one line
        commit = push_folder(Path(args.model), args.repo_id, private=args.private or None, token=args.token,
                             commit_message=args.message, revision=args.revision)
    print(f"pushed {args.model} to {getattr(commit, 'commit_url', commit)}")


def _export(args):
    from .export import export_task
    from .model import MultiTaskTagger

    out = export_task(MultiTaskTagger.from_pretrained(args.model), args.task, args.output)
    print(f"wrote {out}: load it with transformers.pipeline('token-classification', model='{out}')")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparseshare", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help=f"show the whole traceback of an error instead of one line (or set {DEBUG_VARIABLE}=1)")
    _add_verbosity(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model from a YAML config")
    train.add_argument("--config", help="YAML config (recipes/configs/*.yaml)")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run in output_dir (its checkpoints, model and results) instead of refusing")
    train.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. data.dir=../shared/data/conll2003")
    train.set_defaults(run=_train)

    sparse = sub.add_parser("train-sparse", help="the sparse-sharing pipeline: warm-up, mask search, joint training")
    sparse.add_argument("--config", help="YAML config (recipes/configs/*sparse*.yaml)")
    sparse.add_argument("--resume", action="store_true", help="continue the pipeline in output_dir where it stopped")
    sparse.add_argument("--overwrite", action="store_true",
                        help="replace the pipeline's outputs in output_dir instead of refusing")
    sparse.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. sparse.rounds=3")
    sparse.set_defaults(run=_train_sparse)

    masks = sub.add_parser("masks", help="inspect the task masks of a sparse model")
    masks_sub = masks.add_subparsers(dest="masks_command", required=True)
    show = masks_sub.add_parser("show", help="densities, overlap ratios and parameter counts")
    show.add_argument("model", help="model folder")
    show.add_argument("--png", help="also draw the overlap-ratio heatmap into this PNG file")
    show.set_defaults(run=_masks_show)

    routing = sub.add_parser("routing", help="inspect the routing map of a routing-network model")
    routing_sub = routing.add_subparsers(dest="routing_command", required=True)
    show = routing_sub.add_parser("show", help="the share of each task's sentences routed through each block")
    show.add_argument("model", help="model folder, Hub repo id or routing.json file")
    show.add_argument("--png", help="also draw the map (one heatmap per task, and the shares over the epochs) into "
                                    "this PNG file")
    show.add_argument("--epoch", type=int, help="show this epoch's shares (1-based; default: the last epoch)")
    show.set_defaults(run=_routing_show)

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
    ev.add_argument("--predictions", metavar="DIR",
                    help="write <split>.<task>.conll here per task: 'token gold predicted' a line, a blank line "
                         "between sentences (conlleval's input)")
    ev.add_argument("--gzip", action="store_true", help="with --predictions: write .conll.gz files")
    ev.set_defaults(run=_evaluate)

    tag = sub.add_parser("tag", help="tag raw text (one text per line) or whitespace-tokenised sentences")
    tag.add_argument("model", help="model folder or Hub repo id")
    tag.add_argument("input", nargs="?", default="-", help="text file, or - for stdin (default)")
    tag.add_argument("--tokenized", action="store_true",
                     help="each line is one sentence of whitespace-separated tokens, tagged as is")
    tag.add_argument("--tasks", nargs="+", help="subset of the model's tasks")
    tag.add_argument("--format", default="conll", choices=["conll", "json"],
                     help="conll: token + one column per task, a blank line after each sentence; "
                          "json: one object per non-blank input line with its line number, tokens, offsets, tags "
                          "and spans")
    tag.add_argument("--batch-size", type=int, default=256)
    tag.set_defaults(run=_tag)

    push = sub.add_parser("push", help="upload a model folder to the Hugging Face Hub")
    push.add_argument("model", help="model folder (uploaded as it is, model card included)")
    push.add_argument("repo_id", help="e.g. your-name/conll03-sparse")
    push.add_argument("--private", action="store_true")
    push.add_argument("--token", help="Hub token (default: the one saved by `hf auth login` or HF_TOKEN)")
    push.add_argument("--message", default="Upload sparseshare model", help="commit message")
    push.add_argument("--revision", help="an existing branch to push to (default: main)")
    push.set_defaults(run=_push)

    export = sub.add_parser("export", help="write one task of a Transformer model as a plain transformers "
                                           "AutoModelForTokenClassification folder")
    export.add_argument("model", help="model folder or Hub repo id")
    export.add_argument("output", help="folder to write")
    export.add_argument("--task", required=True, help="the task to export, e.g. ner")
    export.set_defaults(run=_export)
    nested = [parser for command in sub.choices.values() for action in command._actions
              if isinstance(action, argparse._SubParsersAction) for parser in action.choices.values()]
    for command in [*sub.choices.values(), *nested]:  # also after the command (recipes/train.py passes them there)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the whole traceback of an error instead of one line")
        _add_verbosity(command, default=argparse.SUPPRESS)
    return parser


def _add_verbosity(parser: argparse.ArgumentParser, default=None) -> None:
    """--quiet / --verbose: the level of the ``sparseshare`` logger (sparseshare/logs.py)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quiet", "-q", dest="verbosity", action="store_const", const="WARNING", default=default,
                       help="only warnings and errors, no progress messages")
    group.add_argument("--verbose", "-v", dest="verbosity", action="store_const", const="DEBUG", default=default,
                       help="also the debugging messages")


DEBUG_VARIABLE = "SPARSESHARE_DEBUG"


def main(argv: list[str] | None = None) -> None:
    """Run a command; an error it expects (a bad input, a missing file, a full disk, an unreachable Hub, a refused
    token, a diverged training) ends it with one line and exit status 1, never a traceback (``--debug`` or
    ``SPARSESHARE_DEBUG=1``: the traceback, for a bug report)."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    # argparse takes a positional list in one piece: overrides after --overwrite or --resume come back unparsed
    if unknown and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in unknown):
        args.overrides = [*args.overrides, *unknown]
    elif unknown:
        parser.parse_args(sys.argv[1:] if argv is None else argv)  # argparse's own error, from the subcommand
    from .hub import describe_network_error, network_errors, one_line

    debug = args.debug or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    from .logs import logger

    level = logger.level
    if args.verbosity:
        logger.setLevel(args.verbosity)
    try:
        args.run(args)
    # SparseshareError: every error of ours (a diverged training among them); OSError: a missing file, a directory
    # for a file; ValueError: a bad value that Python or a library found
    except (SparseshareError, ValueError, OSError) as err:
        if debug:
            raise
        raise SystemExit(f"sparseshare {args.command}: error: {one_line(err)}") from None
    except network_errors() as err:  # the HTTP client's own errors (not OSErrors), from a call hub.py does not make
        if debug:
            raise
        raise SystemExit(f"sparseshare {args.command}: error: {describe_network_error(err)}") from None
    finally:
        logger.setLevel(level)  # main() may be called again in this process (tests, notebooks)
        _close_process_group()


def _close_process_group():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
