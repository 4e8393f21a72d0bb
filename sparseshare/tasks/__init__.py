"""Task specifications: one small YAML file per task.

A task names its corpus (local files per split, and optionally a Hugging Face Hub dataset with
the same schema), the column it labels, its tag scheme and its metric. The built-in tasks are the files of the
checkout's top-level ``tasks/`` folder, which an installed package carries as ``sparseshare/tasks/builtin/``
(setup.py maps one onto the other); a user adds a task by writing a YAML file and passing its path instead of a
name.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

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


@dataclass
class HubSource:
    id: str
    label_column: str
    tokens_column: str = "tokens"
    config: str | None = None
    revision: str | None = None
    splits: dict = field(default_factory=lambda: {"train": "train", "dev": "validation", "test": "test"})


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
        checks = [
            ("format", self.format, FORMATS),
            ("metric", self.metric, METRICS),
            ("scheme", self.scheme, SCHEMES),
            ("train_scheme", self.train_scheme, SCHEMES),
        ]
        for key, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"task {self.name!r}: {key}={value!r} is not one of {allowed}")
        if self.label_column not in self.columns:
            raise ValueError(f"task {self.name!r}: label_column {self.label_column!r} is not among columns {self.columns}")
        if "train" not in self.files:
            raise ValueError(f"task {self.name!r}: files must name a train split")
        if "dev" not in self.files and self.dev_from_train is None:
            raise ValueError(f"task {self.name!r}: no dev split; give files.dev or dev_from_train")
        if self.metric == "span_f1" and self.scheme == "none":
            raise ValueError(f"task {self.name!r}: span_f1 needs a span tag scheme (iob1, iob2 or bioes)")

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> "TaskSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown task key(s) {unknown}; known keys: {sorted(known)}")
        data = dict(data)
        if data.get("hub"):
            data["hub"] = _strict(HubSource, data["hub"], f"{source}: hub")
        if data.get("dev_from_train"):
            data["dev_from_train"] = _strict(DevCarveOut, data["dev_from_train"], f"{source}: dev_from_train")
        missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING and f.name not in data]
        if missing:
            raise ValueError(f"{source}: missing task key(s) {missing}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _strict(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {data!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as err:  # a required key is missing
        raise ValueError(f"{where}: {err}") from None


def builtin_tasks() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def load_task(name_or_path: str) -> TaskSpec:
    """A built-in task by name (``ner``) or a user task file by path (``my_tasks/ner_de.yaml``)."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = BUILTIN_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ValueError(f"unknown task {name_or_path!r}; built-in tasks: {builtin_tasks()} (or pass a task .yaml path)")
    elif not path.is_file():
        raise FileNotFoundError(f"task file not found: {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a task file must be a YAML mapping")
    return TaskSpec.from_dict(data, source=str(path))
