"""Corpus readers: CoNLL column files, CoNLL-U, and RRR PP-attachment tuples.

Every reader returns a list of rows ``{"tokens": [...], <column>: [...], ...}`` (with ``lines=True`` also
``"lines": [...]``, the 1-based line of every token) and reports malformed input as :class:`CorpusFormatError`
naming the file and the line. Repaired silently, because they change nothing a reader of the file sees: a UTF-8
byte-order mark at the start, and Windows (CRLF) or old Mac (CR-only) line endings. Bytes that are not UTF-8 are
an error.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..errors import SparseshareError


class CorpusFormatError(SparseshareError, ValueError):
    def __init__(self, path: str | Path, line: int | None, message: str):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path, self.line = str(path), line


BOM = "\ufeff"


def _lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) and name the line of any byte sequence that is not UTF-8. Lines end at
    LF, CRLF or a lone CR (as an editor counts them); a byte-order mark opening the file is dropped."""
    path = Path(path)
    if path.is_dir():
        raise CorpusFormatError(path, None, "is a directory, not a corpus file")
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    return decode_lines(path.read_bytes(), path)


def decode_lines(data: bytes, source: str | Path, first: int = 1) -> Iterator[tuple[int, str]]:
    """(line number, text) of UTF-8 ``data``, lines ending at LF, CRLF or a lone CR, a leading byte-order mark
    dropped; bytes that are not UTF-8 raise :class:`CorpusFormatError` naming ``source`` and the line. ``first``: the
    number of ``data``'s first line (a part of a file read piece by piece)."""
    for number, raw in enumerate(data.splitlines(), start=first):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise CorpusFormatError(source, number,
                                    f"not valid UTF-8 ({err.reason} at byte {err.start} of the line)") from None
        yield number, text.removeprefix(BOM) if number == 1 else text


def shown(line: str, limit: int = 80) -> str:
    """A line quoted for an error message, shortened so that a huge line cannot flood the terminal."""
    return repr(line) if len(line) <= limit else repr(line[:limit]) + f"... ({len(line)} characters)"


def is_docstart(token: str) -> bool:
    """CoNLL document separators: ``-DOCSTART-`` in any case, also with a suffix (``-DOCSTART-_1``)."""
    return token.upper().startswith("-DOCSTART-")


def _non_empty(rows: list[dict], path: str | Path) -> list[dict]:
    if not rows:
        raise CorpusFormatError(path, None, "file contains no sentences")
    return rows


def read_conll(path: str | Path, columns: list[str], lines: bool = False) -> list[dict]:
    """Whitespace-separated columns, one token a line; blank or whitespace-only lines end a sentence.

    ``columns`` names every column in order; the first is the token. ``-DOCSTART-`` lines are skipped.
    """
    rows: list[dict] = []
    current: list[list[str]] = []
    numbers: list[int] = []

    def flush():
        if current:
            rows.append({name: [fields[i] for fields in current] for i, name in enumerate(columns)})
            if lines:
                rows[-1]["lines"] = list(numbers)
            current.clear()
            numbers.clear()

    for number, line in _lines(path):
        fields = line.split()
        if not fields:
            flush()
            continue
        if is_docstart(fields[0]):
            flush()
            continue
        if len(fields) != len(columns):
            raise CorpusFormatError(
                path, number,
                f"expected {len(columns)} columns ({' '.join(columns)}), found {len(fields)}: {shown(line)}"
            )
        current.append(fields)
        numbers.append(number)
    flush()
    return _non_empty(rows, path)


CONLLU_FIELDS = ["id", "tokens", "lemma", "upos", "xpos", "feats", "head", "deprel", "deps", "misc"]


def read_conllu(path: str | Path, columns: list[str] | None = None, lines: bool = False) -> list[dict]:
    """CoNLL-U: 10 tab-separated fields; comments skipped, multiword ranges (1-2) and empty nodes (3.1) skipped."""
    keep = columns or ["tokens", "upos", "xpos"]
    for name in keep:
        if name not in CONLLU_FIELDS:
            raise ValueError(f"unknown CoNLL-U column {name!r}; expected some of {CONLLU_FIELDS}")
    index = [CONLLU_FIELDS.index(name) for name in keep]
    rows: list[dict] = []
    current: list[list[str]] = []
    numbers: list[int] = []

    def flush():
        if current:
            rows.append({name: [f[i] for f in current] for name, i in zip(keep, index)})
            if lines:
                rows[-1]["lines"] = list(numbers)
            current.clear()
            numbers.clear()

    for number, line in _lines(path):
        if not line.strip():
            flush()
            continue
        if line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 10:
            raise CorpusFormatError(path, number, f"expected 10 tab-separated CoNLL-U fields, found {len(fields)}: "
                                                  f"{shown(line)}")
        if "-" in fields[0] or "." in fields[0]:
            continue
        empty = [CONLLU_FIELDS[i] for i in index if not fields[i].strip()]
        if empty:
            raise CorpusFormatError(path, number, f"empty CoNLL-U field(s) {empty}: {shown(line)}")
        current.append(fields)
        numbers.append(number)
    flush()
    return _non_empty(rows, path)


PP_LABELS = ("V", "N")


def read_pp(path: str | Path, columns: list[str] | None = None, lines: bool = False) -> list[dict]:
    """RRR PP attachment ``id verb noun1 prep noun2 V|N`` cast as tagging the preposition.

    The sequence is ``verb noun1 prep noun2``; the preposition carries V or N, other tokens ``O``
    (not scored: the task's metric ignores ``O``).
    """
    label_name = (columns or ["tokens", "pp"])[-1]
    rows = []
    for number, line in _lines(path):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise CorpusFormatError(path, number, f"expected 6 fields (id verb noun1 prep noun2 V|N), found "
                                                  f"{len(fields)}: {shown(line)}")
        if fields[5] not in PP_LABELS:
            raise CorpusFormatError(path, number, f"attachment label must be V or N, found {fields[5]!r}")
        rows.append({"tokens": fields[1:5], label_name: ["O", "O", fields[5], "O"]})
        if lines:
            rows[-1]["lines"] = [number] * 4
    return _non_empty(rows, path)


READERS = {"conll": read_conll, "conllu": read_conllu, "pp": read_pp}
