"""Bad input gets a clear error naming its key, file or line, and what can be repaired without changing the data
(a byte-order mark, CRLF or CR-only line endings) is repaired. One test per case of the issue."""
from __future__ import annotations

import io
import json
import shutil
import sys

import pytest

from sparseshare.cli import main
from sparseshare.config import ConfigError, load_config
from sparseshare.data.corpus import load_split
from sparseshare.data.readers import CorpusFormatError, read_conll
from sparseshare.tasks import load_task
from sparseshare.training.data import load_task_data
from sparseshare.recipes.train import run_training

from conftest import TINY_CONLL, quiet, tiny_config, tiny_overrides, write_tiny_corpus

COLUMNS = ["tokens", "pos", "chunk", "ner"]


# -- config ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("train.lr=nan", "'train.lr' must be a finite number"),
    ("train.lr=.inf", "'train.lr' must be a finite number"),
    ("train.lr=-.inf", "'train.lr' must be a finite number"),
    ("train.momentum=nan", "'train.momentum' must be a finite number"),
    ("train.head_lr=inf", "'train.head_lr' must be a finite number"),
    ("model.bilstm.dropout=nan", "'model.bilstm.dropout' must be a finite number"),
    ("train.clip=-1", "'train.clip' must be >= 0 (0 or null switches clipping off), got -1.0"),
    ("train.momentum=1.5", "'train.momentum' must be in [0, 1), got 1.5"),
    ("train.momentum=-0.1", "'train.momentum' must be in [0, 1)"),
    ("train.weight_decay=-1", "'train.weight_decay' must be >= 0"),
    ("train.seed=-3", "'train.seed' must be in [0, 4294967295]"),
    ("model.transformer.dropout=1.0", "'model.transformer.dropout' must be in [0, 1)"),
    ("model.scratch.dropout=-0.5", "'model.scratch.dropout' must be in [0, 1)"),
    ("model.transformer.stride=-1", "'model.transformer.stride' must be >= 0"),
    ("model.bilstm.char_filters=-8", "'model.bilstm.char_filters' must be >= 0"),
    ("data.min_word_count=0", "'data.min_word_count' must be >= 1"),
    ("model.scratch.heads=3", "'model.scratch.dim' (256) must be divisible by model.scratch.heads (3)"),
    ("model.cross_stitch.init=nan", "'model.cross_stitch.init' must be a finite number"),
    ("sparse.prune_fraction=nan", "'sparse.prune_fraction' must be a finite number"),
    ("train.lr=[0.1", "override 'train.lr=[0.1': the value is not valid YAML"),
])
def test_bad_numbers_are_rejected_by_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_a_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: 0.1\n  epochs: [1, 2\nmodel:\n  head: crf\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+:\d+: YAML syntax error"):
        load_config(path)
    path.write_bytes(b"train:\n  lr: 0.1\n  optimizer: \xe9\n")
    with pytest.raises(ConfigError, match=rf"{path}:3: not valid UTF-8"):
        load_config(path)


def test_a_config_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes("\ufefftrain:\n  lr: 0.25\n".encode())
    assert load_config(path).train.lr == 0.25


def test_a_directory_as_config_file(tmp_path):
    with pytest.raises(ConfigError, match="is a directory, not a YAML file"):
        load_config(tmp_path)


def test_the_cli_reports_a_yaml_error_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("train: {lr: 0.1\n")
    with pytest.raises(SystemExit, match=rf"sparseshare train: error: {path}:\d+:\d+: YAML syntax error"):
        main(["train", "--config", str(path)])


@pytest.mark.parametrize("where", ["before", "after", "environment"])
def test_debug_shows_the_whole_traceback_of_an_error_the_cli_would_report_in_one_line(tmp_path, monkeypatch, where):
    path = tmp_path / "bad.yaml"
    path.write_text("train: {lr: 0.1\n")
    argv = {"before": ["--debug", "train", "--config", str(path)], "after": ["train", "--config", str(path), "--debug"],
            "environment": ["train", "--config", str(path)]}[where]
    if where == "environment":
        monkeypatch.setenv("SPARSESHARE_DEBUG", "1")
    with pytest.raises(ConfigError, match="YAML syntax error"):  # the error itself, not a one-line exit
        main(argv)
    monkeypatch.setenv("SPARSESHARE_DEBUG", "0")
    with pytest.raises(SystemExit, match="sparseshare train: error: "):
        main(["train", "--config", str(path)])


def test_every_error_the_toolkit_raises_on_purpose_derives_from_one_base_and_keeps_its_builtin_one():
    """Callers catch ours (``except SparseshareError``) and not torch's; code that caught ValueError / OSError
    before still does."""
    import importlib
    import inspect
    import pkgutil

    import sparseshare
    from sparseshare import SparseshareError

    found = {}
    for info in pkgutil.walk_packages(sparseshare.__path__, "sparseshare."):
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == info.name:
                found[f"{info.name}.{name}"] = cls
    assert len(found) >= 14, sorted(found)
    assert [name for name, cls in found.items() if not issubclass(cls, SparseshareError)] == []
    builtin = {"ConfigError": ValueError, "ModelFolderError": FileNotFoundError, "InvalidModelFolderError": ValueError,
               "CheckpointError": ValueError, "TrainingDiverged": RuntimeError, "ExportError": ValueError,
               "RunFolderError": ValueError, "DiskFullError": OSError, "HubError": OSError,
               "CorpusFormatError": ValueError, "MissingSplitError": FileNotFoundError, "MaskError": ValueError}
    for name, cls in found.items():
        short = name.rsplit(".", 1)[1]
        if short in builtin:
            assert issubclass(cls, builtin[short]), name


def test_the_cli_reports_a_bad_task_file_in_one_line(tmp_path):
    path = tmp_path / "mytask.yaml"
    path.write_text("name: mytask\nformat: conll\ncolumns: [tokens, ner]\nlabel_column: ner\n"
                    "files: {train: 5, dev: dev.txt}\n")
    with pytest.raises(SystemExit, match=rf"^sparseshare train: error: {path}:5: task key 'files.train': 5 is not a "
                                         rf"valid str$"):
        main(["train", f"tasks=[pos,{path}]"])
    path.write_text("name: mytask\nfiles: {train: t.txt\n")
    with pytest.raises(SystemExit, match=rf"^sparseshare train: error: {path}:\d+:\d+: YAML syntax error"):
        main(["train", f"tasks=[pos,{path}]"])


def test_two_tasks_of_one_name_are_refused(tiny_corpus, tmp_path):
    path = tmp_path / "chunk.yaml"
    path.write_text("name: chunk\nformat: conll\ncolumns: [tokens, pos, chunk, ner]\nlabel_column: chunk\n"
                    "files: {train: train.txt, dev: dev.txt}\nscheme: iob2\nmetric: span_f1\n")
    with pytest.raises(ConfigError, match=r"config key 'tasks': .* gives two tasks named 'chunk'"):
        load_task_data(tiny_config(tiny_corpus, tmp_path / "run", tasks=f"[chunk,{path}]"))


# -- word vectors ----------------------------------------------------------------------------------------------
def test_a_missing_embeddings_file_names_the_key_before_any_corpus_is_read(tmp_path):
    config = tiny_config(tmp_path / "no_corpus_here", tmp_path / "run",
                         **{"model.bilstm.embeddings": str(tmp_path / "glove.txt")})
    with pytest.raises(FileNotFoundError, match=r"config key 'model.bilstm.embeddings': file not found: .*glove.txt"):
        run_training(config, log=quiet)  # the corpus folder does not exist either: the vectors are checked first
    assert not (tmp_path / "run").exists()


def test_a_directory_as_embeddings_file(tiny_corpus, tmp_path):
    config = tiny_config(tiny_corpus, tmp_path / "run", **{"model.bilstm.embeddings": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match=r"'model.bilstm.embeddings': .* is a directory, not a file"):
        run_training(config, log=quiet)


def test_a_corpus_given_as_embeddings_names_file_and_line(tiny_corpus, tmp_path):
    config = tiny_config(tiny_corpus, tmp_path / "run", **{"model.bilstm.embeddings": str(tiny_corpus / "train.txt"),
                                                            "model.bilstm.word_dim": 3})
    with pytest.raises(ValueError, match=r"train.txt:1: 'NNP' is not a number; a word-vector file has a word and 3 "):
        run_training(config, log=quiet)
    assert not (tmp_path / "run").exists()


def test_binary_embeddings_name_file_and_line(tmp_path):
    from sparseshare.data.vocab import read_word_vectors

    path = tmp_path / "vectors.bin"
    path.write_bytes(b"3 2\nthe \x8f\xa3\x00\x01\n")
    with pytest.raises(ValueError, match=rf"{path}:2: not valid UTF-8.*not .bin"):
        read_word_vectors(path)
    path.write_text("\ufeffthe 0.1 0.2\nnan 0.1 nan\n")
    with pytest.raises(ValueError, match=rf"{path}:2: the vector of 'nan' has a non-finite value"):
        read_word_vectors(path)
    path.write_text("\ufeffthe 0.1 0.2\n")
    assert read_word_vectors(path)[0] == ["the"]  # the byte-order mark is not part of the first word


# -- corpora ---------------------------------------------------------------------------------------------------
def _tiny_file(tmp_path, text: str | bytes, name="train.txt"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_a_byte_order_mark_is_dropped_before_docstart_and_before_a_token(tmp_path):
    reference = read_conll(_tiny_file(tmp_path, TINY_CONLL, "ref.txt"), COLUMNS)
    with_docstart = read_conll(_tiny_file(tmp_path, "\ufeff" + TINY_CONLL), COLUMNS)
    assert with_docstart == reference  # -DOCSTART- is still recognised: no '-X-' sentence
    body = TINY_CONLL.split("\n", 2)[2]  # starts with a token line
    assert read_conll(_tiny_file(tmp_path, "\ufeff" + body), COLUMNS) == reference
    assert read_conll(_tiny_file(tmp_path, "\ufeff" + body), COLUMNS)[0]["tokens"][0] == "John"


def test_docstart_variants_are_document_separators(tmp_path):
    text = "-docstart- -X- -X- O\n\nJohn NNP B-NP B-PER\n\n-DOCSTART-_2 -X- -X- O\nMary NNP B-NP B-PER\n"
    rows = read_conll(_tiny_file(tmp_path, text), COLUMNS)
    assert [r["tokens"] for r in rows] == [["John"], ["Mary"]]


@pytest.mark.parametrize("ending", ["\r\n", "\r"])
def test_crlf_and_cr_only_line_endings_read_as_lf(tmp_path, ending):
    reference = read_conll(_tiny_file(tmp_path, TINY_CONLL, "ref.txt"), COLUMNS)
    assert read_conll(_tiny_file(tmp_path, TINY_CONLL.replace("\n", ending)), COLUMNS) == reference


def test_a_bad_line_in_a_cr_only_file_is_named_without_quoting_the_file(tmp_path):
    text = (TINY_CONLL + "Oops NNP\n" + TINY_CONLL * 50).replace("\n", "\r")
    with pytest.raises(CorpusFormatError) as err:
        read_conll(_tiny_file(tmp_path, text), COLUMNS)
    assert f"train.txt:{TINY_CONLL.count(chr(10)) + 1}: expected 4 columns" in str(err.value)
    assert len(str(err.value)) < 300


def test_a_huge_line_is_shortened_in_the_error(tmp_path):
    with pytest.raises(CorpusFormatError) as err:
        read_conll(_tiny_file(tmp_path, "a " * 10000 + "\n"), COLUMNS)
    assert "(20000 characters)" in str(err.value) and len(str(err.value)) < 400


@pytest.mark.parametrize("label", ["-X-", "B-", "X-PER", "b-PER", "PER"])
def test_a_label_outside_the_scheme_names_file_and_line(tmp_path, label):
    write_tiny_corpus(tmp_path)
    text = (tmp_path / "train.txt").read_text().replace("Paris NNP B-NP B-LOC", f"Paris NNP B-NP {label}", 1)
    (tmp_path / "train.txt").write_text(text)
    line = text.splitlines().index(f"Paris NNP B-NP {label}") + 1
    with pytest.raises(CorpusFormatError, match=rf"train.txt:{line}: task 'ner': label '{label}' is not a IOB2 label"):
        load_split(load_task("ner"), "train", data_dir=tmp_path)


def test_an_ill_formed_transition_names_file_and_line(tmp_path):
    write_tiny_corpus(tmp_path)
    text = (tmp_path / "train.txt").read_text().replace("Paris NNP B-NP B-LOC", "Paris NNP B-NP I-LOC", 1)
    (tmp_path / "train.txt").write_text(text)
    line = text.splitlines().index("Paris NNP B-NP I-LOC") + 1
    with pytest.raises(CorpusFormatError, match=rf"train.txt:{line}: task 'ner': 1 training sentence\(s\) are not "
                                                rf"valid IOB2; the first is sentence 0 \(O -> I-LOC at token 3\)"):
        load_split(load_task("ner"), "train", data_dir=tmp_path)
    assert len(load_split(load_task("ner"), "dev", data_dir=tmp_path)) == 48  # dev: only label shapes are checked


def test_a_chunk_label_x_from_docstart_is_rejected_in_every_split(tmp_path):
    write_tiny_corpus(tmp_path)
    (tmp_path / "test.txt").write_text("x -X- -X- O\n")
    with pytest.raises(CorpusFormatError, match=r"test.txt:1: task 'chunk': label '-X-' is not a IOB2 label"):
        load_split(load_task("chunk"), "test", data_dir=tmp_path)


def test_a_directory_where_a_corpus_file_is_expected(tmp_path):
    write_tiny_corpus(tmp_path)
    (tmp_path / "dev.txt").unlink()
    (tmp_path / "dev.txt").mkdir()
    with pytest.raises(CorpusFormatError, match=r"dev.txt: is a directory, not a corpus file"):
        load_split(load_task("ner"), "dev", data_dir=tmp_path)


def test_a_bom_corpus_trains_the_same_vocabulary(tiny_corpus, tmp_path):
    config = tiny_config(tiny_corpus, tmp_path / "run")
    plain = load_task_data(config)
    for split in ("train", "dev", "test"):
        path = tiny_corpus / f"{split}.txt"
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    bom = load_task_data(config)
    assert all(plain[t].train_tokens == bom[t].train_tokens and plain[t].labels.itos == bom[t].labels.itos
               for t in plain)


# -- model folders ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input_model")
    data = write_tiny_corpus(root)
    run_training(tiny_config(data, root / "run", **{"train.epochs": 1}), log=quiet)
    return root / "run" / "model"


@pytest.mark.parametrize("name, value", [("config.json", [1, 2]), ("vocab.json", "words"), ("labels.json", 3)])
def test_model_json_that_is_not_an_object(trained, tmp_path, name, value):
    from sparseshare.model import MultiTaskTagger

    folder = tmp_path / "model"
    shutil.copytree(trained, folder)
    (folder / name).write_text(json.dumps(value))
    with pytest.raises(ValueError, match=rf"{name}: must hold a JSON object, found a {type(value).__name__}"):
        MultiTaskTagger.from_pretrained(folder)


def test_a_model_folder_never_imports_the_module_it_names(tmp_path, monkeypatch, tiny_bert):
    """The issue's probe: a config.json naming ``package:<module>`` with a side effect; loading the folder must not
    import it (the saved encoder/ folder is all a model needs)."""
    from sparseshare.model import MultiTaskTagger
    from sparseshare.tagger import Tagger

    (tmp_path / "data").mkdir()
    data = write_tiny_corpus(tmp_path / "data")
    overrides = tiny_overrides(data, tmp_path / "run", **{"model.encoder": "transformer", "train.epochs": 1,
                                                         "model.transformer.name_or_path": str(tiny_bert)})
    run_training(load_config(None, overrides), log=quiet)
    folder = tmp_path / "run" / "model"
    config = json.loads((folder / "config.json").read_text())
    config["model"]["transformer"]["name_or_path"] = "package:probe_sidefx"
    (folder / "config.json").write_text(json.dumps(config))
    probe = tmp_path / "modules"
    probe.mkdir()
    witness = tmp_path / "imported"
    (probe / "probe_sidefx.py").write_text(f"open({str(witness)!r}, 'w').close()\nMODEL_DIR = '.'\n")
    monkeypatch.syspath_prepend(str(probe))
    monkeypatch.chdir(probe)
    tagger = Tagger.from_pretrained(folder)
    assert tagger("EU rejects German call .").tokens[0] == "EU"
    MultiTaskTagger.from_pretrained(folder)
    assert not witness.exists() and "probe_sidefx" not in sys.modules


# -- text to tag -----------------------------------------------------------------------------------------------
def test_the_tagger_drops_a_byte_order_mark(trained):
    from sparseshare.tagger import Tagger

    tagger = Tagger.from_pretrained(trained)
    plain, bom = tagger("John lives in Paris ."), tagger("\ufeffJohn lives in Paris .")
    assert bom.tokens == plain.tokens and bom.tags == plain.tags
    assert bom.offsets[0] == (1, 5) and bom.text[slice(*bom.offsets[0])] == "John"


def test_the_tagger_drops_a_zero_width_space(trained):
    # text copied from web pages carries U+200B, which Python's str.split() does not see as a space: a lone one
    # between words would otherwise be a token with a tag and no visible character
    from sparseshare.tagger import Tagger

    tagger = Tagger.from_pretrained(trained)
    plain, zwsp = tagger("John lives in Paris ."), tagger("John \u200b lives in\u200bParis .")
    assert zwsp.tokens == plain.tokens and zwsp.tags == plain.tags
    assert zwsp.offsets[3] == (16, 21) and zwsp.text[slice(*zwsp.offsets[3])] == "Paris"
    with pytest.raises(ValueError, match=r"sentences\[0\]\[1\] = '\\u200b': a token must contain a non-space"):
        tagger.tag_tokens([["John", "\u200b", "lives"]])


@pytest.mark.parametrize("mark", ["\u200e", "\u200f", "\u200d", "\u200c", "\u00ad", "\u2060", "\u200e\u200f"])
def test_format_characters_alone_are_not_tokens(trained, mark):
    # direction marks (text pasted from right-to-left pages), zero-width (non-)joiners, soft hyphens, word joiners:
    # between spaces they are no word, and were tokens with a tag of their own
    from sparseshare.tagger import Tagger

    tagger = Tagger.from_pretrained(trained)
    plain, marked = tagger("John lives in Paris ."), tagger(f"John {mark} lives in Paris .")
    assert marked.tokens == plain.tokens and marked.tags == plain.tags
    with pytest.raises(ValueError, match=r"sentences\[0\]\[1\] = .*: a token must contain a non-space"):
        tagger.tag_tokens([["John", mark, "lives"]])


def test_drawn_format_characters_stay_tokens():
    # a few format characters are visible signs (Arabic end of ayah, number sign): tokens like any other
    from sparseshare.text import tokenize

    assert [t.text for t in tokenize("a \u06dd b \u0600 c")] == ["a", "\u06dd", "b", "\u0600", "c"]


def _tag(trained, monkeypatch, capsys, data: bytes, *args):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    main(["tag", str(trained), *args])
    return capsys.readouterr().out


def test_tag_reads_stdin_strictly_and_names_the_line(trained, monkeypatch, capsys):
    with pytest.raises(SystemExit, match=r"sparseshare tag: error: stdin:2: not valid UTF-8"):
        _tag(trained, monkeypatch, capsys, "John lives in Paris .\nM\xfcller in K\xf6ln\n".encode("latin-1"), "-")
    with pytest.raises(SystemExit, match=r"stdin:1: a NUL byte; this looks like binary data"):
        _tag(trained, monkeypatch, capsys, b"\x00\x01\x02binary\n", "-")


def test_tag_names_the_file_and_line_of_bad_bytes(trained, tmp_path):
    path = tmp_path / "input.txt"
    path.write_bytes(b"fine text\nmore fine text\n\xf0\x28\x8c\x28 broken\n")
    with pytest.raises(SystemExit, match=rf"sparseshare tag: error: {path}:3: not valid UTF-8"):
        main(["tag", str(trained), str(path)])


def test_tag_drops_a_byte_order_mark_and_reads_any_line_ending(trained, monkeypatch, capsys, tmp_path):
    plain = _tag(trained, monkeypatch, capsys, b"John lives in Paris .\nMary visited Rome .\n", "-")
    crlf = b"\xef\xbb\xbfJohn lives in Paris .\r\nMary visited Rome .\r\n"
    assert _tag(trained, monkeypatch, capsys, crlf, "-") == plain
    path = tmp_path / "mac.txt"
    path.write_bytes(b"\xef\xbb\xbfJohn lives in Paris .\rMary visited Rome .\r")
    main(["tag", str(trained), str(path)])
    assert capsys.readouterr().out == plain


@pytest.mark.parametrize("args", [[], ["--format", "json"], ["--tokenized"]])
def test_tag_streams_its_input_in_chunks_with_the_output_of_one_pass(trained, monkeypatch, capsys, args):
    """`tag` reads, tags and writes TAG_CHUNK_LINES lines at a time (a large file is never held whole): the output,
    line numbers included, is that of one pass, whatever the line endings across the chunks."""
    import sparseshare.cli as cli

    data = (b"\xef\xbb\xbfJohn lives in Paris .\r\n\r\nMary visited Rome .\rThe United Nations met .\n\n\n"
            b"EU rejects German call .\r\nPeter Blackburn\nBRUSSELS 1996-08-22\n")
    whole = _tag(trained, monkeypatch, capsys, data, "-", *args)
    monkeypatch.setattr(cli, "TAG_CHUNK_LINES", 2)
    assert _tag(trained, monkeypatch, capsys, data, "-", *args) == whole
    # a bad line stops the command there, after the chunks before it were written
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data + b"M\xfcller\n"), encoding="utf-8"))
    with pytest.raises(SystemExit, match=r"stdin:10: not valid UTF-8"):
        main(["tag", str(trained), "-", *args])
    assert capsys.readouterr().out.startswith(whole.split("\n")[0])


def test_tag_reports_its_speed_on_stderr_unless_quiet(trained, monkeypatch, capsys):
    for quiet in ([], ["--quiet"]):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"John lives .\n"), encoding="utf-8"))
        main([*quiet, "tag", str(trained), "-"])
        captured = capsys.readouterr()
        assert captured.out.startswith("John\t") and "tagged" not in captured.out
        assert ("tagged 1 lines, 3 tokens" in captured.err) == (not quiet)


def test_tag_a_directory(trained, tmp_path):
    with pytest.raises(SystemExit, match=rf"sparseshare tag: error: {tmp_path} is a directory; give a text file"):
        main(["tag", str(trained), str(tmp_path)])
