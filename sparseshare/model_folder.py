"""The checks a model folder passes before :meth:`MultiTaskTagger.from_pretrained` uses any of its files.

Each file is checked by type, range and against the others; every problem is an
:class:`~sparseshare.errors.InvalidModelFolderError` (a ValueError) whose message names the file and the key (a JSON
key, a tensor name), and says which two files disagree when they do. A missing file stays a
:class:`~sparseshare.errors.ModelFolderError`.

- config.json: the ``model`` section goes through the training config's own reading (``config.build_dataclass``)
  and its model checks (types, choices, ranges, the sharing options), with JSON types taken strictly (no YAML-style
  ``"0.5"`` for a number or ``false`` for a string); ``data.lowercase`` and ``data.normalize_digits`` are booleans;
  each task goes through ``TaskSpec.from_dict`` (as strictly), its errors named ``tasks.<name>.<key>``. The ``info`` section only feeds the
  model card: a value of the wrong type there is dropped with a warning, never a reason to refuse the model.
- labels.json: one list per task of config.json and no other, of distinct non-empty strings that fit the task's train
  scheme (``O`` or ``B-``/``I-``/``E-``/``S-`` + a type), as many as the task's head in model.safetensors has outputs.
- vocab.json: ``words`` and ``chars``, each ``{"itos": [...], "specials": true}`` with ``<pad>`` and ``<unk>``
  first and distinct strings; words as the lookup normalises them (lowercased with data.lowercase, digits as 0 with
  data.normalize_digits), characters one each; as many entries as their embedding tables have rows.
- model.safetensors: its header (read with ``safetensors.safe_open``, no weight read) is compared with the JSON files
  twice. Before the model is built (:func:`check_sizes`), every size that scales its memory: the embedding tables'
  rows with vocab.json, each head's outputs with labels.json, and (bilstm and scratch encoders) config.json's widths,
  number of layers (routing: of blocks), routing window and agents with the tensors they shape (a Transformer's
  encoder/config.json: the encoder it describes, built on the meta device by the encoder's ``load_parts``), so that
  a config file asking for a huge model is refused before anything is allocated (an allocation that still fails
  while the model is built is an error naming config.json). After the build (:func:`check_state`), the header
  lists exactly the built model's tensors with their shapes (a module whose own loading code adapts to the file,
  such as routing's map history, decides about its own tensors as it loads) and dtypes: a floating tensor stored in
  another floating dtype (a model saved after ``.half()``) is cast as it loads; one stored as integers or booleans,
  or the reverse, is refused. After loading (:func:`check_values`): no NaN or infinity in a floating tensor, nothing but 0 and 1 in a
  boolean one.
- the sharing strategy's files (sparse sharing's masks.safetensors, sharing/masks.py ``check_masks``): their
  ``MaskError`` becomes a :class:`MaskFileError`, which is both; a missing one is a ModelFolderError; another
  strategy's file (``SharingStrategy.files``) beside config.json's ``model.sharing`` is refused.

No check can see a file rewritten into another valid one: two labels swapped, or a label renamed to a name that its
scheme allows (``B-PER`` to ``B-XYZ``; any name for a task without a span scheme), load and tag with the other names
(and, since a CRF's constraints follow the names, possibly along other paths); a word or character renamed to one
the lookup can produce makes the old one unknown; a weight changed to another finite number changes the scores.
Nothing a folder names is imported or executed here.
"""
from __future__ import annotations

import itertools
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from torch import nn

from . import __version__
from .config import (_KEY_IN_MESSAGE, ConfigError, DataConfig, ModelConfig, build_dataclass,
                     upgrade_saved_model_config, validate_model)
from .data.schemes import well_formed_label
from .data.vocab import PAD, UNK, Vocab, WordLookup
from .encoders import encoder_kind
from .errors import InvalidModelFolderError, ModelFolderError
from .files import load_json_object
from .sharing import STRATEGIES
from .sharing.masks import MaskError, holds_only_0_and_1
from .tasks import TaskSpec

