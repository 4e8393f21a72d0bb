"""Task specifications: built-in task files, user task files, and validation."""
from pathlib import Path

import pytest
import yaml

import sparseshare.tasks as tasks_module
from sparseshare.tasks import BUILTIN_DIR, DevCarveOut, HubSource, TaskSpec, builtin_tasks, load_task

EXPECTED_BUILTINS = {"chunk", "chunk2000", "ner", "pos", "pp", "upos", "xpos"}


def test_builtin_dir_is_the_top_level_tasks_folder():
    """In a checkout the built-in tasks are read from tasks/ (test_packaging checks the installed wheel's copy)."""
    assert BUILTIN_DIR.resolve() == Path(tasks_module.__file__).resolve().parents[2] / "tasks"
    shipped = {p.stem for p in BUILTIN_DIR.glob("*.yaml")}
    assert set(builtin_tasks()) == shipped
    assert EXPECTED_BUILTINS <= shipped
    assert builtin_tasks() == sorted(builtin_tasks())


@pytest.mark.parametrize("name", sorted(EXPECTED_BUILTINS))
def test_every_builtin_task_loads(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # found through the package, not the working directory
    spec = load_task(name)
    assert spec.name == name
    assert spec.label_column in spec.columns
    assert "train" in spec.files
    assert "dev" in spec.files or spec.dev_from_train is not None
    if spec.metric == "span_f1":
        assert spec.scheme != "none"


def test_all_builtins_listed_load():
    for name in builtin_tasks():
        assert load_task(name).name == name


def test_builtin_specifics():
    ner = load_task("ner")
    assert (ner.scheme, ner.train_scheme, ner.metric, ner.label_column) == ("iob2", "bioes", "span_f1", "ner")
    assert ner.hub.id == "eriktks/conll2003" and ner.hub.label_column == "ner_tags"
    assert ner.hub.splits == {"train": "train", "dev": "validation", "test": "test"}
    pos = load_task("pos")
    assert pos.train_scheme == "none" and pos.metric == "accuracy"
    c2k = load_task("chunk2000")
    assert c2k.dev_from_train == DevCarveOut(fraction=0.1, seed=13)
    assert "dev" not in c2k.files and "dev" not in c2k.hub.splits
    pp = load_task("pp")
    assert pp.format == "pp" and pp.ignore_labels == ["O"]
    assert load_task("upos").format == "conllu"


def test_unknown_task_lists_builtins():
    with pytest.raises(ValueError) as info:
        load_task("nerr")
    message = str(info.value)
    assert "'nerr'" in message
    for name in EXPECTED_BUILTINS:
        assert name in message


def _task_dict(**kw):
    data = {"name": "ner_de", "format": "conll", "columns": ["tokens", "ner"], "label_column": "ner",
            "files": {"train": "train.txt", "dev": "dev.txt"}, "scheme": "iob1", "train_scheme": "bioes",
            "metric": "span_f1"}
    data.update(kw)
    return data


def _write_task(path, data):
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_user_task_yaml_loads(tmp_path):
    for suffix in (".yaml", ".yml"):
        path = _write_task(tmp_path / f"ner_de{suffix}", _task_dict(
            hub={"id": "me/ner_de", "label_column": "tags", "splits": {"train": "train", "test": "test"}},
            dev_from_train={"fraction": 0.2}))
        spec = load_task(str(path))
        assert spec.name == "ner_de" and spec.scheme == "iob1" and spec.train_scheme == "bioes"
        assert isinstance(spec.hub, HubSource) and spec.hub.splits == {"train": "train", "test": "test"}
        assert spec.hub.tokens_column == "tokens"
        assert spec.dev_from_train == DevCarveOut(fraction=0.2, seed=13)
        assert TaskSpec.from_dict(spec.to_dict()) == spec


def test_train_scheme_defaults_to_scheme(tmp_path):
    data = _task_dict()
    del data["train_scheme"]
    assert load_task(str(_write_task(tmp_path / "t.yaml", data))).train_scheme == "iob1"


def test_missing_user_task_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.yaml"):
        load_task(str(tmp_path / "nothere.yaml"))


@pytest.mark.parametrize(
    "extra,where",
    [
        ({"metrics": "span_f1"}, "metrics"),
        ({"hub": {"id": "a/b", "label_column": "x", "split": {"train": "train"}}}, "split"),
        ({"dev_from_train": {"fraction": 0.1, "sed": 1}}, "sed"),
    ],
)
def test_unknown_key_in_task_file_named(tmp_path, extra, where):
    path = _write_task(tmp_path / "t.yaml", _task_dict(**extra))
    with pytest.raises(ValueError) as info:
        load_task(str(path))
    assert f"'{where}'" in str(info.value)
    assert str(path) in str(info.value)


def test_missing_required_key_named(tmp_path):
    data = _task_dict()
    del data["label_column"]
    with pytest.raises(ValueError, match="label_column"):
        load_task(str(_write_task(tmp_path / "t.yaml", data)))


def test_task_file_must_be_mapping(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("- a\n", encoding="utf-8")
    with pytest.raises(ValueError, match="mapping"):
        load_task(str(path))


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"scheme": "none", "train_scheme": None}, "span_f1 needs a span tag scheme"),
        ({"format": "tsv"}, "format"),
        ({"metric": "bleu"}, "metric"),
        ({"scheme": "bilou"}, "scheme"),
        ({"train_scheme": "iobes"}, "train_scheme"),
        ({"label_column": "pos"}, "label_column"),
        ({"files": {"dev": "dev.txt"}}, "train"),
        ({"files": {"train": "train.txt"}}, "dev_from_train"),
    ],
)
def test_task_validation(changes, message):
    data = _task_dict(**changes)
    with pytest.raises(ValueError, match=message):
        TaskSpec.from_dict(data)


