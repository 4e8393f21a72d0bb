"""The layout: no import cycles inside sparseshare, counting imports at module level and inside functions."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "sparseshare"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                while target and target not in modules:  # `import sparseshare.data.vocab as v`, or a name in it
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("sparseshare"):
                    graph[name].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "sparseshare.recipes.train" in graph["sparseshare.cli"]  # imported inside _train()
    assert "sparseshare.data.vocab" in graph["sparseshare.model"]


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_dependencies_point_one_way_the_library_never_imports_a_recipe():
    graph = import_graph()
    assert {"sparseshare.recipes.train", "sparseshare.recipes.train_sparse"} <= set(graph)
    upward = {module: sorted(n for n in imports if n.startswith("sparseshare.recipes"))
              for module, imports in graph.items()
              if not module.startswith("sparseshare.recipes") and module != "sparseshare.cli"}
    assert not {m: r for m, r in upward.items() if r}


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]


def test_a_strategy_is_one_file_plus_its_registration(tiny_corpus, tmp_path):
    """A toy strategy registered from this test file alone: the config accepts it, refuses other strategies'
    options with it, training and saving use it, the model card shows its section and citation, and the saved
    model loads and tags."""
    import pytest

    from sparseshare.config import ConfigError
    from sparseshare.model import MultiTaskTagger
    from sparseshare.sharing import STRATEGIES, SharingStrategy, register
    from sparseshare.recipes.train import run_training

    from conftest import TINY_SENTENCES, quiet, tiny_config

    @register("toy_top_two")
    class TopTwoLayers(SharingStrategy):
        """Every task reads the mean of the encoder's top two layers."""
        citation = "@misc{toy2026, title = {A toy strategy}}"

        def __init__(self, build_encoder, tasks, config):
            super().__init__(build_encoder, tasks, config)
            self.encoder = build_encoder()

        @property
        def output_dim(self):
            return self.encoder.output_dim

        def forward(self, batch, task):
            layers = self.encoder(batch)
            return (layers[-1] + layers[-2]) / 2

        def card_section(self, model):
            return ["## Top two layers", "", f"Every task reads the mean of layers {self.encoder.num_layers - 1} and "
                                             f"{self.encoder.num_layers}."]

    try:
        with pytest.raises(ConfigError, match=r"'model.cross_stitch.init' only applies to model.sharing=cross_stitch "
                                              r"\(model.sharing is 'toy_top_two'\)"):
            tiny_config(tiny_corpus, tmp_path / "bad",
                        **{"model.sharing": "toy_top_two", "model.cross_stitch.init": 0.5})
        config = tiny_config(tiny_corpus, tmp_path / "run", **{"model.sharing": "toy_top_two", "train.epochs": 1})
        run_training(config, log=quiet)
        card = (tmp_path / "run" / "model" / "README.md").read_text()
        assert "## Top two layers" in card and "@misc{toy2026" in card
        model = MultiTaskTagger.from_pretrained(tmp_path / "run" / "model")
        assert isinstance(model.sharing, TopTwoLayers)
        assert len(model.predict(TINY_SENTENCES)["ner"]) == len(TINY_SENTENCES)
    finally:
        del STRATEGIES["toy_top_two"]


