"""Corpus readers (CoNLL, CoNLL-U, PP attachment) and split loading (local files and the Hub code path)."""
from pathlib import Path

import datasets
import pytest
from datasets import ClassLabel, Dataset, Features, Sequence, Value

from sparseshare.data.corpus import MissingSplitError, load_hub_split, load_local_split, load_split
from sparseshare.data.readers import CorpusFormatError, read_conll, read_conllu, read_pp
from sparseshare.tasks import DevCarveOut, HubSource, TaskSpec

FIXTURES = Path(__file__).parent / "fixtures"
CONLL_COLUMNS = ["tokens", "pos", "chunk", "ner"]


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# read_conll


def test_read_conll_fixture():
    rows = read_conll(FIXTURES / "tiny.conll", CONLL_COLUMNS)
    assert [r["tokens"] for r in rows] == [
        ["EU", "rejects", "German", "call", "."],
        ["Peter", "Blackburn"],
        ["BRUSSELS", "1996-08-22"],
        ["Japan", "wins"],
    ]
    assert rows[0]["ner"] == ["B-ORG", "O", "B-MISC", "O", "O"]
    assert rows[0]["pos"] == ["NNP", "VBZ", "JJ", "NN", "."]
    assert rows[0]["chunk"] == ["B-NP", "B-VP", "B-NP", "I-NP", "O"]
    assert rows[1]["ner"] == ["B-PER", "I-PER"]  # whitespace-only line separates sentences
    assert rows[3] == {"tokens": ["Japan", "wins"], "pos": ["NNP", "VBZ"], "chunk": ["B-NP", "B-VP"],
                       "ner": ["B-LOC", "O"]}  # last sentence without final blank line
    for row in rows:
        assert set(row) == set(CONLL_COLUMNS)
        assert len({len(v) for v in row.values()}) == 1


def test_read_conll_docstart_without_blank_line_and_crlf(tmp_path):
    path = _write(tmp_path / "a.txt", "a X\r\nb Y\r\n-DOCSTART- O\r\nc Z\r\n\r\n\r\n")
    rows = read_conll(path, ["tokens", "tag"])
    assert rows == [{"tokens": ["a", "b"], "tag": ["X", "Y"]}, {"tokens": ["c"], "tag": ["Z"]}]


def test_read_conll_tab_separated(tmp_path):
    path = _write(tmp_path / "a.txt", "a\tX\nb \t Y\n")
    assert read_conll(path, ["tokens", "tag"]) == [{"tokens": ["a", "b"], "tag": ["X", "Y"]}]


@pytest.mark.parametrize(
    "text,line",
    [
        ("a B\nb C\n\nc D E\n", 4),
        ("a\n", 1),
        ("-DOCSTART- O\n\nx O\ny\n", 4),
        ("a O\n\n\n\nb O O\n", 5),
    ],
)
def test_read_conll_wrong_column_count(tmp_path, text, line):
    path = _write(tmp_path / "bad.txt", text)
    with pytest.raises(CorpusFormatError) as info:
        read_conll(path, ["tokens", "tag"])
    assert f"{path}:{line}:" in str(info.value)
    assert "expected 2 columns" in str(info.value)
    assert info.value.line == line and info.value.path == str(path)


def test_read_conll_non_utf8(tmp_path):
    path = _write(tmp_path / "bad.txt", b"ok O\nfine O\n\ncaf\xff O\nx O\n")
    with pytest.raises(CorpusFormatError) as info:
        read_conll(path, ["tokens", "tag"])
    assert f"{path}:4:" in str(info.value)
    assert "UTF-8" in str(info.value)
    assert info.value.line == 4


@pytest.mark.parametrize("text", ["", "\n\n  \n", "-DOCSTART- -X- O\n\n"])
def test_read_conll_no_sentences(tmp_path, text):
    path = _write(tmp_path / "empty.txt", text)
    with pytest.raises(CorpusFormatError, match="no sentences") as info:
        read_conll(path, ["tokens", "tag"])
    assert str(path) in str(info.value)


def test_read_conll_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_conll(tmp_path / "nope.txt", ["tokens", "tag"])


def test_corpus_format_error_is_value_error():
    err = CorpusFormatError("f.txt", None, "boom")
    assert isinstance(err, ValueError)
    assert str(err) == "f.txt: boom" and err.line is None


# ---------------------------------------------------------------------------------------------
# read_conllu


