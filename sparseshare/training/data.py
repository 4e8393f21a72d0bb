"""The data side of a run: each task's corpora (train converted to the training scheme, dev/test as read), the
model built from the config and the training words' vocabulary, and the input files a config names."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import Config, ConfigError
from ..data.corpus import load_split
from ..data.schemes import convert
from ..data.vocab import (Vocab, WordLookup, build_char_vocab, build_label_vocab, build_word_vocab,
                          embedding_matrix, read_word_vectors)
from ..encoders import encoder_kind
from ..model import MultiTaskTagger
from ..tasks import TaskSpec, is_task_file, load_task


@dataclass
class TaskData:
    spec: TaskSpec
    labels: Vocab  # in the train scheme
    train_tokens: list[list[str]]
    train_labels: list[list[int]]
    dev: object  # datasets.Dataset with tokens / labels (corpus scheme)
    test: object | None  # None when the corpus has no test split here
    train_word_ids: list = field(default_factory=list)  # word ids of the training sentences, computed once

def task_dir(config: Config, spec: TaskSpec) -> str:
    data = config.data
    return data.task_dirs.get(spec.name) or data.dir or str(Path(data.root) / spec.corpus)


def task_specs(config: Config) -> list[TaskSpec]:
    """The run's tasks, built-in names or task-file paths, as specs. A run's data, models and output folders know
    a task by its spec's name (a task file's ``name:``, not its path), so no two may share one."""
    specs = [load_task(entry) for entry in config.tasks]
    names = [spec.name for spec in specs]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:
        raise ConfigError(f"config key 'tasks': {config.tasks} gives two tasks named {twice!r}; a task file's "
                          f"'name:' must differ from the other tasks' names")
    return specs


def task_names(config: Config) -> list[str]:
    """The names the run knows its tasks by (a task file's ``name:``), in the order of ``tasks``."""
    return [spec.name for spec in task_specs(config)]


logger = logging.getLogger(__name__)


def load_task_data(config: Config) -> dict[str, TaskData]:
    result = {}
    for spec in task_specs(config):
        options = dict(source=config.data.source, data_dir=task_dir(config, spec),
                       hub_path=config.data.hub_paths.get(spec.name))
        train = load_split(spec, "train", **options)
        if config.data.max_train_sentences:
            train = train.select(range(min(len(train), config.data.max_train_sentences)))
        dev = load_split(spec, "dev", **options)
        try:
            test = load_split(spec, "test", **options)
        except FileNotFoundError as err:
            logger.info(f"[{spec.name}] no test split: {err}")
            test = None
        tokens = list(train["tokens"])  # plain lists: indexed per batch, Arrow access would be slow
        labels = [convert(seq, spec.scheme, spec.train_scheme) for seq in train["labels"]]
        vocab = build_label_vocab(labels)
        ids = [[vocab[t] for t in seq] for seq in labels]
        result[spec.name] = TaskData(spec, vocab, tokens, ids, dev, test)
        logger.info(f"[{spec.name}] train {len(tokens)} / dev {len(dev)} / test {len(test) if test is not None else '-'} "
                    f"sentences, {len(vocab)} labels ({spec.train_scheme})")
    return result

def build_model(config: Config, data: dict[str, TaskData]) -> MultiTaskTagger:
    all_train = [s for d in data.values() for s in d.train_tokens]
    bilstm = config.model.bilstm
    matrix = None
    if encoder_kind(config.model.encoder).word_features:
        vectors_words, vectors = (read_word_vectors(bilstm.embeddings, "model.bilstm.embeddings")
                                  if bilstm.embeddings else ([], None))
        if vectors is not None and vectors.shape[1] != bilstm.word_dim:
            raise ValueError(f"config key 'model.bilstm.word_dim' is {bilstm.word_dim} but {bilstm.embeddings} "
                             f"has {vectors.shape[1]}-d vectors")
        words = build_word_vocab(all_train, vectors_words, config.data.min_word_count, config.data.lowercase,
                                 config.data.normalize_digits)
        chars = build_char_vocab(all_train)
        if vectors is not None:
            lookup = WordLookup(words, config.data.lowercase, config.data.normalize_digits)
            matrix = torch.from_numpy(embedding_matrix(lookup, vectors_words, vectors, seed=config.train.seed))
    else:  # the encoder tokenises the words itself (e.g. a Transformer's subwords)
        words, chars = Vocab([]), Vocab([])
    model = MultiTaskTagger(config.model, [d.spec for d in data.values()],
                            {name: d.labels.itos for name, d in data.items()}, words, chars,
                            config.data.lowercase, config.data.normalize_digits, pretrained_embeddings=matrix)
    add_word_ids(model, data)
    return model

def add_word_ids(model: MultiTaskTagger, data: dict[str, TaskData]) -> None:
    """Word ids of the training sentences in ``model``'s vocabulary, computed once per run."""
    for d in data.values():
        if len(d.train_word_ids) != len(d.train_tokens):
            d.train_word_ids = [model.featurizer.word_ids(s) for s in d.train_tokens]


def run_inputs(config: Config, config_file: str | Path | None = None) -> dict[Path, str]:
    """Every file or folder a run reads (path -> what it is): its config file, task files, corpora, word vectors,
    masks, distillation teachers, a local encoder. A run never deletes or replaces one of them
    (``run_folder.check_inputs_kept``); the recipes ask here and nowhere else, so an input added to the config is
    protected by adding it to this list."""
    inputs: dict[Path, str] = {}

    def add(path, what: str) -> None:
        if path:
            inputs.setdefault(Path(path), what)

    add(config_file, "the config file")
    for entry in config.tasks:
        if is_task_file(entry):
            add(entry, "a task file")
    for spec in task_specs(config):
        if config.data.source == "local":
            for split, name in spec.files.items():
                add(Path(task_dir(config, spec)) / name, f"the {split} file of task {spec.name!r}")
        else:
            hub_path = config.data.hub_paths.get(spec.name)
            if hub_path and Path(hub_path).exists():  # a local dataset folder, not a Hub id
                add(hub_path, f"config key 'data.hub_paths.{spec.name}'")
    for key, path in encoder_kind(config.model.encoder).inputs(config.model).items():
        add(path, f"config key {key!r}")
    add(config.sparse.masks, "config key 'sparse.masks'")
    for task, folder in config.train.distill_from.items():
        add(folder, f"config key 'train.distill_from.{task}'")
    return inputs


def check_input_files(config: Config) -> None:
    """Files the config names, checked by key before any corpus is read (which can take a while)."""
    for task, folder in config.train.distill_from.items():
        if not (Path(folder) / "config.json").is_file():
            raise FileNotFoundError(f"config key 'train.distill_from.{task}': {folder} is not a model folder "
                                    f"(no config.json)")
    files = {"sparse.masks": config.sparse.masks, **encoder_kind(config.model.encoder).input_files(config.model)}
    for key, path in files.items():
        if path is None:
            continue
        if Path(path).is_dir():
            raise FileNotFoundError(f"config key {key!r}: {path} is a directory, not a file")
        if not Path(path).is_file():
            raise FileNotFoundError(f"config key {key!r}: file not found: {path}")