def test_a_strategy_with_options_is_one_file_plus_its_registration(tiny_corpus, tmp_path):
    """A toy strategy with an option of its own, declared in this test file alone: the config reads it from its
    section (model.toy_top_k.k), checks its type and value by key, refuses the section under another strategy,
    writes it into the run's config.yaml and the model folder's config.json, and the saved model loads with it and
    tags."""
    import dataclasses
    import json

    import pytest
    import yaml

    from sparseshare.config import ConfigError
    from sparseshare.model import MultiTaskTagger
    from sparseshare.recipes.train import run_training
    from sparseshare.sharing import STRATEGIES, SharingStrategy, register

    from conftest import TINY_SENTENCES, quiet, tiny_config

    @dataclasses.dataclass
    class TopKOptions:
        k: int = 2  # how many of the top layers every task reads the mean of

    @register("toy_top_k")
    class TopKLayers(SharingStrategy):
        Options = TopKOptions

        @classmethod
        def check_options(cls, config, tasks, depth, depth_key=""):
            if depth is not None and not 1 <= config.toy_top_k.k <= depth:
                raise ConfigError(f"config key 'model.toy_top_k.k' must be in [1, {depth}], got {config.toy_top_k.k}")

        def __init__(self, build_encoder, tasks, config):
            super().__init__(build_encoder, tasks, config)
            self.encoder = build_encoder()
            self.check_options(config, tasks, self.encoder.num_layers)
            self.k = config.toy_top_k.k

        @property
        def output_dim(self):
            return self.encoder.output_dim

        def forward(self, batch, task):
            return sum(self.encoder(batch)[-self.k:]) / self.k

    try:
        for bad, message in (({"model.toy_top_k.k": 5}, r"'model.toy_top_k.k' must be in \[1, 2\], got 5"),
                             ({"model.toy_top_k.k": "two"}, r"'model.toy_top_k.k'.*int"),
                             ({"model.toy_top_k.j": 1}, r"unknown config key 'model.toy_top_k.j'")):
            with pytest.raises(ConfigError, match=message):
                tiny_config(tiny_corpus, tmp_path / "bad", **{"model.sharing": "toy_top_k", **bad})
        with pytest.raises(ConfigError, match=r"'model.toy_top_k.k' only applies to model.sharing=toy_top_k"):
            tiny_config(tiny_corpus, tmp_path / "bad", **{"model.toy_top_k.k": 1})
        config = tiny_config(tiny_corpus, tmp_path / "run", **{"model.sharing": "toy_top_k", "model.toy_top_k.k": 1,
                                                                "train.epochs": 1})
        assert config.model.toy_top_k == TopKOptions(k=1)
        run_training(config, log=quiet)
        assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]["toy_top_k"] == {"k": 1}
        saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
        assert saved["model"]["toy_top_k"] == {"k": 1}
        model = MultiTaskTagger.from_pretrained(tmp_path / "run" / "model")
        assert isinstance(model.sharing, TopKLayers) and model.sharing.k == 1
        assert len(model.predict(TINY_SENTENCES)["ner"]) == len(TINY_SENTENCES)
    finally:
        del STRATEGIES["toy_top_k"]


def test_a_training_plugin_is_one_class_passed_to_the_recipe(tiny_corpus, tmp_path):
    """A plugin written in this test file alone sees every moment of the loop in order, with the recipe's state, and
    can end the run: here at the end of the epoch in which a budget of steps is spent. The stopped run's selected
    model saves, reloads and tags, and a resumed run (a plugin's state is the recipe's) trains no further."""
    from sparseshare.model import MultiTaskTagger
    from sparseshare.recipes.train import run_training
    from sparseshare.training.plugins import TrainingPlugin

    from conftest import TINY_SENTENCES, quiet, tiny_config

    class StepBudget(TrainingPlugin):
        def __init__(self, steps):
            self.steps, self.moments = steps, []

        def on_train_start(self, recipe):
            self.moments.append(("start", recipe.state.global_step))

        def before_optimizer_step(self, recipe, step):
            assert step.grad_norm > 0 and len(step.per_task) == 1  # round-robin: one task per step
            self.moments.append(("before", recipe.state.global_step))

        def after_step(self, recipe, step):
            self.moments.append(("after", recipe.state.global_step))

        def after_epoch(self, recipe, epoch):  # the epoch that spends the budget is the last (in the checkpoint too)
            self.moments.append(("epoch", epoch.epoch, set(epoch.dev)))
            recipe.state.stopped_early = recipe.state.stopped_early or recipe.state.global_step >= self.steps

        def on_train_end(self, recipe):
            self.moments.append(("end", recipe.state.epoch))

    steps_per_epoch = 18  # 48 sentences / batch 8, for each of 3 tasks
    config = tiny_config(tiny_corpus, tmp_path / "run", **{"train.epochs": 4})
    budget = StepBudget(steps_per_epoch + 1)
    results = run_training(config, log=quiet, plugins=[budget])
    assert results["epochs_run"] == 2 and results["stopped_early"]
    assert budget.moments[0] == ("start", 0) and budget.moments[-1] == ("end", 2)
    steps = [m for m in budget.moments if m[0] in ("before", "after")]
    # every step of epochs 1 and 2 (the budget is spent in epoch 2)
    assert steps[:4] == [("before", 0), ("after", 1), ("before", 1), ("after", 2)]
    assert [m for m in budget.moments if m[0] == "epoch"] == [("epoch", 1, {"pos", "chunk", "ner"}),
                                                              ("epoch", 2, {"pos", "chunk", "ner"})]
    assert len(steps) == 2 * 2 * steps_per_epoch
    model = MultiTaskTagger.from_pretrained(tmp_path / "run" / "model")
    assert len(model.predict(TINY_SENTENCES)["ner"]) == len(TINY_SENTENCES)
    again = StepBudget(steps_per_epoch + 1)
    assert run_training(config, resume=True, log=quiet, plugins=[again])["epochs_run"] == 2
    assert [m[0] for m in again.moments] == ["start", "end"]


