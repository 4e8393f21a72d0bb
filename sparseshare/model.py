"""The multi-task tagger: featurizer -> sharing strategy (owning the encoder) -> one head per task.

A saved model is a folder of JSON and safetensors files only (no pickle)::

    config.json          model + task settings, format version
    vocab.json           word and character vocabularies
    labels.json          label list per task (in the scheme the head decodes)
    model.safetensors    all weights
    masks.safetensors    sparse sharing only: the task masks (see sharing/sparse.py)
    routing.json         routing networks only: the routing map (see sharing/routing/)
    encoder/             Transformer encoders only: the HF config and tokenizer files
    README.md            the model card (sparseshare/card.py)

The same folder is a Hugging Face Hub model repository: ``from_pretrained`` takes a folder or a Hub id,
``push_to_hub`` uploads what ``save_pretrained`` writes.
"""
from __future__ import annotations

import dataclasses
import operator
import re
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from . import __version__
from . import model_folder
from .config import ModelConfig, model_config_dict
from .data.batching import Batch, Featurizer, bucketed_batches
from .data.schemes import convert
from .data.vocab import Vocab
from .encoders import encoder_kind
from .errors import InvalidModelFolderError, ModelFolderError  # ModelFolderError: importable from here, as before
from .files import save_json
from .heads import build_head
from .sharing import build_strategy
from .tasks import TaskSpec
from .text import blank_token

FORMAT_VERSION = model_folder.FORMAT_VERSION  # the version from_pretrained reads
REQUIRED_FILES = ("config.json", "vocab.json", "labels.json", "model.safetensors")

# Forward passes change modules while they run (the BiLSTM's CPU path and sparse sharing substitute weights with
# torch.func.functional_call, Transformer stand-in layers are switched to the active task, routes and roaming
# gates are set per batch), so two threads predicting with one model at once would read each other's weights.
# Inference therefore holds one lock per model (kept outside the module, so that copying or pickling a model
# never meets a lock); threads wanting parallel throughput give one call many texts, or use one model each.
_INFERENCE_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def inference_lock(model: nn.Module) -> threading.RLock:
    with _LOCKS_GUARD:
        lock = _INFERENCE_LOCKS.get(model)
        if lock is None:
            lock = _INFERENCE_LOCKS[model] = threading.RLock()
        return lock


def check_token_lists(sentences) -> None:
    """``sentences`` is a list of lists of str tokens, none of them blank: a str where a token list should be would
    otherwise be tagged character by character. An empty sentence is the caller's to allow or refuse."""
    if not _list_like(sentences):
        raise TypeError(f"sentences must be a list of token lists, got {type(sentences).__name__}")
    for i, sentence in enumerate(sentences):
        if not _list_like(sentence):
            raise TypeError(f"sentences[{i}] must be a list of str tokens, got {type(sentence).__name__}")
        for j, token in enumerate(sentence):
            if not isinstance(token, str):
                raise TypeError(f"sentences[{i}][{j}] must be a str, got {type(token).__name__}")
            if blank_token(token):
                raise ValueError(f"sentences[{i}][{j}] = {token!r}: a token must contain a non-space character that "
                                 f"is visible")


def _list_like(value) -> bool:
    """A list, a tuple, a numpy array, ...: indexable with a length, and not a str (whose items are characters)."""
    if isinstance(value, (str, bytes)):
        return False
    return isinstance(value, Sequence) or (hasattr(value, "__len__") and hasattr(value, "__getitem__"))


def check_batch_size(batch_size) -> int:
    """``batch_size`` as an int (a numpy integer too); a float or a bool is an error, as is a size below 1."""
    if isinstance(batch_size, bool):
        raise TypeError("batch_size must be an int, got bool")
    try:
        batch_size = operator.index(batch_size)
    except TypeError:
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}") from None
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return batch_size


