"""Task specifications: one small YAML file per task.

A task names its corpus (local files per split, and optionally a Hugging Face Hub dataset with
the same schema), the column it labels, its tag scheme and its metric. The built-in tasks are the files of the
checkout's top-level ``tasks/`` folder, which an installed package carries as ``sparseshare/tasks/builtin/``
(setup.py maps one onto the other); a user adds a task by writing a YAML file and passing its path instead of a
name.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError, YamlFile, build_dataclass, read_yaml_with_lines
from ..config import is_task_file  # noqa: F401 - importable from here, as before
from ..data.schemes import SCHEMES


def _builtin_dir() -> Path:
    here = Path(__file__).resolve().parent
    installed = here / "builtin"  # a wheel or a regular install
    if installed.is_dir():
        return installed
    checkout = here.parents[1]  # a checkout (editable install)
    if (checkout / "setup.py").is_file() and (checkout / "tasks").is_dir():
        return checkout / "tasks"
    raise ImportError(f"sparseshare's built-in task files are missing (neither {installed} nor a checkout's tasks/ "
                      f"folder): reinstall the package")


BUILTIN_DIR = _builtin_dir()
METRICS = ("accuracy", "span_f1")
FORMATS = ("conll", "conllu", "pp")
SPLIT_NAMES = ("train", "dev", "test")  # the keys of files:
# A task's name keys its head and masks in model.safetensors (torch refuses "." and ""), its files in a run folder
# and its predictions file (a "/" would open a folder): letters, digits, "_" and "-"
TASK_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


@dataclass
class HubSource:
    id: str
    label_column: str
    tokens_column: str = "tokens"
    config: str | None = None
    revision: str | None = None
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "dev": "validation", "test": "test"})


@dataclass
class DevCarveOut:
    """For corpora without a dev split: a fixed, seeded fraction of train becomes dev."""

    fraction: float = 0.1
    seed: int = 13


@dataclass
class TaskSpec:
    name: str
    format: str
    columns: list[str]
    label_column: str
    files: dict[str, str]
    corpus: str = ""
    description: str = ""
    scheme: str = "none"  # scheme of the corpus labels
    train_scheme: str | None = None  # scheme the model learns and decodes in (defaults to `scheme`)
    metric: str = "accuracy"
    ignore_labels: list[str] = field(default_factory=list)  # gold labels not scored by `accuracy` (e.g. O for pp)
    dev_from_train: DevCarveOut | None = None
    hub: HubSource | None = None

    def __post_init__(self):
        if self.train_scheme is None:
            self.train_scheme = self.scheme
        for key, allowed in (("format", FORMATS), ("metric", METRICS), ("scheme", SCHEMES),
                             ("train_scheme", SCHEMES)):
            if getattr(self, key) not in allowed:
                self._invalid(key, f"{getattr(self, key)!r} is not one of {list(allowed)}")
        if self.label_column not in self.columns:
            self._invalid("label_column", f"{self.label_column!r} is not among columns {self.columns}")
        if "train" not in self.files:
            self._invalid("files", "must name a train split")
        if "dev" not in self.files and self.dev_from_train is None:
            self._invalid("files", "no dev split; give files.dev or dev_from_train")
        if self.metric == "span_f1" and self.scheme == "none":
            self._invalid("metric", "span_f1 needs a span tag scheme (iob1, iob2 or bioes)")

    def check_new_task(self) -> None:
        """What a task file must also satisfy before a run reads its corpus (a saved model folder's tasks, which
        trained already, are not held to these rules of today): a name that can key the task's head, masks and
        files; ``tokens`` among a column file's columns; only the splits train, dev and test; a train scheme its
        corpus scheme converts to; a dev fraction that leaves training sentences."""
        if not TASK_NAME.fullmatch(self.name):
            self._invalid("name", "a task name is ASCII letters, digits, '_' and '-' (it names the task's head, masks "
                                  "and files), starting with a letter, digit or '_'")
        if self.format in ("conll", "conllu") and "tokens" not in self.columns:
            self._invalid("columns", f"{self.columns} has no 'tokens': name the token column 'tokens'")
        unknown = [split for split in self.files if split not in SPLIT_NAMES]
        if unknown:
            self._invalid("files", f"{unknown[0]!r} is not a split; the splits are {list(SPLIT_NAMES)}")
        if (self.scheme == "none") != (self.train_scheme == "none"):
            self._invalid("train_scheme", f"{self.train_scheme!r} with scheme {self.scheme!r}: a span scheme converts "
                                          f"only to another span scheme (iob1, iob2, bioes), 'none' only to 'none'")
        # (a fraction that leaves no training sentence in a small corpus is refused when train is read: data/corpus.py)
        if self.dev_from_train is not None and not 0 < self.dev_from_train.fraction < 1:
            self._invalid("dev_from_train.fraction", f"must be in (0, 1), got {self.dev_from_train.fraction}")

    def _invalid(self, key: str, problem: str):
        # "task key '<key>'": the task file's loader finds the key's line by this phrase (config.YamlFile.locate)
        raise ValueError(f"task {self.name!r}: task key {key!r}: {problem}")

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>", yaml_file: YamlFile | None = None, *,
                  strict: bool = False) -> "TaskSpec":
        """A task from a mapping: a task file's (``yaml_file``: errors name its file, line and key) or a model
        folder's ``tasks.<name>`` (errors name ``source`` and the key). Unknown keys, missing keys and values of
        the wrong type are errors, as in a config; ``strict`` (a model folder's JSON) converts no value
        (:func:`sparseshare.config.build_dataclass`)."""
        try:
            return build_dataclass(cls, data, "", noun="task key", strict=strict)
        except ValueError as err:
            raise (yaml_file.locate(err) if yaml_file is not None else ValueError(f"{source}: {err}")) from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def builtin_tasks() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def load_task(name_or_path: str) -> TaskSpec:
    """A built-in task by name (``ner``) or a user task file by path (``my_tasks/ner_de.yaml``)."""
    path = Path(name_or_path)
    if not is_task_file(name_or_path):
        path = BUILTIN_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ValueError(f"unknown task {name_or_path!r}; built-in tasks: {builtin_tasks()} (or pass a task .yaml path)")
    elif path.is_dir():
        raise FileNotFoundError(f"task file {path} is a directory, not a YAML file")
    elif not path.is_file():
        raise FileNotFoundError(f"task file not found: {path}")
    task_file = read_yaml_with_lines(path)  # the config files' loader: errors name the file and line
    if not isinstance(task_file.data, dict):
        raise ConfigError(f"{path}: a task file must be a YAML mapping")
    spec = TaskSpec.from_dict(task_file.data, source=str(path), yaml_file=task_file)
    try:
        spec.check_new_task()
    except ValueError as err:
        raise task_file.locate(err) from None
    return spec
