"""A regular (non-editable) install works: the wheel carries every subpackage and the built-in task files, and a
fresh virtual environment with only the wheel (the heavy dependencies come from the environment running the tests)
trains nothing but can build, save, reload and tag a model from a folder outside the checkout."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

from sparseshare.tasks import builtin_tasks

pytestmark = pytest.mark.slow  # every test here builds a wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a clean copy of the sources: setuptools reuses a checkout's build/ folder, whose stale
    files would hide a package that the current setup.py leaves out."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in ("setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("sparseshare", "tasks"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out)], check=True, capture_output=True, timeout=300)
    (found,) = out.glob("sparseshare-*.whl")
    return found


def test_wheel_contains_every_builtin_task(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"sparseshare/tasks/builtin/{task}.yaml" for task in builtin_tasks()} <= names
    assert len(builtin_tasks()) >= 7


def test_wheel_contains_every_subpackage(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = sorted(str(p.parent.relative_to(ROOT)) for p in (ROOT / "sparseshare").rglob("*.py"))
    missing = sorted({p for p in packages if f"{p}/__init__.py" not in names})
    assert not missing, f"not in the wheel as packages: {missing}"


INSTALLED_USE = textwrap.dedent("""
    import sys
    # the development machine's editable install (a meta-path finder from a .pth file in the system site-packages)
    # must not stand in for anything the wheel lacks
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    from pathlib import Path
    import sparseshare, sparseshare.data
    from sparseshare import Tagger
    from sparseshare.config import ModelConfig
    from sparseshare.data.vocab import Vocab
    from sparseshare.model import MultiTaskTagger
    from sparseshare.tasks import builtin_tasks, load_task

    venv = Path(sys.argv[1]).resolve()
    assert Path(sparseshare.__file__).resolve().is_relative_to(venv), sparseshare.__file__
    assert Path(sparseshare.data.__file__).resolve().is_relative_to(venv), sparseshare.data.__file__
    from sparseshare.tasks import BUILTIN_DIR
    assert BUILTIN_DIR.resolve().is_relative_to(venv), BUILTIN_DIR
    assert {"chunk", "chunk2000", "ner", "pos", "pp", "upos", "xpos"} <= set(builtin_tasks()), builtin_tasks()
    # the recipes ship with the package: `sparseshare train` / `train-sparse` run them from the wheel
    import sparseshare.recipes.train, sparseshare.recipes.train_sparse
    for recipe in (sparseshare.recipes.train, sparseshare.recipes.train_sparse):
        assert Path(recipe.__file__).resolve().is_relative_to(venv), recipe.__file__
    config = ModelConfig(sharing="hard")
    config.bilstm.word_dim, config.bilstm.hidden, config.bilstm.char_filters = 8, 8, 4
    tasks = [load_task("pos"), load_task("ner")]
    labels = {"pos": ["NNP", "VBZ", "."], "ner": ["O", "B-PER", "I-PER", "E-PER", "S-PER"]}
    words, chars = Vocab(["john", "runs"]), Vocab(list("Johnrus."))
    MultiTaskTagger(config, tasks, labels, words, chars).save_pretrained("model")
    doc = Tagger.from_pretrained("model")("John runs.")
    assert doc.tokens == ["John", "runs", "."] and set(doc.tags) == {"pos", "ner"}, doc
    print("installed wheel ok:", sparseshare.__file__)
""")


def dependency_folders() -> list[str]:
    """The site-packages folders the running interpreter imports from: its virtual environment's and, if that one
    sees them, the base interpreter's. (``venv --system-site-packages`` would give the *base* interpreter's only,
    which lack the dependencies when the tests run inside a virtual environment.)"""
    return [p for p in sys.path if p and Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]


def test_the_installed_wheel_builds_saves_reloads_and_tags(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True,
                   timeout=120)
    python = venv / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    # Lines of a .pth file are appended to sys.path after the venv's own site-packages, so the wheel installed
    # there wins; the .pth files *inside* those folders are not run, so an editable install of the checkout
    # cannot supply sparseshare either.
    (Path(own) / "dependencies.pth").write_text("\n".join(dependency_folders()) + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    work = tmp_path / "elsewhere"  # outside the checkout: the current directory cannot supply sparseshare
    work.mkdir()
    script = work / "use.py"
    script.write_text(INSTALLED_USE)
    done = subprocess.run([str(python), str(script), str(venv)], cwd=work, capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "installed wheel ok" in done.stdout