FORMAT_VERSION = 1
CONFIG_KEYS = ("format_version", "sparseshare_version", "model", "data", "tasks", "info")
DATA_KEYS = ("lowercase", "normalize_digits")
INFO_TYPES = {"selected_epoch": int, "dev": dict, "test": dict, "command": str, "training_config": dict}
# safetensors' dtype names (the header's) of the dtypes a model holds
SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                      torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                      torch.uint8: "U8", torch.bool: "BOOL"}
FLOATING = {"F64", "F32", "F16", "BF16"}
Header = dict[str, tuple[str, tuple[int, ...]]]  # tensor name -> (safetensors dtype name, shape)


class MaskFileError(InvalidModelFolderError, MaskError):
    """A model folder's mask file that the sparse-sharing strategy refuses (a MaskError, as before)."""


@dataclass
class FolderContents:
    """What config.json, vocab.json and labels.json say, checked."""

    model: ModelConfig
    tasks: list[TaskSpec]
    labels: dict[str, list[str]]
    words: Vocab
    chars: Vocab
    lowercase: bool
    normalize_digits: bool
    info: dict


def invalid_file(path: Path, key: str | None, problem: str) -> InvalidModelFolderError:
    """The error to raise about ``key`` of the model folder's file ``path``; the message starts with the path."""
    return InvalidModelFolderError(f"{path}: {problem}", path=str(path), key=key)


def read_json_files(directory: Path) -> FolderContents:
    """config.json, vocab.json and labels.json, each checked on its own and against the others."""
    model, tasks, data, info = read_config(directory / "config.json")
    words, chars = read_vocab(directory / "vocab.json", WordLookup(Vocab([]), data.lowercase, data.normalize_digits))
    labels = read_labels(directory / "labels.json", tasks)
    return FolderContents(model, tasks, labels, words, chars, data.lowercase, data.normalize_digits, info)


def _read_json(path: Path) -> dict:
    try:
        return load_json_object(path)  # corrupt JSON or another value than an object: named as before
    except ValueError as err:
        raise InvalidModelFolderError(str(err), path=str(path)) from None


