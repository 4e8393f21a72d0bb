"""The documentation: the MkDocs site builds in strict mode (no broken link, anchor, reference or include), offline,
and the README keeps the two commands that the project promises (CI runs the README's test command)."""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT

MAIN_COMMAND = ('pip install -e ".[dev]" && accelerate launch recipes/train_sparse.py '
                '--config recipes/configs/conll03_sparse.yaml')
TEST_COMMAND = 'pip install -e ".[dev]" && python -m pytest'


def require_mkdocs() -> None:
    """The docs tools are dev dependencies (setup.py); without them the build test skips locally and fails in CI."""
    missing = []
    for module in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python", "pymdownx"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # the parent package of a dotted name is missing
            found = False
        if not found:
            missing.append(module)
    if missing:
        message = f"documentation tools not installed ({', '.join(missing)}): pip install -e \".[dev]\""
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: the docs build must not be skipped)")
        pytest.skip(message)


@pytest.mark.slow  # starts a process (a few seconds)
def test_the_site_builds_in_strict_mode(tmp_path):
    """`mkdocs build --strict` fails on any warning: a link to a missing page, file or anchor, an unresolved API
    reference, a missing snippet (benchmarks/RESULTS.md, the README's sections), a docstring mkdocstrings cannot
    render. The build runs from the repository root, as `mkdocs serve` does, with no network."""
    require_mkdocs()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", "mkdocs.yml",
                           "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"mkdocs build --strict failed (exit {done.returncode}):\n{output}"
    assert "WARNING" not in output, output
    site = tmp_path / "site"
    for page in ("index.html", "tutorial/index.html", "configuration/index.html", "api/tagger/index.html",
                 "benchmarks/results/index.html", "limitations/index.html"):
        assert (site / page).is_file(), page
    # the API pages were rendered from the docstrings, and RESULTS.md was included whole, with its figure
    assert 'id="sparseshare.tagger.Tagger.from_pretrained"' in (site / "api/tagger/index.html").read_text("utf-8")
    results = (site / "benchmarks/results/index.html").read_text("utf-8")
    sections, fenced = [], False
    for line in (ROOT / "benchmarks" / "RESULTS.md").read_text("utf-8").splitlines():
        fenced ^= line.startswith("```")
        if not fenced and line.startswith("## "):
            sections.append(line)
    assert sections and results.count("<h2 ") == len(sections), "benchmarks/RESULTS.md not included whole"
    assert (site / "benchmarks/results/tradeoff/tradeoff.png").is_file()


def test_the_build_needs_no_network():
    """mkdocstrings fetches object inventories only when told to (`inventories` / `import`); snippets downloads
    only with `url_download`. Neither is configured."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    plugins = {name: options for entry in config["plugins"]
               for name, options in (entry.items() if isinstance(entry, dict) else [(entry, {})])}
    handlers = plugins["mkdocstrings"]["handlers"]["python"]
    assert "inventories" not in handlers and "import" not in handlers
    snippets = next(e["pymdownx.snippets"] for e in config["markdown_extensions"]
                    if isinstance(e, dict) and "pymdownx.snippets" in e)
    assert not snippets.get("url_download")


def test_the_readme_keeps_the_two_commands_verbatim():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert MAIN_COMMAND in readme
    assert TEST_COMMAND in readme
    # .ci/run runs exactly the README's test command
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert TEST_COMMAND in ci.splitlines()


def test_the_configuration_reference_lists_every_config_key():
    """docs/configuration.md has a row for every field of the config dataclasses, so a new key cannot be left
    undocumented (and a removed one is noticed by the reader of that page)."""
    from sparseshare.config import Config, ModelConfig

    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")

    def keys(cls, prefix=""):
        for field in dataclasses.fields(cls):
            default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
            if field.name == "strategy_options":  # each strategy's section, model.<strategy>.<option>
                for name, options in ModelConfig.sections().items():
                    yield from keys(options, f"{prefix}{name}.")
            elif dataclasses.is_dataclass(default):
                yield from keys(type(default), f"{prefix}{field.name}.")
            else:
                yield prefix + field.name

    missing = [key for key in keys(Config) if f"| `{key}` |" not in page]
    assert not missing, f"keys without a row in docs/configuration.md: {missing}"


def test_the_add_a_task_guide_lists_every_task_key():
    from sparseshare.tasks import TaskSpec

    page = (ROOT / "docs" / "how-to" / "add-a-task.md").read_text(encoding="utf-8")
    missing = [field.name for field in dataclasses.fields(TaskSpec) if f"| `{field.name}` |" not in page]
    assert not missing, f"task keys missing from docs/how-to/add-a-task.md: {missing}"