def test_read_conllu_fixture():
    rows = read_conllu(FIXTURES / "tiny.conllu")
    assert rows == [
        {"tokens": ["I", "do", "n't", "know", "."], "upos": ["PRON", "AUX", "PART", "VERB", "PUNCT"],
         "xpos": ["PRP", "VBP", "RB", "VB", "."]},
        {"tokens": ["Hello"], "upos": ["INTJ"], "xpos": ["UH"]},
    ]


def test_read_conllu_selected_columns():
    rows = read_conllu(FIXTURES / "tiny.conllu", ["tokens", "lemma", "deprel"])
    assert rows[0] == {"tokens": ["I", "do", "n't", "know", "."], "lemma": ["I", "do", "not", "know", "."],
                       "deprel": ["nsubj", "aux", "advmod", "root", "punct"]}


def test_read_conllu_unknown_column():
    with pytest.raises(ValueError, match="ner"):
        read_conllu(FIXTURES / "tiny.conllu", ["tokens", "ner"])


def test_read_conllu_bad_field_count(tmp_path):
    good = "1\tI\tI\tPRON\tPRP\t_\t0\troot\t_\t_"
    path = _write(tmp_path / "bad.conllu", f"# c\n{good}\n\n# c2\n1 Hello hello INTJ UH _ 0 root _ _\n")
    with pytest.raises(CorpusFormatError) as info:
        read_conllu(path)
    assert f"{path}:5:" in str(info.value)
    assert "10" in str(info.value)


def test_read_conllu_only_comments(tmp_path):
    path = _write(tmp_path / "c.conllu", "# a\n# b\n\n")
    with pytest.raises(CorpusFormatError, match="no sentences"):
        read_conllu(path)


# ---------------------------------------------------------------------------------------------
# read_pp


def test_read_pp_fixture():
    rows = read_pp(FIXTURES / "tiny_pp.txt")
    assert rows == [
        {"tokens": ["join", "board", "as", "director"], "pp": ["O", "O", "V", "O"]},
        {"tokens": ["is", "chairman", "of", "N.V."], "pp": ["O", "O", "N", "O"]},
        {"tokens": ["named", "director", "of", "conglomerate"], "pp": ["O", "O", "N", "O"]},
    ]


def test_read_pp_label_column_name():
    rows = read_pp(FIXTURES / "tiny_pp.txt", ["tokens", "attach"])
    assert rows[0]["attach"] == ["O", "O", "V", "O"]


def test_read_pp_bad_label(tmp_path):
    path = _write(tmp_path / "pp.txt", "0 a b c d V\n\n1 a b c d X\n")
    with pytest.raises(CorpusFormatError, match="V or N") as info:
        read_pp(path)
    assert f"{path}:3:" in str(info.value)


def test_read_pp_bad_field_count(tmp_path):
    path = _write(tmp_path / "pp.txt", "0 a b c d V\n1 a b c N\n")
    with pytest.raises(CorpusFormatError, match="6 fields") as info:
        read_pp(path)
    assert f"{path}:2:" in str(info.value)


def test_read_pp_non_utf8(tmp_path):
    path = _write(tmp_path / "pp.txt", b"0 a b c d V\n1 a \xfe c d N\n")
    with pytest.raises(CorpusFormatError) as info:
        read_pp(path)
    assert info.value.line == 2


# ---------------------------------------------------------------------------------------------
# corpus.py: local splits


def _spec(files, **kw):
    base = dict(name="t", format="conll", columns=["tokens", "tag"], label_column="tag", files=files)
    base.update(kw)
    return TaskSpec(**base)


def _numbered_corpus(path: Path, n: int) -> Path:
    return _write(path, "".join(f"w{i} L{i % 3}\nx{i} O\n\n" for i in range(n)))


def test_load_local_split_columns(tmp_path):
    for split in ("train", "dev", "test"):
        _write(tmp_path / f"{split}.txt", f"{split} NN B-NP B-PER\nword VB B-VP O\n")
    spec = TaskSpec(name="ner", format="conll", columns=CONLL_COLUMNS, label_column="ner",
                    files={"train": "train.txt", "dev": "dev.txt", "test": "test.txt"}, scheme="iob2",
                    metric="span_f1")
    for split in ("train", "dev", "test"):
        ds = load_local_split(spec, tmp_path, split)
        assert ds.column_names == ["tokens", "labels"]
        assert ds["tokens"] == [[split, "word"]]
        assert ds["labels"] == [["B-PER", "O"]]
    chunk = TaskSpec(name="chunk", format="conll", columns=CONLL_COLUMNS, label_column="chunk",
                     files={"train": "train.txt", "dev": "dev.txt"})
    assert load_local_split(chunk, tmp_path, "train")["labels"] == [["B-NP", "B-VP"]]


