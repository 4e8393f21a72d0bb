"""Typed configuration: YAML + dotted overrides, unknown keys, types and choices rejected by name."""
from pathlib import Path

import pytest

from sparseshare.config import Config, ConfigError, config_from_dict, load_config, parse_override
from sparseshare.sharing import STRATEGIES

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "configs"


@pytest.fixture
def yaml_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        "tasks: [pos, chunk]\n"
        "output_dir: runs/x\n"
        "model:\n"
        "  head: softmax\n"
        "  bilstm:\n"
        "    hidden: 64\n"
        "train:\n"
        "  lr: 0.05\n"
        "  clip: null\n",
        encoding="utf-8",
    )
    return path


def test_defaults():
    config = load_config()
    assert isinstance(config, Config)
    assert config.tasks == ["pos", "chunk", "ner"]
    assert config.train.batch_size == 32 and config.model.encoder == "bilstm"


def test_load_yaml_file(yaml_file):
    config = load_config(yaml_file)
    assert config.tasks == ["pos", "chunk"]
    assert config.model.head == "softmax"
    assert config.model.bilstm.hidden == 64
    assert config.model.bilstm.layers == 2  # untouched defaults survive
    assert config.train.lr == 0.05 and config.train.clip is None
    assert config.train.epochs == 50


def test_overrides(yaml_file):
    config = load_config(yaml_file, ["train.lr=0.01", "tasks=[ner]", "model.bilstm.dropout=0.25",
                                     "data.max_train_sentences=100", "train.lr_schedule=cosine", "train.clip=null"])
    assert config.train.lr == 0.01 and isinstance(config.train.lr, float)
    assert config.tasks == ["ner"]
    assert config.model.bilstm.dropout == 0.25
    assert config.model.bilstm.hidden == 64
    assert config.data.max_train_sentences == 100
    assert config.train.lr_schedule == "cosine"
    assert config.train.clip is None


def test_int_accepted_for_float_and_later_override_wins():
    config = load_config(None, ["train.lr=1", "train.lr=0.5", "train.schedule=temperature", "train.temperature=3"])
    assert config.train.lr == 0.5
    assert config.train.temperature == 3.0 and isinstance(config.train.temperature, float)


def test_override_exponent_with_dot():
    assert load_config(None, ["train.lr=5.0e-5"]).train.lr == pytest.approx(5e-5)


def test_override_exponent_without_dot():
    assert load_config(None, ["train.lr=1e-3"]).train.lr == pytest.approx(1e-3)


def test_shipped_recipes_load():
    recipes = sorted(RECIPES.glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        load_config(recipe)


@pytest.mark.parametrize(
    "override,key",
    [
        ("foo=1", "'foo'"),
        ("train.lrr=0.1", "'train.lrr'"),
        ("model.bilstm.hiden=10", "'model.bilstm.hiden'"),
        ("data.dirs=x", "'data.dirs'"),
    ],
)
def test_unknown_key_named(override, key):
    with pytest.raises(ConfigError, match="unknown config key") as info:
        load_config(None, [override])
    assert key in str(info.value)


def test_unknown_key_in_yaml_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  transformer:\n    strid: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="'model.transformer.strid'"):
        load_config(path)


