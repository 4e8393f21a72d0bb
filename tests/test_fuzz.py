"""Fuzzing the corpus readers and the raw-text tokenizer (hypothesis, fixed seed, bounded number of examples).

Readers: valid files are corrupted at random (bytes flipped or inserted, lines cut, columns dropped, other
encodings, other line endings, a byte-order mark). Every outcome is either the same sentences (when the corruption
changes nothing a reader of the text sees), or exactly the sentences the corrupted text says (computed here by an
independent reading), or a :class:`CorpusFormatError` naming the file and a line of it; never another exception.
``pytest tests/test_fuzz.py --hypothesis-show-statistics`` prints how many cases each test tried.
"""
from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparseshare.data.readers import CorpusFormatError, read_conll, read_conllu, read_pp
from sparseshare.text import split_sentences, tokenize

FUZZ = settings(max_examples=300, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
COLUMNS = ["tokens", "pos", "chunk", "ner"]

WORD = st.text(st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), blacklist_characters="\ufeff\x85"),
               min_size=1, max_size=8)
TOKEN_LINE = st.tuples(WORD, st.sampled_from(["NNP", "VBZ", "DT", "."]), st.sampled_from(["B-NP", "I-NP", "O"]),
                       st.sampled_from(["O", "B-PER", "I-PER", "B-LOC"]))
SENTENCES = st.lists(st.lists(TOKEN_LINE, min_size=1, max_size=6), min_size=1, max_size=5)


def render(sentences, docstart: bool) -> str:
    blocks = ["\n".join(" ".join(fields) for fields in sentence) for sentence in sentences]
    return ("-DOCSTART- -X- -X- O\n\n" if docstart else "") + "\n\n".join(blocks) + "\n"


def expected_rows(sentences):
    return [{name: [fields[i] for fields in sentence] for i, name in enumerate(COLUMNS)} for sentence in sentences]


def independent_reading(data: bytes, n_columns: int):
    """What the bytes say, read without the reader's code: ('rows', rows) or ('error', line)."""
    lines = re.split(rb"\r\n|\r|\n", data)
    if lines and lines[-1] == b"":
        lines.pop()
    rows, current = [], []
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return "error", number
        if number == 1 and text.startswith("\ufeff"):
            text = text[1:]
        fields = text.split()
        if not fields or fields[0].upper().startswith("-DOCSTART-"):
            if current:
                rows.append(current)
                current = []
            continue
        if len(fields) != n_columns:
            return "error", number
        current.append(fields)
    if current:
        rows.append(current)
    return ("rows", expected_rows(rows)) if rows else ("error", None)


def read_or_error(path, reader=read_conll, columns=COLUMNS):
    try:
        return "rows", reader(path, columns)
    except CorpusFormatError as err:
        assert err.path == str(path)
        return "error", err.line


@FUZZ
@given(sentences=SENTENCES, docstart=st.booleans(), ending=st.sampled_from(["\n", "\r\n", "\r"]),
       bom=st.booleans(), padding=st.sampled_from([" ", "\t", "  ", " \t "]))
@pytest.mark.slow
def test_line_endings_bom_and_spacing_change_nothing(tmp_path_factory, sentences, docstart, ending, bom, padding):
    text = render(sentences, docstart).replace(" ", padding).replace("\n", ending)
    path = tmp_path_factory.mktemp("fuzz") / "train.txt"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    assert read_conll(path, COLUMNS) == expected_rows(sentences)


@FUZZ
@given(sentences=SENTENCES, data=st.data())
@pytest.mark.slow
def test_a_dropped_column_is_named_by_its_line(tmp_path_factory, sentences, data):
    lines = render(sentences, docstart=False).split("\n")
    token_lines = [i for i, line in enumerate(lines) if line.strip()]
    victim = data.draw(st.sampled_from(token_lines))
    fields = lines[victim].split(" ")
    del fields[data.draw(st.integers(0, len(fields) - 1))]
    lines[victim] = " ".join(fields)
    path = tmp_path_factory.mktemp("fuzz") / "train.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    assert read_or_error(path) == ("error", victim + 1)