@pytest.mark.parametrize("changes, key, message", [
    # torch refuses "." and "" in a module name, after the corpora are read; "/" opened a folder for predictions
    ({"name": "ner.v2"}, "name", "a task name is ASCII letters, digits, '_' and '-'"),
    ({"name": ""}, "name", "a task name is ASCII letters"),
    ({"name": "ner/de"}, "name", "a task name is ASCII letters"),
    ({"columns": ["word", "ner"]}, "columns", r"\['word', 'ner'\] has no 'tokens'"),
    # a misspelt split was accepted and the run reported no test scores
    ({"files": {"train": "train.txt", "dev": "dev.txt", "tset": "test.txt"}}, "files", "'tset' is not a split"),
    ({"scheme": "iob1", "train_scheme": "none"}, "train_scheme", "a span scheme converts only to another"),
    ({"scheme": "none", "train_scheme": "bioes", "metric": "accuracy"}, "train_scheme", "'none' only to 'none'"),
    ({"files": {"train": "t.txt"}, "dev_from_train": {"fraction": 1.0}}, "dev_from_train.fraction",
     r"must be in \(0, 1\), got 1.0"),
    ({"files": {"train": "t.txt"}, "dev_from_train": {"fraction": -0.5}}, "dev_from_train.fraction", "got -0.5"),
])
def test_a_task_file_is_refused_by_key(tmp_path, changes, key, message):
    path = _write_task(tmp_path / "t.yaml", _task_dict(**changes))
    with pytest.raises(ValueError, match=rf"^{path}:\d+: task '[^']*': task key '{key}': .*{message}"):
        load_task(str(path))


def test_a_saved_task_is_not_held_to_the_rules_for_new_task_files():
    # a model folder's config.json tasks trained already: a name or a files key of before still loads
    spec = TaskSpec.from_dict(_task_dict(name="nér", files={"train": "t.txt", "dev": "d.txt", "tset": "x.txt"}),
                              strict=True)
    assert spec.name == "nér"