@pytest.mark.parametrize(
    "override,key",
    [
        ("train.batch_size=abc", "train.batch_size"),
        ("train.epochs=2.5", "train.epochs"),
        ("model.bilstm.hidden=true", "model.bilstm.hidden"),
        ("train.lr=fast", "train.lr"),
        ("train.lr=true", "train.lr"),
        ("tasks=ner", "tasks"),
        ("model.bilstm.freeze_embeddings=1", "model.bilstm.freeze_embeddings"),
        ("data.task_dirs=[a]", "data.task_dirs"),
        ("output_dir=3", "output_dir"),
        ("train.clip=[1]", "train.clip"),
    ],
)
def test_wrong_type_named(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert f"'{key}'" in str(info.value)


def test_wrong_list_element_type_named():
    with pytest.raises(ConfigError, match="'tasks'"):
        load_config(None, ["tasks=[1, 2]"])


def test_section_given_a_scalar():
    with pytest.raises(ConfigError, match="train"):
        load_config(None, ["train=3"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(None, ["tasks=[ner]", "tasks.x=1"])


@pytest.mark.parametrize(
    "override,key,valid",
    [
        ("model.encoder=cnn", "model.encoder", ["bilstm", "transformer"]),
        ("train.schedule=random", "train.schedule", ["round_robin", "proportional", "temperature"]),
        ("model.head=mlp", "model.head", ["crf", "softmax"]),
        ("train.optimizer=adam", "train.optimizer", ["sgd", "adamw"]),
        ("data.source=s3", "data.source", ["local", "hub"]),
        ("model.sharing=sparse_magic", "model.sharing", sorted(STRATEGIES)),
    ],
)
def test_invalid_choice_names_key_and_valid_values(override, key, valid):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert f"'{key}'" in message
    for value in valid:
        assert value in message


@pytest.mark.parametrize("overrides, message", [
    (["train.temperature=3"], r"'train\.temperature' \(3\.0\) has no effect with train\.schedule='round_robin'; it "
                              r"belongs to train\.schedule=temperature"),
    (["train.lr_decay=0.1", "train.lr_schedule=linear"], r"'train\.lr_decay' \(0\.1\) has no effect with "
                                                         r"train\.lr_schedule='linear'"),
    (["train.momentum=0", "train.optimizer=adamw"], r"'train\.momentum' \(0\.0\) has no effect with "
                                                    r"train\.optimizer='adamw'; it belongs to train\.optimizer=sgd"),
])
def test_an_option_of_another_setting_is_refused_not_silently_unused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
    load_config(None, [overrides[0]] + {"train.temperature=3": ["train.schedule=temperature"],
                                        "train.lr_decay=0.1": ["train.lr_schedule=inverse_time"],
                                        "train.momentum=0": ["train.optimizer=sgd"]}[overrides[0]])


@pytest.mark.parametrize("key", ["train.batch_size", "train.eval_batch_size", "train.epochs", "train.lr",
                                 "train.temperature"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_non_positive_rejected(key, value):
    with pytest.raises(ConfigError, match=f"'{key}' must be > 0"):
        load_config(None, [f"{key}={value}"])


def test_other_validation():
    with pytest.raises(ConfigError, match="at least one task"):
        load_config(None, ["tasks=[]"])
    with pytest.raises(ConfigError, match=r"'model.sharing' = 'single' trains exactly one task, config key 'tasks' "
                                          r"lists 2: \['pos', 'ner'\]; use 'hard'"):
        load_config(None, ["tasks=[pos,ner]", "model.sharing=single"])
    with pytest.raises(ConfigError, match="twice"):
        load_config(None, ["tasks=[ner, pos, ner]"])
    with pytest.raises(ConfigError, match="dropout"):
        load_config(None, ["model.bilstm.dropout=1.0"])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    assert load_config(empty).tasks == ["pos", "chunk", "ner"]


def test_override_into_empty_yaml_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n", encoding="utf-8")
    assert load_config(path).train.lr == 0.1
    assert load_config(path, ["train.lr=0.01"]).train.lr == 0.01


def test_parse_override():
    assert parse_override("train.lr=0.5") == (["train", "lr"], 0.5)
    assert parse_override("output_dir=a=b") == (["output_dir"], "a=b")
    assert parse_override("train.clip=") == (["train", "clip"], None)
    with pytest.raises(ConfigError, match="key.subkey=value"):
        parse_override("train.lr")


def test_round_trip_through_dict():
    config = load_config(None, ["train.lr=0.01", "tasks=[ner]"])
    again = config_from_dict(config.to_dict())
    assert again == config


def test_an_error_in_a_config_file_names_file_line_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tasks: [pos]\ntrain:\n  epochs: 3\n  lr: fast\nmodel:\n  bilstm:\n    hiden: 5\n")
    with pytest.raises(ConfigError, match=rf"^{path}:4: config key 'train.lr': 'fast' is not a valid float$"):
        load_config(path)
    with pytest.raises(ConfigError, match=rf"^{path}:7: unknown config key 'model.bilstm.hiden'"):
        load_config(path, ["train.lr=0.1"])
    path.write_text("tasks: [pos]\ntrain:\n  epochs: 0\n")  # a value validate() rejects
    with pytest.raises(ConfigError, match=rf"^{path}:3: config key 'train.epochs' must be > 0"):
        load_config(path)
    # an override's error is the override's, not the file's
    with pytest.raises(ConfigError, match=r"^config key 'train.epochs' must be > 0, got -1"):
        load_config(path, ["train.epochs=-1"])


def test_read_yaml_returns_the_content_and_read_yaml_with_lines_the_key_lines(tmp_path):
    from sparseshare.config import YamlFile, read_yaml, read_yaml_with_lines

    path = tmp_path / "c.yaml"
    path.write_text("tasks: [pos]\ntrain:\n  lr: 0.1\n")
    assert read_yaml(path) == {"tasks": ["pos"], "train": {"lr": 0.1}}  # as before: the content
    located = read_yaml_with_lines(str(path))
    assert isinstance(located, YamlFile) and located.data == read_yaml(path)
    assert located.location("train.lr") == f"{path}:3" and located.location("train.lr.x") == f"{path}:3"
    assert located.location("model.head") == str(path) and located.location() == str(path)
    located.override("train")
    assert located.location("train.lr") is None  # an override gave it: the error is the override's
    path.write_text("train: {lr: 0.1\n")
    with pytest.raises(ConfigError, match=rf"^{path}:2:1: YAML syntax error"):
        read_yaml(path)



def test_a_key_given_twice_in_a_config_file_is_refused_by_file_and_line(tmp_path):
    """YAML keeps the second of two equal keys and drops the first's whole block without a word (here epochs: 1)."""
    from sparseshare.config import read_yaml

    path = tmp_path / "c.yaml"
    path.write_text("tasks: [pos]\ntrain:\n  epochs: 1\ntrain:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=rf"^{path}:4: key 'train' is given twice \(first at line 2\)"):
        load_config(path)
    path.write_text("train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=rf"^{path}:4: key 'train.lr' is given twice \(first at line 2\)"):
        read_yaml(path)
    path.write_text("base: &b {lr: 0.1}\ntrain:\n  <<: *b\n  lr: 0.2\n")  # a merge key may be overridden
    assert read_yaml(path)["train"] == {"lr": 0.2}
    path.write_text("a:\n  1: x\n  '1': y\n")  # an int and a str: two keys
    assert read_yaml(path)["a"] == {1: "x", "1": "y"}


def test_the_old_private_names_of_the_type_checks_still_work():
    from sparseshare import config as config_module

    assert config_module._build is config_module.build_dataclass
    assert config_module._check_type is config_module.check_type


@pytest.mark.parametrize("value, hint", [
    ("0.5", float), ("1e-3", float), (True, str), ("false", bool), (1.5, int), (None, int),
    ({"a": "1"}, dict[str, float]),
])
def test_strict_typing_converts_nothing(value, hint):
    from sparseshare.config import check_type

    with pytest.raises(ConfigError, match=r"^config key 'k(\.a)?': .* is not a valid"):
        check_type(value, hint, "k", strict=True)


def test_strict_typing_keeps_what_json_types_exactly():
    from sparseshare.config import check_type

    assert check_type(1, float, "k", strict=True) == 1.0 and type(check_type(1, float, "k", strict=True)) is float
    assert check_type(False, bool, "k", strict=True) is False
    assert check_type(None, float | None, "k", strict=True) is None
    assert check_type({"a": 2}, dict[str, float], "k", strict=True) == {"a": 2.0}
    # lenient (YAML) reading, the default, as before
    assert check_type("1e-3", float, "k") == 0.001 and check_type(False, str, "k") == "no"


def test_strict_building_refuses_a_null_section():
    from sparseshare.config import ModelConfig, TrainConfig, build_dataclass

    assert build_dataclass(ModelConfig, {"bilstm": None}, "model").bilstm == ModelConfig().bilstm  # YAML `bilstm:`
    with pytest.raises(ConfigError, match=r"^config key 'model.bilstm': expected a mapping, got NoneType$"):
        build_dataclass(ModelConfig, {"bilstm": None}, "model", strict=True)
    with pytest.raises(ConfigError, match=r"config key 'train.lr': '0.5' is not a valid float"):
        build_dataclass(TrainConfig, {"lr": "0.5"}, "train", strict=True)
    assert build_dataclass(TrainConfig, {"lr": "0.5"}, "train").lr == 0.5
    with pytest.raises(ConfigError, match=r"config key 'model.bilstm.hidden'"):  # strict reaches nested sections
        build_dataclass(ModelConfig, {"bilstm": {"hidden": "64"}}, "model", strict=True)
    # a section given as something else than a mapping or null is an error in either mode (was: read as defaults)
    with pytest.raises(ConfigError, match=r"^config key 'model.bilstm': expected a mapping, got list$"):
        build_dataclass(ModelConfig, {"bilstm": []}, "model")


def test_an_override_that_replaces_a_section_is_blamed_not_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tasks: [pos]\ntrain:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"^config key 'train.lr' must be > 0, got -1"):
        load_config(path, ["train={lr: -1}"])


def test_a_key_that_only_an_override_makes_is_blamed_on_the_override(tmp_path):
    # the file gives `data:` (line 2) and `model:` (line 3), not the keys the overrides misspell or add
    path = tmp_path / "c.yaml"
    path.write_text("tasks: [pos]\ndata:\n  root: d\nmodel:\n  bilstm:\n    hidden: 8\n")
    with pytest.raises(ConfigError, match=r"^unknown config key 'data.task_dir'"):
        load_config(path, ["data.task_dir.pos=x"])
    with pytest.raises(ConfigError, match=r"^config key 'model.hierarchical.task_layers' only applies"):
        load_config(path, ["model.hierarchical.task_layers.pos=1"])
    path.write_text("tasks: [pos]\ndata:\n  root: d\nmodel:\n  bilstm:\n    hidden: 0\n")
    with pytest.raises(ConfigError, match=rf"^{path}:6: config key 'model.bilstm.hidden'"):  # the file's own key
        load_config(path, ["model.bilstm.layers=1"])


def test_masks_for_a_model_that_is_not_sparse_are_refused():
    with pytest.raises(ConfigError, match=r"^config key 'sparse.masks' gives the task masks of model.sharing sparse, "
                                          r"but model.sharing is 'hard'"):
        load_config(None, ["tasks=[pos,ner]", "model.sharing=hard", "sparse.masks=m.safetensors"])
    assert load_config(None, ["tasks=[pos,ner]", "model.sharing=sparse", "sparse.masks=m.safetensors"]).sparse.masks


def _user_task(folder: Path, name: str) -> str:
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}_file.yaml"
    path.write_text(f"name: {name}\nformat: conll\ncolumns: [tokens, tag]\nlabel_column: tag\n"
                    f"files: {{train: train.txt, dev: dev.txt}}\n", encoding="utf-8")
    return str(path)


def test_options_name_a_task_file_by_the_name_it_gives(tmp_path):
    # a task file is named by its `name:` in every option that names a task (hierarchical.task_layers,
    # private_embedder_tasks, data.task_dirs), as for a built-in task; its path is not a name
    ent, pol = _user_task(tmp_path, "ent"), _user_task(tmp_path, "pol")
    tasks = f"tasks=[{ent},{pol}]"
    config = load_config(None, [tasks, "model.sharing=hierarchical", "model.bilstm.layers=2",
                                "model.hierarchical.task_layers={pol: 1}", "data.task_dirs={ent: a, pol: b}"])
    assert config.model.hierarchical.task_layers == {"pol": 1}
    config = load_config(None, [tasks, "model.sharing=hard", "model.private_embedder=words",
                                "model.private_embedder_tasks=[ent]"])
    assert config.model.private_embedder_tasks == ["ent"]
    with pytest.raises(ConfigError, match=r"'model.private_embedder_tasks'.*\['ent', 'pol'\]"):
        load_config(None, [tasks, "model.sharing=hard", "model.private_embedder=words",
                           f"model.private_embedder_tasks=[{ent}]"])


def test_a_corpus_folder_for_a_task_the_run_lacks_is_refused(tmp_path):
    # a misspelt task name in data.task_dirs was ignored, and the task read the corpus of data.dir
    with pytest.raises(ConfigError, match=r"^config key 'data.task_dirs.nerr': 'nerr' is not among the run's tasks "
                                          r"\['ner'\]"):
        load_config(None, ["tasks=[ner]", "data.dir=x", "data.task_dirs.nerr=y"])
    with pytest.raises(ConfigError, match=r"^config key 'data.hub_paths.pos': 'pos' is not"):
        load_config(None, ["tasks=[ner]", "data.source=hub", "data.hub_paths.pos=y"])
    # the file's own entry is named by its line; an override's entry by the override
    path = tmp_path / "c.yaml"
    path.write_text("tasks: [ner]\ndata:\n  dir: x\n  task_dirs:\n    nerr: y\n")
    with pytest.raises(ConfigError, match=rf"^{path}:5: config key 'data.task_dirs.nerr'"):
        load_config(path)
    path.write_text("tasks: [ner]\ndata:\n  dir: x\n  task_dirs:\n    ner: y\n")
    with pytest.raises(ConfigError, match=r"^config key 'data.task_dirs.nerr'"):
        load_config(path, ["data.task_dirs.nerr=z"])
    pol = _user_task(tmp_path, "pol")
    assert load_config(None, [f"tasks=[ner,{pol}]", "data.task_dirs.pol=y"]).data.task_dirs == {"pol": "y"}


# -- strategy options: each strategy's own section, and the flat spelling of before -------------------------------
def test_a_strategys_options_are_its_own_section_and_the_flat_spelling_is_read_with_a_notice(tmp_path):
    import dataclasses

    from sparseshare.logs import messages_to

    path = tmp_path / "routing.yaml"
    path.write_text("model:\n  sharing: routing\n  routing_rho: 0.1\n  routing_pass: true\n", encoding="utf-8")
    notices = []
    with messages_to(notices.append):
        config = load_config(path, ["model.routing_blocks=3"])
    assert (config.model.routing.rho, config.model.routing.pass_block, config.model.routing.blocks) == (0.1, True, 3)
    assert "config key 'model.routing_rho' is now spelt 'model.routing.rho': read as that" in notices
    assert "config key 'model.routing_pass' is now spelt 'model.routing.pass_block': read as that" in notices
    assert "config key 'model.routing_blocks' is now spelt 'model.routing.blocks': read as that" in notices
    written = config.to_dict()["model"]
    assert written["routing"]["rho"] == 0.1 and "routing_rho" not in written
    assert config_from_dict(config.to_dict()) == config  # written and read back: the same config
    # an override in the flat spelling wins over the file's section, as any override does
    path.write_text("model:\n  sharing: sparse\n  sparse:\n    prunable: null\n", encoding="utf-8")
    assert load_config(path, ["model.prunable=[layers.*]"]).model.sparse.prunable == ["layers.*"]
    # both spellings in one file: which one was meant is unknown
    path.write_text("model:\n  sharing: routing\n  routing_rho: 0.1\n  routing:\n    rho: 0.2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"'model.routing_rho' is the former spelling of 'model.routing.rho', "
                                          r"which is given too"):
        load_config(path)
    # a copy does not share its sections with the original, and what is set on any section is kept
    hard = load_config(None, [])
    other = dataclasses.replace(hard.model)
    other.sharing = "routing"
    other.routing.rho = 0.5
    assert hard.model.routing.rho == 0.3 and other.routing.rho == 0.5
    hard.model.roaming.ratio = 0.7  # another strategy's option, set: refused as a config key would be
    with pytest.raises(ConfigError, match=r"'model.roaming.ratio' only applies to model.sharing=roaming"):
        config_from_dict(hard.to_dict())


def test_a_saved_config_of_the_flat_spelling_gets_the_values_it_ran_with_and_todays_is_left_alone():
    from sparseshare.config import upgrade_saved_model_config

    old = {"sharing": "roaming", "roaming_ratio": 0.5, "routing_rho": 0.3, "prunable": None}  # every field, flat
    assert upgrade_saved_model_config(old) == {
        "sharing": "roaming", "roaming": {"masked_steps": False, "cut_recurrence": False, "ratio": 0.5}}
    today = load_config(None, ["model.sharing=roaming"]).to_dict()["model"]  # every option of the section written
    assert upgrade_saved_model_config(today) == today


def test_the_selected_strategys_section_is_written_whole_even_when_chosen_after_construction():
    from sparseshare.config import ModelConfig, model_config_dict

    model = ModelConfig()
    model.sharing = "roaming"  # never read before it is written out
    written = model_config_dict(model)
    assert written["roaming"] == {"ratio": 0.5, "delta": 100, "fixed": False, "masked_steps": True,
                                  "cut_recurrence": True, "keep_coverage": False}
    assert "routing" not in written  # another strategy's defaults are not written