@FUZZ
@given(sentences=SENTENCES, data=st.data(), bad=st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf0\x28"]))
@pytest.mark.slow
def test_invalid_utf8_is_named_by_its_line(tmp_path_factory, sentences, data, bad):
    raw = render(sentences, docstart=True).encode("utf-8")
    at = data.draw(st.integers(0, len(raw)))
    corrupted = raw[:at] + bad + raw[at:]
    path = tmp_path_factory.mktemp("fuzz") / "train.txt"
    path.write_bytes(corrupted)
    line = len(re.split(rb"\r\n|\r|\n", corrupted[:at]))
    assert read_or_error(path) == ("error", line)


@FUZZ
@given(sentences=SENTENCES, encoding=st.sampled_from(["latin-1", "cp1252", "utf-16"]))
def test_other_encodings_are_an_error_or_the_same_text(tmp_path_factory, sentences, encoding):
    text = render(sentences, docstart=True)
    try:
        raw = text.encode(encoding)
    except UnicodeEncodeError:
        return  # this text has no such encoding
    path = tmp_path_factory.mktemp("fuzz") / "train.txt"
    path.write_bytes(raw)
    outcome = read_or_error(path)
    assert outcome == independent_reading(raw, 4)
    if outcome[0] == "rows":  # read as UTF-8 without an error: only when the bytes are the same (ASCII text)
        assert raw == text.encode("utf-8")


@FUZZ
@given(sentences=SENTENCES, data=st.data())
@pytest.mark.slow
def test_random_damage_reads_as_the_bytes_say_or_names_a_line(tmp_path_factory, sentences, data):
    raw = bytearray(render(sentences, docstart=data.draw(st.booleans())).encode("utf-8"))
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        at = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if kind == "flip" and raw:
            raw[at] = data.draw(st.integers(0, 255))
        elif kind == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=3))
        elif kind == "delete" and raw:
            del raw[at:at + data.draw(st.integers(1, 5))]
        elif kind == "cut":
            del raw[at:]
    path = tmp_path_factory.mktemp("fuzz") / "train.txt"
    path.write_bytes(bytes(raw))
    outcome = read_or_error(path)
    expected = independent_reading(bytes(raw), 4)
    assert outcome == expected, (bytes(raw), outcome, expected)


@FUZZ
@given(data=st.data())
@pytest.mark.slow
def test_pp_and_conllu_readers_never_raise_anything_else(tmp_path_factory, data):
    pp = b"0 join board as director V\n1 is chairman of N.V. N\n"
    conllu = ("# text = Hi there\n1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_\n"
              "2\tthere\tthere\tADV\tRB\t_\t1\tadvmod\t_\t_\n\n").encode()
    for reader, raw, columns in ((read_pp, pp, None), (read_conllu, conllu, None)):
        raw = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 3))):
            at = data.draw(st.integers(0, len(raw) - 1)) if raw else 0
            if raw and data.draw(st.booleans()):
                raw[at] = data.draw(st.integers(0, 255))
            else:
                del raw[at:at + data.draw(st.integers(1, 6))]
        path = tmp_path_factory.mktemp("fuzz") / "corpus.txt"
        path.write_bytes(bytes(raw))
        n_lines = len(re.split(rb"\r\n|\r|\n", bytes(raw)))
        kind, value = read_or_error(path, reader, columns)
        if kind == "error":
            assert value is None or 1 <= value <= n_lines
        else:
            assert all(len(row["tokens"]) > 0 and all(token.strip() for token in row["tokens"]) for row in value)


# -- the raw-text tokenizer ------------------------------------------------------------------------------------
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=120) | st.text(
    st.sampled_from(list("ab.,'\"-!?()$% \n\t\ufeff\u200bU.S.3n't…“”")), max_size=80)


@FUZZ
@given(text=TEXT)
def test_tokens_cover_every_visible_character_once_at_their_offsets(text):
    tokens = tokenize(text)
    covered = []
    for token in tokens:
        assert token.text and text[token.start:token.end] == token.text
        assert not any(c.isspace() or c in "\ufeff\u200b" for c in token.text)
        covered.extend(range(token.start, token.end))
    assert covered == sorted(set(covered))  # in order, no overlap
    assert covered == [i for i, c in enumerate(text) if not c.isspace() and c not in "\ufeff\u200b"]
    sentences = split_sentences(tokens, text)
    assert [i for start, end in sentences for i in range(start, end)] == list(range(len(tokens)))
    assert all(end > start for start, end in sentences)


@pytest.mark.parametrize("text", ["\ufeffEU rejects", "EU\ufeffrejects", "\ufeff", " \ufeff \n"])
def test_a_byte_order_mark_separates_like_a_space(text):
    assert [t.text for t in tokenize(text)] == text.replace("\ufeff", " ").split()


@pytest.mark.parametrize("text", ["\u200bEU rejects", "EU\u200brejects", "\u200b", "EU \u200b rejects\u200b."])
def test_a_zero_width_space_separates_like_a_space(text):
    assert [t.text for t in tokenize(text)] == [t.text for t in tokenize(text.replace("\u200b", " "))]


@pytest.mark.parametrize("text, sentences", [
    ("EU rejects\n\nBritish lamb", 2), ("EU rejects\r\n\r\nBritish lamb", 2), ("EU rejects\r\rBritish lamb", 2),
    ("EU rejects\r \rBritish lamb", 2), ("EU rejects\r\nBritish lamb", 1), ("EU rejects\rBritish lamb", 1),
    ("EU rejects\r\r\nBritish lamb", 1), ("EU rejects\r\r\n\r\r\nBritish lamb", 2),  # CRLF text saved again as text
    ("EU rejects\n\u200b\nBritish lamb", 2),
])
def test_a_blank_line_ends_a_sentence_whatever_ends_its_lines(text, sentences):
    tokens = tokenize(text)
    assert len(split_sentences(tokens, text)) == sentences