def test_a_carved_dev_split_leaves_sentences_to_train_on(tmp_path):
    from sparseshare.data.corpus import load_local_split

    (tmp_path / "train.txt").write_text("John B-PER\n\nMary B-PER\n\nParis B-LOC\n", encoding="utf-8")
    spec = TaskSpec.from_dict(_task_dict(files={"train": "train.txt"}, dev_from_train={"fraction": 0.9},
                                         scheme="iob2", train_scheme="iob2"))
    with pytest.raises(ValueError, match=r"task 'ner_de': task key 'dev_from_train.fraction' = 0.9 of 3 training "
                                         r"sentence\(s\) leaves none to train on"):
        load_local_split(spec, tmp_path, "train")
    spec.dev_from_train.fraction = 0.5
    assert len(load_local_split(spec, tmp_path, "train")) == 1 and len(load_local_split(spec, tmp_path, "dev")) == 2


def test_accuracy_with_scheme_none_allowed():
    spec = TaskSpec.from_dict(_task_dict(scheme="none", train_scheme=None, metric="accuracy"))
    assert spec.train_scheme == "none"


# -- task files: every error names the file, the line and the key ----------------------------------------------
TASK_LINES = ["name: ner_de", "format: conll", "columns: [tokens, ner]", "label_column: ner",
              "files: {train: train.txt, dev: dev.txt}", "scheme: iob1", "metric: span_f1"]


def test_a_syntax_error_in_a_task_file_names_the_file_and_line(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("\n".join(TASK_LINES).replace("dev: dev.txt}", "dev: dev.txt") + "\n")
    with pytest.raises(ValueError, match=rf"^{path}:\d+:\d+: YAML syntax error: .*flow mapping that starts at "
                                         rf"line 5") as info:
        load_task(str(path))
    assert "<unicode string>" not in str(info.value)


@pytest.mark.parametrize("replaced, text, line, key", [
    ("name", "name: 5", 1, "name"),
    ("files", "files: {train: 5, dev: dev.txt}", 5, "files.train"),
    ("files", "files:\n  dev: dev.txt\n  train: [a, b]", 7, "files.train"),
    ("columns", "columns: tokens", 3, "columns"),
    ("files", "files: [train.txt]", 5, "files"),
    ("metric", "metric: span_f1\nhub: {id: a/b, label_column: 3}", 8, "hub.label_column"),
    ("metric", "metric: span_f1\nhub: {label_column: x}", 8, "hub"),
    ("metric", "metric: span_f1\ndev_from_train: {fraction: lots}", 8, "dev_from_train.fraction"),
    ("format", "format: tsv", 2, "format"),
    ("label_column", "label_column: pos", 4, "label_column"),
])
def test_a_wrong_value_in_a_task_file_names_file_line_and_key(tmp_path, replaced, text, line, key):
    path = tmp_path / "t.yaml"
    path.write_text("\n".join(text if entry.startswith(replaced + ":") else entry for entry in TASK_LINES) + "\n")
    with pytest.raises(ValueError, match=rf"^{path}:{line}: .*task key '{key}'"):
        load_task(str(path))


def test_a_wrong_value_in_a_saved_task_names_where_it_comes_from():
    with pytest.raises(ValueError, match=r"^tasks.ner_de: task key 'ignore_labels': item 0 \(5\) is not a str"):
        TaskSpec.from_dict(_task_dict(ignore_labels=[5]), source="tasks.ner_de")


@pytest.mark.parametrize("changes, key", [
    ({"dev_from_train": {"fraction": "0.2"}}, "dev_from_train.fraction"),  # a YAML-style number in JSON
    ({"description": False}, "description"),  # YAML's `no`, read as a bool: not a string in JSON
    ({"hub": {"id": "a/b", "label_column": "ner", "config": True}}, "hub.config"),
])
def test_a_strictly_typed_task_converts_nothing(changes, key):
    data = _task_dict(**changes)
    TaskSpec.from_dict(data)  # a task file's YAML is read leniently
    with pytest.raises(ValueError, match=rf"^tasks.ner: task key '{key}': .* is not a valid"):
        TaskSpec.from_dict(data, source="tasks.ner", strict=True)


def test_a_strictly_typed_task_reads_json_types():
    spec = TaskSpec.from_dict(_task_dict(dev_from_train={"fraction": 1, "seed": 3}), strict=True)
    assert spec.dev_from_train == DevCarveOut(fraction=1.0, seed=3)