def _json_type(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {dict: "object", list: "array", str: "string", type(None): "null"}.get(type(value), type(value).__name__)


# -- config.json ------------------------------------------------------------------------------------------------
def read_config(path: Path) -> tuple[ModelConfig, list[TaskSpec], DataConfig, dict]:
    raw = _read_json(path)
    _check_format_version(raw, path)
    try:
        unknown = [key for key in raw if key not in CONFIG_KEYS]
        if unknown:
            raise ConfigError(f"unknown config key {unknown[0]!r}; a model folder's config.json holds "
                              f"{list(CONFIG_KEYS)}")
        for key in ("model", "data", "tasks"):
            if not isinstance(raw.get(key), dict):
                raise ConfigError(f"config key {key!r} must be a JSON object, got {_json_type(raw.get(key))}"
                                  + ("" if key in raw else " (the key is missing)"))
        if not isinstance(raw.get("sparseshare_version", ""), str):
            raise ConfigError(f"config key 'sparseshare_version' must be a string, got {raw['sparseshare_version']!r}")
        # strict: config.json was written from typed values, so a value YAML's lenient reading would convert ("1e-3"
        # as a number, yes as a string, a null section as the defaults) is of a wrong type
        model = build_dataclass(ModelConfig, upgrade_saved_model_config(raw["model"]), "model", strict=True)
        data = _read_data(raw["data"])
        tasks = [_read_task(name, spec) for name, spec in raw["tasks"].items()]
        validate_model(model, [task.name for task in tasks])  # the training config's checks of the model section
    except (ValueError, TypeError) as err:  # ConfigError; TypeError: a value that a check could not compare
        found = _KEY_IN_MESSAGE.search(str(err))
        raise InvalidModelFolderError(f"{path}: {err}", path=str(path), key=found.group(1) if found else None) from None
    return model, tasks, data, _read_info(raw.get("info", {}), path)


def _check_format_version(raw: dict, path: Path) -> None:
    version = raw.get("format_version")
    if type(version) is int and version == FORMAT_VERSION:  # not True, not 1.0
        return
    written_by = raw.get("sparseshare_version", "an unknown version")
    newer = type(version) is int and version > FORMAT_VERSION
    advice = ("upgrade sparseshare (pip install -U sparseshare) to load it" if newer else
              "this is not a model this sparseshare can read")
    raise InvalidModelFolderError(
        f"{path}: model folder format {version!r} (written by sparseshare {written_by}) is not supported by "
        f"sparseshare {__version__}, which reads format {FORMAT_VERSION}; {advice} (config key 'format_version')",
        path=str(path), key="format_version")


def _read_data(raw: dict) -> DataConfig:
    unknown = [key for key in raw if key not in DATA_KEYS]
    if unknown:
        raise ConfigError(f"unknown config key 'data.{unknown[0]}'; a model folder's data section holds "
                          f"{list(DATA_KEYS)}")
    for key in DATA_KEYS:
        if type(raw.get(key)) is not bool:  # bool("false") would be True
            raise ConfigError(f"config key 'data.{key}' must be true or false, got {raw.get(key)!r}"
                              + ("" if key in raw else " (the key is missing)"))
    return build_dataclass(DataConfig, raw, "data", strict=True)


def _read_task(name: str, raw) -> TaskSpec:
    where = f"tasks.{name}"
    if not isinstance(raw, dict):
        raise ConfigError(f"config key {where!r} must be a JSON object, got {_json_type(raw)}")
    try:
        spec = TaskSpec.from_dict(raw, source=where, strict=True)  # types (as strictly), choices, the task's checks
    except ValueError as err:
        # TaskSpec names the key as "task key 'k'" (after the source, and the task's name for its own checks)
        message = str(err).removeprefix(f"{where}: ").removeprefix(f"task {raw.get('name')!r}: ")
        if _KEY_IN_MESSAGE.search(message) is None:
            raise ConfigError(f"config key {where!r}: {message}") from None
        raise ConfigError(_KEY_IN_MESSAGE.sub(lambda m: f"config key '{where}.{m.group(1)}'", message, count=1)) from None
    if spec.name != name:
        raise ConfigError(f"config key '{where}.name' is {spec.name!r}, not the task's key {name!r}")
    return spec


def _read_info(info, path: Path) -> dict:
    """The scores, command and training config shown in the model card (free-form beyond the keys it reads). The
    card reads nothing else from it, so a value it cannot show is dropped with a warning; null is as good as absent."""
    def drop(key: str, value, wanted: str) -> None:
        warnings.warn(f"{path}: config key {key!r} must be {wanted}, got {value!r}; ignored (it only feeds the model "
                      f"card)")

    if not isinstance(info, dict):
        drop("info", info, "a JSON object")
        return {}
    info = dict(info)
    for key, kind in INFO_TYPES.items():
        value = info.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            drop(f"info.{key}", info.pop(key), f"a JSON {_json_type(kind())}")
    for split in ("dev", "test"):
        scores = info.get(split) or {}
        bad = [task for task, score in scores.items() if not isinstance(score, (int, float)) or isinstance(score, bool)]
        for task in bad:
            drop(f"info.{split}.{task}", scores[task], "a score (a number)")
        if bad:
            info[split] = {task: score for task, score in scores.items() if task not in bad}
    return info


# -- vocab.json -------------------------------------------------------------------------------------------------
def read_vocab(path: Path, lookup: WordLookup) -> tuple[Vocab, Vocab]:
    raw = _read_json(path)
    unknown = [key for key in raw if key not in ("words", "chars")]
    if unknown:
        raise invalid_file(path, unknown[0], f"unknown key {unknown[0]!r}; vocab.json holds 'words' and 'chars'")
    (words, joined), (chars, _) = (_read_one_vocab(path, raw, name) for name in ("words", "chars"))
    # the normalisation is applied to all words at once (it maps each character on its own, a line break to itself,
    # <pad> and <unk> to themselves); the loop only names the first word it changes
    if lookup.key(joined) != joined:
        settings = f"data.lowercase={lookup.lowercase}, data.normalize_digits={lookup.normalize_digits} in config.json"
        for index, word in enumerate(words.itos[2:], start=2):
            if lookup.key(word) != word:
                raise invalid_file(path, "words.itos", f"vocab.json and config.json disagree: key 'words.itos': item "
                                                       f"{index} ({word[:40]!r}) can never be looked up: with "
                                                       f"{settings} the lookup reads {lookup.key(word)[:40]!r}")
    for index, char in enumerate(chars.itos[2:], start=2):
        if len(char) != 1:
            raise invalid_file(path, "chars.itos", f"key 'chars.itos': item {index} ({char[:40]!r}) is not one "
                                                   f"character")
    return words, chars


def _read_one_vocab(path: Path, raw: dict, name: str) -> tuple[Vocab, str]:
    """The vocabulary, and its entries joined by line breaks."""
    section = raw.get(name)
    if not isinstance(section, dict) or set(section) != {"itos", "specials"}:
        found = "missing" if section is None else (f"an object with keys {sorted(section)}" if isinstance(section, dict)
                                                   else f"a JSON {_json_type(section)}")
        raise invalid_file(path, name, f"key {name!r} must be an object {{\"itos\": [...], \"specials\": true}}, "
                                       f"found {found}")
    if section["specials"] is not True:  # bool("false") would be True
        raise invalid_file(path, f"{name}.specials", f"key '{name}.specials' must be true (id 0 is {PAD}, id 1 {UNK}), "
                                                     f"got {section['specials']!r}")
    key, itos = f"{name}.itos", section["itos"]
    if not isinstance(itos, list):
        raise invalid_file(path, key, f"key {key!r} must be a list of strings, got a JSON {_json_type(itos)}")
    try:
        joined = "\n".join(itos)  # only strings join
    except TypeError:
        index = next(i for i, item in enumerate(itos) if not isinstance(item, str))
        raise invalid_file(path, key, f"key {key!r}: item {index} ({itos[index]!r}) is not a string") from None
    if itos[:2] != [PAD, UNK]:
        raise invalid_file(path, key, f"key {key!r} must start with {PAD!r}, {UNK!r}, found {itos[:2]}")
    vocab = Vocab.from_dict(section)
    if len(vocab.stoi) != len(itos):  # a string listed twice; the loop only names the first repeat
        first: dict[str, int] = {}
        for index, item in enumerate(itos):
            if first.setdefault(item, index) != index:
                raise invalid_file(path, key, f"key {key!r}: item {index} ({item[:40]!r}) repeats item {first[item]}")
    return vocab, joined


# -- labels.json ------------------------------------------------------------------------------------------------
def read_labels(path: Path, tasks: list[TaskSpec]) -> dict[str, list[str]]:
    raw = _read_json(path)
    names = [spec.name for spec in tasks]
    missing = [name for name in names if name not in raw]
    if missing:
        raise invalid_file(path, missing[0], f"labels.json and config.json disagree: no label list for task(s) "
                                             f"{missing}, which config.json lists")
    extra = [name for name in raw if name not in names]
    if extra:
        raise invalid_file(path, extra[0], f"labels.json and config.json disagree: labels for task(s) {extra} that "
                                           f"config.json does not list (its tasks: {names})")
    for spec in tasks:
        labels, key = raw[spec.name], spec.name
        if not isinstance(labels, list) or not labels:
            found = "an empty list" if isinstance(labels, list) else f"a JSON {_json_type(labels)}"
            raise invalid_file(path, key, f"key {key!r} must be a non-empty list of label strings, found {found}")
        seen: dict[str, int] = {}
        for index, label in enumerate(labels):
            if not isinstance(label, str) or not label:
                raise invalid_file(path, key, f"key {key!r}: item {index} ({label!r}) is not a non-empty string")
            if label in seen:
                raise invalid_file(path, key, f"key {key!r}: item {index} ({label[:40]!r}) repeats item {seen[label]}")
            if not well_formed_label(label, spec.train_scheme):
                raise invalid_file(path, key, f"labels.json and config.json disagree: key {key!r}: item {index} "
                                              f"({label[:40]!r}) is not a label of the train scheme "
                                              f"{spec.train_scheme} that config.json gives task {key!r} (O, or a "
                                              f"prefix of the scheme, '-' and a type)")
            seen[label] = index
    return {name: list(raw[name]) for name in names}


# -- model.safetensors ------------------------------------------------------------------------------------------
def read_header(path: Path) -> Header:
    """Every tensor's dtype and shape, from the file's header (no weight is read)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            slices = {name: handle.get_slice(name) for name in handle.keys()}
            return {name: (s.get_dtype(), tuple(s.get_shape())) for name, s in slices.items()}
    except Exception as err:  # safetensors raises several types for truncated or corrupt files
        raise InvalidModelFolderError(f"{path}: cannot load weights ({err})", path=str(path)) from None


@dataclass(frozen=True)
class _Size:
    """A size that a JSON file gives (``value``, at ``key`` of ``file``; ``says`` words it) and that the tensors whose
    names match ``pattern`` (``tensors`` shows them) have as dimension ``dim`` of ``ndim`` (None: of any number)."""

    tensors: str
    pattern: str
    ndim: int | None
    dim: int
    value: int
    file: str
    key: str
    says: str


def check_sizes(directory: Path, contents: FolderContents, header: Header) -> None:
    """Before the model is built: every size that scales its memory, as the JSON files give it, is the size of some
    tensor in the header that it shapes, and config.json asks for no more encoder layers than the header holds. So the
    model built is no larger than a small multiple of the file (copies per task at most), whatever config.json says;
    which tensor differs from the model built is :func:`check_state`'s to name."""
    weights = directory / "model.safetensors"
    for size in _sizes(contents):
        pattern = re.compile(size.pattern)
        found = [(name, shape) for name, (_, shape) in header.items() if pattern.search(name)]
        if not found:
            raise invalid_file(weights, size.tensors, f"config.json and model.safetensors disagree: the model that "
                                                      f"config.json describes has {size.tensors!r} tensors, "
                                                      f"model.safetensors has none")
        fitting = [(name, shape) for name, shape in found
                   if (len(shape) == size.ndim if size.ndim is not None else len(shape) > size.dim)]
        if any(shape[size.dim] == size.value for _, shape in fitting):
            continue
        if not fitting:
            name, shape = found[0]
            raise invalid_file(weights, name, f"tensor {name!r} has shape {shape}, where the model that config.json "
                                              f"describes has a tensor of {size.ndim} dimensions")
        name, shape = fitting[0]
        raise invalid_file(directory / size.file, size.key, f"{size.file} and model.safetensors disagree: {size.says}, "
                                                            f"but tensor {name!r} in model.safetensors has shape "
                                                            f"{shape}")
    model = contents.model
    kind = encoder_kind(model.encoder)
    if kind.layer_tensor is not None and kind.depth(model) is not None:
        pattern = re.compile(kind.layer_tensor)
        held = len({found.group(1) for found in map(pattern.match, header) if found})
        depth_key, depth = kind.depth(model)
        asked = [(depth_key, depth, f"config key {depth_key!r} is {depth}")]
        copies = STRATEGIES[model.sharing].layer_copies(model, depth)
        if copies is not None:
            asked.append(copies)
        for key, count, says in asked:
            if count > held:
                raise invalid_file(directory / "config.json", key, f"config.json and model.safetensors disagree: "
                                                                   f"{says}, but model.safetensors holds the weights of "
                                                                   f"{held} encoder layer(s)")


def _sizes(contents: FolderContents) -> list[_Size]:
    """The sizes :func:`check_sizes` compares with the header."""
    model, sizes = contents.model, []
    for task, labels in contents.labels.items():  # projection, CRF transitions, start and end: one row per label
        sizes.append(_Size(f"heads.{task}.*", rf"^heads\.{re.escape(task)}\.", None, 0, len(labels), "labels.json",
                           task, f"key {task!r} lists {len(labels)} labels"))

    def config(tensors, pattern, ndim, dim, key, value, says=None):
        sizes.append(_Size(tensors, pattern, ndim, dim, value, "config.json", key,
                           says or f"config key {key!r} is {value}"))

    kind = encoder_kind(model.encoder)
    if kind.word_features:  # (a Hugging Face model's sizes are in encoder/config.json)
        b = model.bilstm
        # the shared embedder's tables (...embedder.words.weight) or the tasks' private copies (...private.<task>.words.weight)
        tables = [("words", "*words*.weight", r"(^|\.)words(\.[^.]+)?\.weight$", contents.words,
                   "model.bilstm.word_dim", b.word_dim)]
        if b.char_filters:
            tables.append(("chars", "*chars*.embedding.weight", r"(^|\.)chars(\.[^.]+)?\.embedding\.weight$",
                           contents.chars, "model.bilstm.char_dim", b.char_dim))
        for name, tensors, pattern, vocab, key, width in tables:
            sizes.append(_Size(tensors, pattern, 2, 0, len(vocab), "vocab.json", f"{name}.itos",
                               f"key '{name}.itos' lists {len(vocab)} entries (one per row of the embedding table)"))
            config(tensors, pattern, 2, 1, key, width)
    for check in kind.size_checks(model):
        config(*check)
    for check in STRATEGIES[model.sharing].size_checks(model, contents.tasks):
        config(*check)
    return sizes


def build_model(build: Callable[[], nn.Module], directory: Path, encoder: str) -> nn.Module:
    """``build()``, once :func:`check_sizes` passed: what the strategy refuses in the config (given the built encoder)
    and an allocation that fails are errors naming config.json."""
    config = directory / "config.json"
    try:
        return build()
    except (ConfigError, MaskError) as err:
        raise InvalidModelFolderError(f"{config}: {err}", path=str(config)) from None
    except (MemoryError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and "can't allocate memory" not in str(err):
            raise
        sizes = " (with the encoder's own encoder/config.json)" if encoder_kind(encoder).pretrained_checkpoint else ""
        raise InvalidModelFolderError(f"{config}: the model that config.json describes{sizes} does not fit in memory "
                                      f"({type(err).__name__}: {err})", path=str(config)) from None


def check_state(model: nn.Module, directory: Path, header: Header) -> None:
    """After the build, before loading: the header lists exactly ``model``'s persistent tensors (a tied tensor under
    any one of its names), with their shapes, and dtypes that load as what they are (a floating tensor from any
    floating dtype: load_model casts it, as it always did; nothing else from another dtype)."""
    weights = directory / "model.safetensors"
    state = model.state_dict(keep_vars=True)
    own = _loaded_by_own_code(model)
    names_of: dict[int, list[str]] = {}
    for name, tensor in state.items():
        names_of.setdefault(id(tensor), []).append(name)
    for names in names_of.values():
        if not any(name in header or name in own for name in names):
            raise invalid_file(weights, names[0], f"config.json and model.safetensors disagree: no tensor {names[0]!r}, "
                                                  f"which the model that config.json describes has")
    unexpected = [name for name in header if name not in state]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise invalid_file(weights, unexpected[0], f"config.json and model.safetensors disagree: tensor "
                                                   f"{unexpected[0]!r}{more} is not part of the model that config.json "
                                                   f"describes")
    for name, (dtype, shape) in header.items():
        tensor = state[name]
        wanted = SAFETENSORS_DTYPES.get(tensor.dtype, str(tensor.dtype))
        if dtype != wanted and not (dtype in FLOATING and wanted in FLOATING):
            raise invalid_file(weights, name, f"tensor {name!r} is stored as {dtype}, the model's is {wanted} (a "
                                              f"floating tensor is cast from another floating dtype only, never read "
                                              f"from integers or booleans, nor the reverse)")
        if shape != tuple(tensor.shape) and name not in own:
            raise invalid_file(weights, name, f"config.json and model.safetensors disagree: tensor {name!r} has shape "
                                              f"{shape}, the model that config.json describes has {tuple(tensor.shape)}")


def _loaded_by_own_code(model: nn.Module) -> set[str]:
    """The tensors of modules whose own loading code adapts to what the file holds (an overridden
    ``_load_from_state_dict`` or load pre-hooks: routing's map history takes the saved length, older files lack
    routing's empty window): whether the file holds them, and with which shape, is theirs to decide as load_model
    runs it (its strict check names any still missing)."""
    names = set()
    for prefix, module in model.named_modules():
        if type(module)._load_from_state_dict is not nn.Module._load_from_state_dict or module._load_state_dict_pre_hooks:
            for name, _ in itertools.chain(module.named_parameters(recurse=False), module.named_buffers(recurse=False)):
                names.add(f"{prefix}.{name}" if prefix else name)
    return names


def check_values(model: nn.Module, directory: Path, header: Header) -> None:
    """The loaded tensors: floating ones finite, boolean ones 0 or 1 (a safetensors bool is a byte)."""
    state = model.state_dict()
    for name in header:
        tensor = state[name]
        # a sum is finite unless a value is not (or the values are huge: then the exact look), one pass, no copy
        if tensor.is_floating_point() and not (bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())):
            raise invalid_file(directory / "model.safetensors", name, f"tensor {name!r} holds NaN or infinite values")
        if tensor.dtype == torch.bool and not holds_only_0_and_1(tensor):
            raise invalid_file(directory / "model.safetensors", name, f"tensor {name!r} is boolean but holds bytes other "
                                                                      f"than 0 and 1")


def strategy_files() -> dict[str, str]:
    """Every file a strategy writes into a model folder (``SharingStrategy.files``) -> the strategy's name."""
    return {file: name for name, cls in STRATEGIES.items() for file in cls.files}


def other_strategies_files(strategy) -> list[str]:
    """The files other strategies write into a model folder that ``strategy`` does not: a folder of ``strategy``
    must not hold them."""
    return sorted(file for file in strategy_files() if file not in strategy.files)


def load_strategy_files(model, directory: Path) -> None:
    """The sharing strategy's own files (sparse sharing's masks.safetensors), checked by the strategy; a missing one
    stays a ModelFolderError. Another strategy's file in the folder is refused: the folder's config.json and its files
    disagree on how it shares (e.g. masks.safetensors with ``model.sharing`` rewritten to ``hard``)."""
    for file in other_strategies_files(model.sharing):
        if (directory / file).exists():
            raise invalid_file(directory / "config.json", "model.sharing",
                               f"model.sharing is {model.sharing.name!r}, but the folder holds {file}, a file of "
                               f"{strategy_files()[file]} sharing: config.json and the folder's files disagree on how its tasks "
                               f"share the encoder")
    try:
        model.sharing.load_files(directory)
    except ModelFolderError:
        raise
    except MaskError as err:
        raise MaskFileError(str(err), path=str(directory / "masks.safetensors")) from None
