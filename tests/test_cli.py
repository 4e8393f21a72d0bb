"""The ``sparseshare`` command line: train, evaluate, tag, and its error messages."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from sparseshare.sharing import STRATEGIES

from conftest import ROOT, tiny_overrides, write_tiny_corpus

pytestmark = pytest.mark.slow  # every test here starts processes


def sparseshare(*args, stdin: str | None = None, check: bool = True):
    done = subprocess.run([sys.executable, "-m", "sparseshare.cli", *map(str, args)], input=stdin, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    data = write_tiny_corpus(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("run")
    sparseshare("train", *tiny_overrides(data, out, **{"train.epochs": 2}))
    return out / "model", data


def test_overrides_may_stand_on_both_sides_of_a_flag(monkeypatch, capsys):
    import sparseshare.cli as cli

    seen = []
    monkeypatch.setattr(cli, "_train", lambda args: seen.append((args.overrides, args.overwrite)))
    monkeypatch.setattr(cli, "_train_sparse", lambda args: seen.append((args.overrides, args.resume)))
    cli.main(["train", "--config", "c.yaml", "a.b=1", "--overwrite", "train.epochs=1"])
    cli.main(["train-sparse", "--resume", "a.b=1", "--config", "c.yaml", "c.d=2"])
    assert seen == [(["a.b=1", "train.epochs=1"], True), (["a.b=1", "c.d=2"], True)]
    for argv in (["train", "a.b=1", "--bogus"], ["train", "a.b=1", "--overwrite", "oops"], ["tag", "m", "x", "y"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
        assert "unrecognized arguments" in capsys.readouterr().err


def test_train_writes_model_and_results(model_dir):
    model, _ = model_dir
    results = json.loads((model.parent / "results.json").read_text())
    assert set(results["dev"]) == set(results["test"]) == {"pos", "chunk", "ner"}
    card = (model / "README.md").read_text()  # the model card names the command that trained the model
    assert "Produced by:" in card and "sparseshare train " in card and "train.epochs=2" in card


def test_evaluate_prints_table_and_writes_json(model_dir, tmp_path):
    model, data = model_dir
    done = sparseshare("evaluate", model, "--split", "dev", "--data-dir", data, "--output", tmp_path / "r.json")
    assert "pos" in done.stdout and "PER" in done.stdout and "LOC" in done.stdout
    results = json.loads((tmp_path / "r.json").read_text())
    assert {"precision", "recall", "f1", "types"} <= set(results["ner"])
    assert "accuracy" in results["pos"]


def test_tag_stdin_conll_and_json(model_dir):
    model, _ = model_dir
    done = sparseshare("tag", model, "-", stdin="John lives in Paris .\n\nMary visited Rome\n")
    blocks = [b for b in done.stdout.strip().split("\n\n")]
    assert len(blocks) == 2
    first = [line.split("\t") for line in blocks[0].splitlines()]
    assert [row[0] for row in first] == ["John", "lives", "in", "Paris", "."] and all(len(r) == 4 for r in first)
    assert "tokens/s" in done.stderr
    done = sparseshare("tag", model, "--format", "json", "--tasks", "ner", stdin="John lives in Paris .\n")
    row = json.loads(done.stdout)
    assert row["tokens"][0] == "John" and list(row["tags"]) == ["ner"] and len(row["tags"]["ner"]) == 5


def test_tag_json_names_each_object_s_input_line_and_errors_name_the_line(model_dir):
    """Blank lines are skipped, so a JSON object says which input line it tags; a reader that stops early (`| head`)
    ends the command quietly."""
    model, _ = model_dir
    done = sparseshare("tag", model, "--format", "json", stdin="John lives .\n\n  \nMary visited Rome\n")
    assert [json.loads(line)["line"] for line in done.stdout.splitlines()] == [1, 4]
    done = sparseshare("tag", model, "--tokenized", stdin="John lives\n\n\nMary \ufeff went\n", check=False)
    assert done.returncode == 1 and "stdin:4: token 2 ('\\ufeff') has no visible character" in done.stderr
    reader = subprocess.Popen([sys.executable, "-m", "sparseshare.cli", "tag", str(model)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdin.write(("John lives in Paris .\n" * 3000).encode())
    reader.stdin.close()
    reader.stdout.readline()
    reader.stdout.close()  # as `| head -1` does
    assert reader.wait(timeout=300) == 0, reader.stderr.read().decode()[-2000:]
    assert b"Broken pipe" not in reader.stderr.read()


def test_masks_show_ends_quietly_when_its_reader_stops_early(tmp_path):
    # `sparseshare masks show M --png x.png | head -1`: the report's reader is gone, the heatmap is still drawn
    import torch

    import sparseshare.cli as cli
    from conftest import tiny_config, tiny_model

    model, _ = tiny_model(tiny_config(write_tiny_corpus(tmp_path), tmp_path / "run", **{"model.sharing": "sparse"}))
    generator = torch.Generator().manual_seed(0)
    model.sharing.set_masks({task: {name: torch.rand(p.shape, generator=generator) < 0.5
                                    for name, p in model.sharing.prunable().items()} for task in model.tasks})
    folder, png = model.save_pretrained(tmp_path / "model"), tmp_path / "overlap.png"
    reader = subprocess.Popen([sys.executable, "-m", "sparseshare.cli", "masks", "show", str(folder), "--png", str(png)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert reader.stdout.readline().startswith(b"density")
    reader.stdout.close()  # as `| head -1` does, before the heatmap is drawn
    assert reader.wait(timeout=300) == 0, reader.stderr.read().decode()[-2000:]
    assert b"Broken pipe" not in reader.stderr.read() and png.is_file()
    args, unknown = cli.build_parser().parse_known_args(["masks", "show", "m", "--quiet"])  # as after every command
    assert not unknown and args.verbosity == "WARNING"


def test_a_predictions_file_keeps_three_fields_a_line_for_tokens_with_spaces(tmp_path):
    # CoNLL-U allows a token such as "New York"; conlleval and our rescoring split each line on whitespace
    from sparseshare.cli import write_conll_predictions

    path = write_conll_predictions(tmp_path / "test.ner.conll", [["New York", "is"], ["Rome"]],
                                   [["B-LOC", "O"], ["B-LOC"]], [["B-LOC", "O"], ["O"]])
    assert path.read_text(encoding="utf-8") == "New_York B-LOC B-LOC\nis O O\n\nRome B-LOC O\n\n"


def test_evaluate_checks_its_output_paths_before_it_scores(model_dir, tmp_path):
    model, data = model_dir
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir").mkdir()
    for args, message in ((["--output", tmp_path / "adir"], "--output .*adir is a directory"),
                          (["--predictions", tmp_path / "afile"], "--predictions .*afile is a file"),
                          (["--output", tmp_path / "afile" / "r.json"], "--output .*afile is a file, not a folder")):
        done = sparseshare("evaluate", model, "--split", "dev", "--data-dir", data, *args, check=False)
        assert done.returncode == 1 and "dev:" not in done.stdout, done.stdout  # refused before the scoring
        assert re.search(message, done.stderr), done.stderr
    sparseshare("evaluate", model, "--split", "dev", "--data-dir", data, "--output", tmp_path / "new" / "r.json")
    assert json.loads((tmp_path / "new" / "r.json").read_text())["ner"]


def test_tag_file(model_dir, tmp_path):
    model, _ = model_dir
    (tmp_path / "in.txt").write_text("Rome .\n")
    assert sparseshare("tag", model, tmp_path / "in.txt").stdout.startswith("Rome\t")


def test_tag_raw_text_is_tokenised_and_split_into_sentences(model_dir):
    model, _ = model_dir
    done = sparseshare("tag", model, "--format", "json", stdin="John lives in Paris. Mary visited Rome.\n")
    doc = json.loads(done.stdout)
    assert doc["tokens"] == ["John", "lives", "in", "Paris", ".", "Mary", "visited", "Rome", "."]
    assert doc["sentences"] == [[0, 5], [5, 9]] and doc["offsets"][3] == [14, 19]
    assert all(doc["text"][s["start_char"]:s["end_char"]] == s["text"] for s in doc["spans"]["ner"])
    conll = sparseshare("tag", model, stdin="John lives in Paris. Mary visited Rome.\n").stdout
    assert len(conll.strip().split("\n\n")) == 2  # one block per sentence
    tokenized = sparseshare("tag", model, "--tokenized", stdin="Paris. Rome\n").stdout
    assert [line.split("\t")[0] for line in tokenized.strip().splitlines()] == ["Paris.", "Rome"]


def test_push_without_network_fails_clearly(model_dir):
    model, _ = model_dir
    done = subprocess.run([sys.executable, "-m", "sparseshare.cli", "push", str(model), "someone/tiny"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "could not upload" in done.stderr and "OfflineModeIsEnabled" in done.stderr


@pytest.mark.parametrize("args,stdin,message", [
    (["tag", "{model}", "-"], "\n  \n", "no text to tag"),
    (["tag", "{model}", "-", "--tasks", "srl"], "a b\n", "unknown task(s) ['srl']"),
    (["tag", "{tmp}/missing"], "a\n", "model folder not found"),
    (["export", "{model}", "{tmp}/out", "--task", "ner"], None, "'bilstm' encoder, which has no transformers"),
    (["export", "{model}", "{tmp}/out", "--task", "srl"], None, "unknown task(s) ['srl']"),
    (["train", "train.lrr=0.1"], None, "unknown config key 'train.lrr'"),
    (["train", "tasks=[nerr]", "train.epochs=1"], None, "unknown task 'nerr'"),
    (["train", "model.sharing=soft"], None, f"unknown strategy 'soft'; valid: {sorted(STRATEGIES)}"),
])
def test_errors_are_clear(model_dir, tmp_path, args, stdin, message):
    model, _ = model_dir
    args = [a.replace("{model}", str(model)).replace("{tmp}", str(tmp_path)) for a in args]
    done = sparseshare(*args, stdin=stdin, check=False)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_evaluate_writes_conlleval_predictions_that_rescore_to_the_same_numbers(model_dir, tmp_path):
    import gzip

    from seqeval.metrics import f1_score

    model, data = model_dir
    sparseshare("evaluate", model, "--split", "test", "--data-dir", data, "--output", tmp_path / "r.json",
                "--predictions", tmp_path / "pred", "--gzip")
    results = json.loads((tmp_path / "r.json").read_text())
    blocks = gzip.open(tmp_path / "pred" / "test.ner.conll.gz", "rt").read().strip("\n").split("\n\n")
    rows = [[line.split(" ") for line in block.split("\n")] for block in blocks]
    assert len(rows) == 48 and all(len(r) == 3 for block in rows for r in block)
    assert [r[0] for r in rows[0]] == ["John", "lives", "in", "Paris", "."]
    gold, pred = [[r[1] for r in block] for block in rows], [[r[2] for r in block] for block in rows]
    assert round(100 * f1_score(gold, pred), 6) == round(results["ner"]["f1"], 6)
    text = gzip.open(tmp_path / "pred" / "test.pos.conll.gz", "rt").read()
    pos = [line.split(" ") for line in text.splitlines() if line]
    assert round(100 * sum(g == p for _, g, p in pos) / len(pos), 6) == round(results["pos"]["accuracy"], 6)


# -- the network and the Hub: one line, never a traceback --------------------------------------------------------
HUB_FAILURES = ["refused token", "missing repo", "server error", "offline, not cached", "unreachable",
                "dataset not found"]


def _hub_failure(name: str) -> Exception:
    """The error huggingface_hub (or datasets) raises for ``name``, made as they make it (HTTP errors from a response
    by hf_raise_for_status)."""
    import httpx2 as httpx  # huggingface_hub's HTTP client

    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub.errors import LocalEntryNotFoundError
    from huggingface_hub.utils import hf_raise_for_status

    def http(status, url, message):
        response = httpx.Response(status, request=httpx.Request("GET", url), headers={"x-request-id": "r1"},
                                  json={"error": message})
        try:
            hf_raise_for_status(response)
        except Exception as err:  # noqa: BLE001 - whatever type huggingface_hub chose for this response
            return err
        raise AssertionError(f"no error for HTTP {status}")

    repo = "https://huggingface.co/api/models/someone/tiny/revision/main"
    return {
        "refused token": lambda: http(401, "https://huggingface.co/api/repos/create", "Invalid username or password."),
        "missing repo": lambda: http(401, repo, "Repository not found"),
        "server error": lambda: http(500, repo, "Internal Error"),
        "offline, not cached": lambda: LocalEntryNotFoundError(
            "An error happened while trying to locate the files on the Hub, and we cannot find the appropriate "
            "snapshot folder for the specified revision on the local disk.\nPlease check your internet connection "
            "and try again."),
        "unreachable": lambda: httpx.ConnectError("[Errno 111] Connection refused"),
        "dataset not found": lambda: DatasetNotFoundError(
            "Dataset 'someone/tiny' doesn't exist on the Hub or cannot be accessed."),
    }[name]()


def _raising(error):
    def fail(*args, **kwargs):
        raise error
    return fail


def _one_line_exit(argv) -> str:
    from sparseshare.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    message = str(exit_.value.code)
    assert exit_.value.code != 0 and "\n" not in message, message
    return message


@pytest.mark.parametrize("failure", HUB_FAILURES[:-1])
def test_a_model_that_cannot_be_downloaded_fails_in_one_line(failure, monkeypatch):
    import huggingface_hub

    from sparseshare.errors import ModelFolderError
    from sparseshare.model import MultiTaskTagger

    error = _hub_failure(failure)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _raising(error))
    with pytest.raises(ModelFolderError) as info:
        MultiTaskTagger.from_pretrained("someone/tiny")
    assert "as a Hub repo id" in str(info.value) and "'someone/tiny'" in str(info.value)
    assert f"({type(error).__name__}: " in str(info.value)
    assert "\n" not in str(info.value)
    message = _one_line_exit(["tag", "someone/tiny", "-"])
    assert message.startswith("sparseshare tag: error: model folder not found: ") and type(error).__name__ in message


@pytest.mark.parametrize("failure", HUB_FAILURES)
def test_a_hub_dataset_that_cannot_be_loaded_fails_in_one_line(failure, tmp_path, monkeypatch):
    import datasets

    from sparseshare.data.corpus import load_split
    from sparseshare.hub import HubError
    from sparseshare.tasks import load_task

    error = _hub_failure(failure)
    monkeypatch.setattr(datasets, "load_dataset", _raising(error))
    with pytest.raises(HubError, match=rf"^task 'ner': cannot load the Hub dataset 'eriktks/conll2003' "
                                       rf"\(train split\): {type(error).__name__}: [^\n]+$"):
        load_split(load_task("ner"), "train", source="hub")
    message = _one_line_exit(["train", "tasks=[ner]", "data.source=hub", f"output_dir={tmp_path / 'run'}",
                              "train.log_with=none", "train.progress_bar=false"])
    assert message.startswith("sparseshare train: error: task 'ner': cannot load the Hub dataset")


@pytest.mark.parametrize("failure", HUB_FAILURES[:-1])
def test_a_push_that_fails_ends_in_one_line(model_dir, failure, monkeypatch):
    import huggingface_hub

    model, _ = model_dir
    error = _hub_failure(failure)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", _raising(error))
    message = _one_line_exit(["push", str(model), "someone/tiny"])
    assert message.startswith(f"sparseshare push: error: could not upload {model} to someone/tiny: "
                              f"{type(error).__name__}: ")