def test_no_module_outside_the_encoders_names_an_encoder_kind():
    """What a module needs of an encoder it asks the encoder's kind (sparseshare/encoders/registry.py), so adding an
    encoder touches no other module: outside sparseshare/encoders/, no string (an f-string's parts included; not a
    docstring) names a kind as a word of its own, but the config's default. A kind's option section in a config key
    (``model.bilstm.hidden``) is not a name of the kind, nor is the phrase "from scratch"."""
    import re

    from sparseshare.encoders import ENCODER_KINDS

    word = re.compile(rf"(?<![.\w])(?<!from )({'|'.join(map(re.escape, ENCODER_KINDS))})(?![.\w])")
    named = []
    for path in PACKAGE.rglob("*.py"):
        if "encoders" in path.relative_to(PACKAGE).parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and word.search(node.value)):
                named.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert named == ["sparseshare/config.py:" + str(next(
        i for i, line in enumerate((PACKAGE / "config.py").read_text().splitlines(), 1)
        if line.strip() == 'encoder: str = "bilstm"'))]


def test_no_module_outside_the_strategies_branches_on_a_strategy():
    """What a module needs of a strategy it asks the strategy's class (its options, checks, saved-size checks,
    upgrades of saved options, card section), so adding a strategy touches no other module: outside
    sparseshare/sharing/, no comparison tests a ``sharing`` value against a strategy's name, but the sparse recipe,
    which is sparse sharing's pipeline."""
    from sparseshare.sharing import STRATEGIES

    def names_a_strategy(node) -> bool:
        values = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
        return any(isinstance(v, ast.Constant) and v.value in STRATEGIES for v in values)

    branching = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "sharing" or relative == Path("recipes/train_sparse.py"):
            continue
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if (isinstance(node, ast.Compare) and "sharing" in ast.get_source_segment(source, node)
                    and any(names_a_strategy(side) for side in (node.left, *node.comparators))):
                branching.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert branching == []


