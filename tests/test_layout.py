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
        with pytest.raises(ConfigError, match=r"'model.cross_stitch_init' only applies to model.sharing=cross_stitch "
                                              r"\(model.sharing is 'toy_top_two'\)"):
            tiny_config(tiny_corpus, tmp_path / "bad",
                        **{"model.sharing": "toy_top_two", "model.cross_stitch_init": 0.5})
        config = tiny_config(tiny_corpus, tmp_path / "run", **{"model.sharing": "toy_top_two", "train.epochs": 1})
        run_training(config, log=quiet)
        card = (tmp_path / "run" / "model" / "README.md").read_text()
        assert "## Top two layers" in card and "@misc{toy2026" in card
        model = MultiTaskTagger.from_pretrained(tmp_path / "run" / "model")
        assert isinstance(model.sharing, TopTwoLayers)
        assert len(model.predict(TINY_SENTENCES)["ner"]) == len(TINY_SENTENCES)
    finally:
        del STRATEGIES["toy_top_two"]
