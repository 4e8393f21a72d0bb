"""Load a task's splits as ``datasets.Dataset`` with the columns ``tokens`` and ``labels`` (strings).

Local files and Hub datasets give the same schema, so everything downstream is source-agnostic.
"""
from __future__ import annotations

import functools
from pathlib import Path

import datasets
import numpy as np
from datasets.exceptions import DatasetNotFoundError

from ..errors import SparseshareError
from ..hub import hub_errors_reported
from ..tasks import TaskSpec
from .readers import READERS, CorpusFormatError
from .schemes import first_invalid_transition, well_formed_label

SPLITS = ("train", "dev", "test")


class MissingSplitError(SparseshareError, FileNotFoundError):
    """A task's corpus has no such split (or its file is missing)."""


def _read_cached(reader_name: str, path: str, columns: tuple[str, ...]) -> tuple:
    # POS, chunk and NER read the same CoNLL-2003 file: read it once per process (again if it changes).
    stat = Path(path).stat()
    return _read(reader_name, path, columns, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _read(reader_name: str, path: str, columns: tuple[str, ...], _mtime_ns: int, _size: int) -> tuple:
    return tuple(READERS[reader_name](path, list(columns), lines=True))


def _rows_to_dataset(rows, label_column: str) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {"tokens": [r["tokens"] for r in rows], "labels": [r[label_column] for r in rows]}
    )


def check_labels(spec: TaskSpec, split: str, labels: list[list[str]], locate) -> None:
    """Every label must have the shape of the task's scheme (``O``, ``B-PER``; not ``-X-``), and the training
    labels must be well formed (the CRF forbids ill-formed transitions, so training on them would silently fight a
    -1e4 penalty). ``locate(i, j)`` names where token j of sentence i comes from (``file:line``)."""
    if spec.scheme == "none":
        return
    for i, seq in enumerate(labels):
        for j, label in enumerate(seq):
            if not well_formed_label(label, spec.scheme):
                raise CorpusFormatError(locate(i, j), None, f"task {spec.name!r}: label {label!r} is not a "
                                        f"{spec.scheme.upper()} label (O, or a prefix and a type such as B-PER)")
    if split != "train" or spec.scheme not in ("iob2", "bioes"):
        return
    bad = [(i, j) for i, seq in enumerate(labels) if (j := first_invalid_transition(seq, spec.scheme)) is not None]
    if bad:
        i, j = bad[0]
        seq = labels[i]
        shown = f"{seq[j - 1] if j else '<s>'} -> {seq[j] if j < len(seq) else '</s>'}"
        raise CorpusFormatError(locate(i, min(j, len(seq) - 1)), None,
                                f"task {spec.name!r}: {len(bad)} training sentence(s) are not valid "
                                f"{spec.scheme.upper()}; the first is sentence {i} ({shown} at token {j}). If the "
                                f"corpus uses IOB1, set 'scheme: iob1' in the task file")


def _carve_dev(train: datasets.Dataset, spec: TaskSpec) -> tuple[datasets.Dataset, datasets.Dataset]:
    carve = spec.dev_from_train
    order = np.random.default_rng(carve.seed).permutation(len(train))
    n_dev = max(1, int(round(carve.fraction * len(train))))
    if n_dev >= len(train):
        raise ValueError(f"task {spec.name!r}: task key 'dev_from_train.fraction' = {carve.fraction} of "
                         f"{len(train)} training sentence(s) leaves none to train on")
    dev_idx, train_idx = np.sort(order[:n_dev]), np.sort(order[n_dev:])
    return train.select(train_idx), train.select(dev_idx)


def _split_or_carve(split: str, has_dev: bool, spec: TaskSpec, read) -> datasets.Dataset:
    """``read(split)`` gives a split as stored; without a stored dev split, train is divided into train + dev."""
    if has_dev or split == "test" or spec.dev_from_train is None:
        return read(split)
    train, dev = _carve_dev(read("train"), spec)
    return train if split == "train" else dev


def load_local_split(spec: TaskSpec, data_dir: str | Path, split: str) -> datasets.Dataset:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")

    def read(name):
        if name not in spec.files:
            raise MissingSplitError(f"task {spec.name!r} has no {name} split (files: {spec.files})")
        path = Path(data_dir) / spec.files[name]
        if not path.exists():
            raise MissingSplitError(f"task {spec.name!r}: {name} split file not found: {path}")
        rows = _read_cached(spec.format, str(path), tuple(spec.columns))
        check_labels(spec, name, [r[spec.label_column] for r in rows], lambda i, j: f"{path}:{rows[i]['lines'][j]}")
        return _rows_to_dataset(rows, spec.label_column)

    return _split_or_carve(split, "dev" in spec.files, spec, read)


def load_hub_split(spec: TaskSpec, split: str, path_or_id: str | None = None) -> datasets.Dataset:
    """Load a split with ``datasets.load_dataset`` from a Hub id (or a local dataset folder, same code path).

    Integer ``ClassLabel`` sequences are mapped back to their string names.
    """
    if spec.hub is None:
        raise ValueError(f"task {spec.name!r} declares no Hub dataset; use local files (data.source=local)")
    hub = spec.hub
    return _split_or_carve(split, "dev" in hub.splits, spec, lambda name: _read_hub(spec, name, path_or_id))


def _read_hub(spec: TaskSpec, split: str, path_or_id: str | None) -> datasets.Dataset:
    hub = spec.hub
    if split not in hub.splits:
        raise MissingSplitError(f"task {spec.name!r}: Hub dataset {hub.id} has no {split} split mapping ({hub.splits})")
    source = path_or_id or hub.id
    # an unreachable Hub, a refused token or a missing dataset: one line naming the task, the dataset and the split
    with hub_errors_reported(f"task {spec.name!r}: cannot load the Hub dataset {source!r} ({split} split)",
                             DatasetNotFoundError):
        raw = datasets.load_dataset(source, hub.config, split=hub.splits[split], revision=hub.revision)
    for column in (hub.tokens_column, hub.label_column):
        if column not in raw.column_names:
            raise ValueError(f"Hub dataset {path_or_id or hub.id}: no column {column!r} (has {raw.column_names})")
    feature = raw.features[hub.label_column]
    inner = getattr(feature, "feature", None)
    names = getattr(inner, "names", None)
    tokens = raw[hub.tokens_column]
    labels = raw[hub.label_column]
    if names is not None:
        labels = [[names[i] for i in seq] for seq in labels]
    check_labels(spec, split, labels, lambda i, j: f"{path_or_id or hub.id} ({split} split, sentence {i}, token {j})")
    return datasets.Dataset.from_dict({"tokens": tokens, "labels": labels})


def load_split(spec: TaskSpec, split: str, *, source: str = "local", data_dir: str | Path | None = None,
               hub_path: str | None = None) -> datasets.Dataset:
    if source == "local":
        if data_dir is None:
            raise ValueError(f"task {spec.name!r}: no data directory given (set data.dir or data.root)")
        dataset = load_local_split(spec, data_dir, split)
    elif source == "hub":
        dataset = load_hub_split(spec, split, hub_path)
    else:
        raise ValueError(f"data.source must be 'local' or 'hub', got {source!r}")
    empty = [i for i, toks in enumerate(dataset["tokens"]) if len(toks) == 0]
    if empty:
        raise CorpusFormatError(f"{spec.name}/{split}", None, f"{len(empty)} empty sentence(s), first at index {empty[0]}")
    return dataset
