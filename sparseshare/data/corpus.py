"""Load a task's splits as ``datasets.Dataset`` with the columns ``tokens`` and ``labels`` (strings).

Local files and Hub datasets give the same schema, so everything downstream is source-agnostic.
"""
from __future__ import annotations

import functools
from pathlib import Path

import datasets
import numpy as np

from ..tasks import TaskSpec
from .readers import READERS, CorpusFormatError

SPLITS = ("train", "dev", "test")


@functools.lru_cache(maxsize=16)
def _read_cached(reader_name: str, path: str, columns: tuple[str, ...]) -> tuple:
    # POS, chunk and NER read the same CoNLL-2003 file: read it once per process.
    return tuple(READERS[reader_name](path, list(columns)))


def _rows_to_dataset(rows, label_column: str) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {"tokens": [r["tokens"] for r in rows], "labels": [r[label_column] for r in rows]}
    )


def _carve_dev(train: datasets.Dataset, spec: TaskSpec) -> tuple[datasets.Dataset, datasets.Dataset]:
    carve = spec.dev_from_train
    order = np.random.default_rng(carve.seed).permutation(len(train))
    n_dev = max(1, int(round(carve.fraction * len(train))))
    dev_idx, train_idx = np.sort(order[:n_dev]), np.sort(order[n_dev:])
    return train.select(train_idx), train.select(dev_idx)


def load_local_split(spec: TaskSpec, data_dir: str | Path, split: str) -> datasets.Dataset:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if split == "dev" and "dev" not in spec.files:
        return _carve_dev(load_local_split(spec, data_dir, "train"), spec)[1]
    if split not in spec.files:
        raise FileNotFoundError(f"task {spec.name!r} has no {split} split (files: {spec.files})")
    path = Path(data_dir) / spec.files[split]
    if not path.is_file():
        raise FileNotFoundError(f"task {spec.name!r}: {split} split file not found: {path}")
    rows = _read_cached(spec.format, str(path), tuple(spec.columns))
    dataset = _rows_to_dataset(rows, spec.label_column)
    if split == "train" and spec.dev_from_train is not None and "dev" not in spec.files:
        dataset = _carve_dev(dataset, spec)[0]
    return dataset


def load_hub_split(spec: TaskSpec, split: str, path_or_id: str | None = None) -> datasets.Dataset:
    """Load a split with ``datasets.load_dataset`` from a Hub id (or a local dataset folder, same code path).

    Integer ``ClassLabel`` sequences are mapped back to their string names.
    """
    if spec.hub is None:
        raise ValueError(f"task {spec.name!r} declares no Hub dataset; use local files (data.source=local)")
    hub = spec.hub
    if split == "dev" and "dev" not in hub.splits:
        return _carve_dev(load_hub_split(spec, "train", path_or_id), spec)[1]
    if split not in hub.splits:
        raise ValueError(f"task {spec.name!r}: Hub dataset {hub.id} has no {split} split mapping ({hub.splits})")
    raw = datasets.load_dataset(path_or_id or hub.id, hub.config, split=hub.splits[split], revision=hub.revision)
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
    dataset = datasets.Dataset.from_dict({"tokens": tokens, "labels": labels})
    if split == "train" and "dev" not in hub.splits and spec.dev_from_train is not None:
        dataset = _carve_dev(dataset, spec)[0]
    return dataset


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