def test_an_encoder_is_one_file_plus_its_registration(tiny_corpus, tmp_path):
    """A toy encoder kind registered from this test file alone: the config accepts its name, sparse sharing prunes
    its default weights and a layer-wise strategy runs its layers, training and saving use it, the model card
    describes it, the model folder's checks count its layers, and the saved model loads and tags the same."""
    import pytest
    import torch
    from torch import nn

    from sparseshare.config import ConfigError
    from sparseshare.encoders import ENCODER_KINDS, EncoderKind, register_encoder
    from sparseshare.encoders.bilstm import word_embedder
    from sparseshare.encoders.layerwise import LayerwiseEncoder
    from sparseshare.model import MultiTaskTagger
    from sparseshare.recipes.train import run_training

    from conftest import TINY_SENTENCES, quiet, tiny_config

    class ConvEncoder(LayerwiseEncoder):
        """The word table and char-CNN of model.bilstm, then model.bilstm.layers width-preserving convolutions."""
        depth_key, unit_kind, norm = "model.bilstm.layers", "channels", None

        def __init__(self, embedder, width, layers):
            super().__init__()
            self.embedder = embedder
            self.layers = nn.ModuleList(nn.Conv1d(embedder.output_dim if i == 0 else width, width, 3, padding=1)
                                        for i in range(layers))
            self.num_layers, self.output_dim, self.units = layers, width, width

        def embed(self, batch, **parts):
            return self.embedder(batch, **parts)

        @staticmethod
        def run_layer(layer, x, mask, unit_mask=None):
            y = torch.relu(layer(x.transpose(1, 2)).transpose(1, 2)) * mask.unsqueeze(-1)
            return y if unit_mask is None else y * unit_mask.to(y.dtype)

        def finish(self, x, mask, norm=None):
            return x

        @staticmethod
        def layer_input_dim(layer):
            return layer.in_channels

    @register_encoder
    class ConvKind(EncoderKind):
        name = "toy_conv"
        word_features = True
        layer_access = "direct"
        default_prunable = ("layers.*.weight",)
        layer_tensor = r"^(.*\.\d+)\.weight$"  # the encoder's layers.<i> or a strategy's copy of one
        citation = "@misc{toyconv2026, title = {A toy encoder}}"

        @classmethod
        def build(cls, model, num_words, num_chars, pretrained_embeddings=None, checkpoint_parts=None):
            return ConvEncoder(word_embedder(model, num_words, num_chars, pretrained_embeddings), 24,
                               model.bilstm.layers)

        @classmethod
        def depth(cls, model):
            return "model.bilstm.layers", model.bilstm.layers

        @classmethod
        def describe(cls, model):
            return f"toy convolutions ({model.bilstm.layers} layers)"

        @classmethod
        def size_checks(cls, model):
            return [("*.<i>.weight", r"\.\d+\.weight$", 3, 0, "toy width", 24)]

    try:
        with pytest.raises(ConfigError, match=r"'model.encoder': 'toy_cnn' is not one of \[.*'toy_conv'\]"):
            tiny_config(tiny_corpus, tmp_path / "bad", **{"model.encoder": "toy_cnn"})
        for sharing in ("hard", "bottom"):
            run = tmp_path / sharing
            config = tiny_config(tiny_corpus, run, **{"model.encoder": "toy_conv", "model.sharing": sharing,
                                                      "train.epochs": 1})
            run_training(config, log=quiet)
            card = (run / "model" / "README.md").read_text()
            assert "toy convolutions (2 layers)" in card and "@misc{toyconv2026" in card
            tagger = MultiTaskTagger.from_pretrained(run / "model")
            assert isinstance(tagger.sharing.encoder, ConvEncoder)
            predictions = tagger.predict(TINY_SENTENCES)["ner"]
            assert len(predictions) == len(TINY_SENTENCES)
            assert MultiTaskTagger.from_pretrained(run / "model").predict(TINY_SENTENCES)["ner"] == predictions
        # the folder's checks read the kind: a config.json that asks for more layers than the weights hold
        saved = tmp_path / "hard" / "model" / "config.json"
        saved.write_text(saved.read_text().replace('"layers": 2', '"layers": 3'))
        with pytest.raises(ValueError, match=r"'model.bilstm.layers' is 3, but model.safetensors holds the weights "
                                             r"of 2 encoder layer\(s\)"):
            MultiTaskTagger.from_pretrained(tmp_path / "hard" / "model")
        # sparse sharing's default prunable weights are the kind's
        from sparseshare.sharing import STRATEGIES

        sparse = STRATEGIES["sparse"](lambda: ConvKind.build(config.model, 10, 10), ["ner"],
                                      tiny_config(tiny_corpus, tmp_path / "s", **{
                                          "model.encoder": "toy_conv", "model.sharing": "sparse"}).model)
        assert list(sparse.prunable()) == ["layers.0.weight", "layers.1.weight"]
    finally:
        del ENCODER_KINDS["toy_conv"]