def test_load_local_split_conllu_and_pp(tmp_path):
    spec = TaskSpec(name="x", format="conllu", columns=["tokens", "upos", "xpos"], label_column="xpos",
                    files={"train": "tiny.conllu", "dev": "tiny.conllu"})
    ds = load_local_split(spec, FIXTURES, "dev")
    assert ds["labels"][0] == ["PRP", "VBP", "RB", "VB", "."]
    pp = TaskSpec(name="pp", format="pp", columns=["tokens", "pp"], label_column="pp",
                  files={"train": "tiny_pp.txt", "dev": "tiny_pp.txt"})
    ds = load_local_split(pp, FIXTURES, "train")
    assert ds["labels"][1] == ["O", "O", "N", "O"]


def test_dev_carve_out_deterministic_and_covering(tmp_path):
    original = _numbered_corpus(tmp_path / "full.txt", 40)
    all_rows = read_conll(original, ["tokens", "tag"])
    spec = _spec({"train": "full.txt"}, dev_from_train=DevCarveOut(fraction=0.25, seed=5))
    train = load_local_split(spec, tmp_path, "train")
    assert len(train) == 30
    # deterministic: the same split again, and from a fresh copy of the file
    (tmp_path / "copy").mkdir()
    again = _numbered_corpus(tmp_path / "copy" / "full.txt", 40)
    assert load_local_split(spec, tmp_path, "train")["tokens"] == train["tokens"]
    assert load_local_split(spec, again.parent, "train")["tokens"] == train["tokens"]
    # rows keep their original relative order
    ids = [int(t[0][1:]) for t in train["tokens"]]
    assert ids == sorted(ids)
    # a different seed gives a different split
    other = _spec({"train": "full.txt"}, dev_from_train=DevCarveOut(fraction=0.25, seed=6))
    assert load_local_split(other, tmp_path, "train")["tokens"] != train["tokens"]
    assert sorted(all_rows[i]["tokens"][0] for i in range(40)) == sorted(f"w{i}" for i in range(40))


def test_dev_carve_out_dev_split_is_deterministic(tmp_path):
    _numbered_corpus(tmp_path / "full.txt", 40)
    spec = _spec({"train": "full.txt"}, dev_from_train=DevCarveOut(fraction=0.25, seed=5))
    dev1 = load_local_split(spec, tmp_path, "dev")
    dev2 = load_local_split(spec, tmp_path, "dev")
    assert dev1["tokens"] == dev2["tokens"] and len(dev1) >= 1
    for tokens, labels in zip(dev1["tokens"], dev1["labels"]):
        i = int(tokens[0][1:])
        assert labels == [f"L{i % 3}", "O"]


def test_dev_carve_out_disjoint_from_train_and_covers_original(tmp_path):
    _numbered_corpus(tmp_path / "full.txt", 40)
    spec = _spec({"train": "full.txt"}, dev_from_train=DevCarveOut(fraction=0.25, seed=5))
    train = {t[0] for t in load_local_split(spec, tmp_path, "train")["tokens"]}
    dev = {t[0] for t in load_local_split(spec, tmp_path, "dev")["tokens"]}
    assert not train & dev
    assert len(dev) == 10
    assert train | dev == {f"w{i}" for i in range(40)}


def test_dev_file_wins_over_carve_out(tmp_path):
    _numbered_corpus(tmp_path / "train.txt", 20)
    _write(tmp_path / "dev.txt", "d O\n")
    spec = _spec({"train": "train.txt", "dev": "dev.txt"}, dev_from_train=DevCarveOut(fraction=0.5, seed=1))
    assert len(load_local_split(spec, tmp_path, "train")) == 20
    assert load_local_split(spec, tmp_path, "dev")["tokens"] == [["d"]]


def test_missing_split_file_error_names_file(tmp_path):
    _write(tmp_path / "train.txt", "a O\n")
    spec = _spec({"train": "train.txt", "dev": "dev_missing.txt"})
    with pytest.raises(FileNotFoundError, match="dev_missing.txt"):
        load_local_split(spec, tmp_path, "dev")
    with pytest.raises(FileNotFoundError, match="test"):
        load_local_split(spec, tmp_path, "test")  # no test split declared
    with pytest.raises(ValueError, match="unknown split"):
        load_local_split(spec, tmp_path, "validation")