class MultiTaskTagger(nn.Module):
    def __init__(self, config: ModelConfig, tasks: list[TaskSpec], labels: dict[str, list[str]], words: Vocab,
                 chars: Vocab, lowercase: bool = True, normalize_digits: bool = False,
                 pretrained_embeddings: torch.Tensor | None = None, checkpoint_parts: tuple | None = None,
                 transformer_parts: tuple | None = None):
        """``pretrained_embeddings`` (BiLSTM only) initialises the word embeddings, one row per ``words`` entry;
        ``checkpoint_parts`` = (tokenizer, model) builds a pretrained encoder (a Transformer) from loaded objects
        (``transformer_parts``: its name before the encoder registry)."""
        super().__init__()
        self.config = config
        self.tasks = {spec.name: spec for spec in tasks}
        self.labels = {name: list(labels[name]) for name in self.tasks}
        self.featurizer = Featurizer(words, chars, lowercase, normalize_digits)
        self.info: dict = {}  # scores, command and training config shown in the model card

        parts = checkpoint_parts if checkpoint_parts is not None else transformer_parts

        def build_encoder():
            return encoder_kind(config.encoder).build(config, len(words), len(chars), pretrained_embeddings, parts)

        self.sharing = build_strategy(build_encoder, list(self.tasks), config)
        self.heads = nn.ModuleDict({
            name: build_head(config.head, self.sharing.output_dim, self.labels[name], spec.train_scheme)
            for name, spec in self.tasks.items()
        })

    # -- training -------------------------------------------------------------------------------
    def forward(self, batch: Batch, task: str, soft_targets: dict[str, torch.Tensor] | None = None,
                gold_weight: float = 1.0) -> torch.Tensor:
        """Per-sentence loss of ``task`` on ``batch``, shape (B,); with a teacher's ``soft_targets``, the mix
        ``gold_weight * loss + (1 - gold_weight) * cross-entropy to the teacher`` (training/distillation.py)."""
        features = self.sharing(batch, task)
        head = self.heads[task]
        loss = head.loss(features, batch.labels, batch.mask)
        if soft_targets is None:
            return loss
        return gold_weight * loss + (1.0 - gold_weight) * head.soft_loss(features, soft_targets, batch.mask)

    # -- inference ------------------------------------------------------------------------------
    def check_tasks(self, tasks) -> list[str]:
        if isinstance(tasks, str):
            raise TypeError(f"tasks must be a list of task names, got the string {tasks!r}; write [{tasks!r}]")
        tasks = list(self.tasks) if tasks is None else list(tasks)
        if not tasks:
            raise ValueError(f"tasks is empty; give some of {list(self.tasks)}, or None for all")
        unknown = [t for t in tasks if not isinstance(t, str) or t not in self.tasks]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; this model has {list(self.tasks)}")
        repeated = sorted({t for t in tasks if tasks.count(t) > 1})
        if repeated:
            raise ValueError(f"task(s) {repeated} listed more than once in tasks={tasks}; list each task once")
        return tasks

    @torch.inference_mode()
    def predict_batch(self, batch: Batch, tasks: list[str] | None = None,
                      head_scheme: bool = False) -> dict[str, list[list[str]]]:
        """Labels per task in each task's corpus scheme (e.g. NER trained in BIOES comes back in IOB2), or with
        ``head_scheme`` the head's own classes (BIOES), unconverted."""
        tasks = self.check_tasks(tasks)
        with inference_lock(self):
            features = self.sharing.features_for_tasks(batch, tasks)
        result = {}
        for task in tasks:
            spec, names = self.tasks[task], self.labels[task]
            ids = self.heads[task].decode(features[task], batch.mask)
            target = spec.train_scheme if head_scheme else spec.scheme
            result[task] = [convert([names[i] for i in seq], spec.train_scheme, target) for seq in ids]
        return result

    def predict(self, sentences: list[list[str]], tasks: list[str] | None = None, batch_size: int = 256,
                device: torch.device | str | None = None, head_scheme: bool = False) -> dict[str, list[list[str]]]:
        """Tag pre-tokenised sentences, in length-sorted batches, returning results in input order."""
        check_token_lists(sentences)
        return self.predict_corpus(sentences, tasks, check_batch_size(batch_size), device, head_scheme)

    def predict_corpus(self, sentences, tasks: list[str] | None = None, batch_size: int = 256,
                       device: torch.device | str | None = None, head_scheme: bool = False) -> dict[str, list[list[str]]]:
        """:meth:`predict` without its checks of the tokens, for sentences whose tokens were checked or made already:
        a corpus reader's (evaluation, each epoch's dev scoring, where a token that the reader let through must not
        stop a training after its first epoch), the Tagger's. An empty sentence is still refused."""
        tasks = self.check_tasks(tasks)
        for i, sentence in enumerate(sentences):
            if len(sentence) == 0:
                raise ValueError(f"sentence {i} is empty: nothing to tag")
        device = device or next(self.parameters()).device
        result = {task: [None] * len(sentences) for task in tasks}
        with inference_lock(self):  # held across the switch to eval mode and back
            was_training = self.training
            self.eval()
            try:
                for index in bucketed_batches([len(s) for s in sentences], batch_size, None):
                    batch = self.featurizer.collate([sentences[i] for i in index]).to(device)
                    for task, labels in self.predict_batch(batch, tasks, head_scheme).items():
                        for i, seq in zip(index, labels):
                            result[task][i] = seq
            finally:
                self.train(was_training)
        return result

    # -- persistence ----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write the model folder; ``extra`` (scores, command, training config) replaces :attr:`info` and
        goes into config.json and the model card."""
        from .card import model_card

        if extra is not None:
            self.info = dict(extra)
        extra = self.info
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        featurizer = self.featurizer
        save_json({
            "format_version": FORMAT_VERSION,
            "sparseshare_version": __version__,
            "model": model_config_dict(self.config),
            "data": {"lowercase": featurizer.lookup.lowercase, "normalize_digits": featurizer.lookup.normalize_digits},
            "tasks": {name: spec.to_dict() for name, spec in self.tasks.items()},
            **({"info": extra} if extra else {}),
        }, directory / "config.json")
        save_json({"words": featurizer.lookup.vocab.to_dict(), "chars": featurizer.chars.to_dict()},
                  directory / "vocab.json")
        save_json(self.labels, directory / "labels.json")
        save_model(self, str(directory / "model.safetensors"))
        for stale in model_folder.other_strategies_files(self.sharing):  # left by a model saved here before
            (directory / stale).unlink(missing_ok=True)
        self.sharing.save_files(directory)
        encoder_kind(self.config.encoder).save_files(self, directory)
        model_card(self, self.info).save(directory / "README.md")
        return directory

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload sparseshare model", revision: str | None = None):
        """Upload the model folder (as :meth:`save_pretrained` writes it) to the Hub in one commit."""
        from .hub import push_to_hub

        return push_to_hub(self, repo_id, private=private, token=token, commit_message=commit_message,
                           revision=revision)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | torch.device = "cpu", *,
                        revision: str | None = None, cache_dir: str | Path | None = None,
                        local_files_only: bool = False, token: str | bool | None = None) -> "MultiTaskTagger":
        """Load a model folder, or a Hub repo id (downloaded with ``huggingface_hub.snapshot_download``:
        JSON, safetensors and tokenizer files only)."""
        from .hub import resolve_model_folder

        directory = resolve_model_folder(name_or_path, revision=revision, cache_dir=cache_dir,
                                         local_files_only=local_files_only, token=token)
        missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
        if missing:
            raise ModelFolderError(f"model folder {directory} is missing {', '.join(missing)}")
        # every file is checked, by type, range and against the others, before it is used (model_folder.py)
        contents = model_folder.read_json_files(directory)
        weights = directory / "model.safetensors"
        header = model_folder.read_header(weights)
        model_folder.check_sizes(directory, contents, header)  # nothing config.json asks for is allocated before

        def build():
            parts = encoder_kind(contents.model.encoder).load_parts(directory, header)
            return cls(contents.model, contents.tasks, contents.labels, contents.words, contents.chars,
                       contents.lowercase, contents.normalize_digits, checkpoint_parts=parts)

        model = model_folder.build_model(build, directory, contents.model.encoder)
        model_folder.check_state(model, directory, header)
        device = torch.device(device)
        try:
            # safetensors names CPU "cpu" only (a distributed run's device may read "cpu:0")
            load_model(model, str(weights), strict=True, device="cpu" if device.type == "cpu" else str(device))
        except Exception as err:  # safetensors raises several types for truncated / mismatched files
            named = re.search(r"(?:size mismatch for |Missing key\(s\) in state_dict: \")([\w.]+)", str(err))
            raise InvalidModelFolderError(f"{weights}: cannot load weights ({err})", path=str(weights),
                                          key=named.group(1) if named else None) from err
        model_folder.check_values(model, directory, header)
        model_folder.load_strategy_files(model, directory)
        model.info = contents.info
        return model.to(device).eval()