def test_load_split_dispatch_errors(tmp_path):
    _write(tmp_path / "train.txt", "a O\n")
    spec = _spec({"train": "train.txt", "dev": "train.txt"})
    assert load_split(spec, "train", data_dir=tmp_path)["tokens"] == [["a"]]
    with pytest.raises(ValueError, match="data directory"):
        load_split(spec, "train")
    with pytest.raises(ValueError, match="source"):
        load_split(spec, "train", source="s3", data_dir=tmp_path)
    with pytest.raises(ValueError, match="no Hub dataset"):
        load_split(spec, "train", source="hub")


# ---------------------------------------------------------------------------------------------
# corpus.py: the Hub code path on a local dataset folder

NER_NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
SPLIT_ROWS = {
    "train": [(["Peter", "Blackburn", "visits", "Paris"], ["B-PER", "I-PER", "O", "B-LOC"]),
              (["Hi"], ["O"]),
              (["New", "York", "City"], ["B-LOC", "I-LOC", "I-LOC"])],
    "validation": [(["Anna", "left"], ["B-PER", "O"])],
    "test": [(["Berlin"], ["B-LOC"]), (["so", "it", "goes"], ["O", "O", "O"])],
}


@pytest.fixture
def hub_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    folder = tmp_path / "hubdata"
    folder.mkdir()
    features = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=NER_NAMES))})
    for split, rows in SPLIT_ROWS.items():
        data = {"tokens": [t for t, _ in rows], "ner_tags": [[NER_NAMES.index(x) for x in labs] for _, labs in rows]}
        Dataset.from_dict(data, features=features).to_parquet(str(folder / f"{split}.parquet"))
    local = tmp_path / "local"
    local.mkdir()
    for split, name in (("train", "train.txt"), ("validation", "dev.txt"), ("test", "test.txt")):
        _write(local / name, "\n".join("\n".join(f"{w} {lab}" for w, lab in zip(t, labs)) + "\n"
                                       for t, labs in SPLIT_ROWS[split]))
    return folder, local


def test_load_hub_split_maps_classlabels_and_matches_local(hub_folder):
    folder, local = hub_folder
    spec = _spec({"train": "train.txt", "dev": "dev.txt", "test": "test.txt"}, scheme="iob2", metric="span_f1",
                 hub=HubSource(id="nobody/none", label_column="ner_tags"))
    for split in ("train", "dev", "test"):
        hub = load_hub_split(spec, split, path_or_id=str(folder))
        loc = load_local_split(spec, local, split)
        assert hub.column_names == ["tokens", "labels"]
        assert hub["labels"] == loc["labels"]
        assert hub["tokens"] == loc["tokens"]
        assert all(isinstance(x, str) for seq in hub["labels"] for x in seq)
    assert load_hub_split(spec, "train", path_or_id=str(folder))["labels"][0] == ["B-PER", "I-PER", "O", "B-LOC"]
    same = load_split(spec, "test", source="hub", hub_path=str(folder))
    assert same["labels"] == [["B-LOC"], ["O", "O", "O"]]


def test_load_hub_split_missing_column(hub_folder):
    folder, _ = hub_folder
    spec = _spec({"train": "train.txt", "dev": "dev.txt"}, hub=HubSource(id="x/y", label_column="pos_tags"))
    with pytest.raises(ValueError, match="pos_tags"):
        load_hub_split(spec, "test", path_or_id=str(folder))


def test_load_hub_split_unknown_split_mapping(hub_folder):
    folder, _ = hub_folder
    spec = _spec({"train": "train.txt", "dev": "dev.txt"},
                 hub=HubSource(id="x/y", label_column="ner_tags", splits={"train": "train", "dev": "validation"}))
    with pytest.raises(MissingSplitError, match="no test split"):
        load_hub_split(spec, "test", path_or_id=str(folder))


def test_load_hub_split_dev_carve_out_disjoint(hub_folder):
    folder, _ = hub_folder
    spec = _spec({"train": "train.txt"}, dev_from_train=DevCarveOut(fraction=0.34, seed=0),
                 hub=HubSource(id="x/y", label_column="ner_tags", splits={"train": "train", "test": "test"}))
    train = list(load_hub_split(spec, "train", path_or_id=str(folder))["tokens"])
    dev = list(load_hub_split(spec, "dev", path_or_id=str(folder))["tokens"])
    assert len(train) == 2 and len(dev) == 1
    assert dev[0] not in train
    assert sorted(train + dev) == sorted(t for t, _ in SPLIT_ROWS["train"])
