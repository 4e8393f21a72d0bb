"""Vocabularies (words, characters, labels) and pretrained word vectors. Saved as JSON with the model."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

PAD, UNK = "<pad>", "<unk>"
_DIGITS = re.compile(r"\d")


def normalize_digits(word: str) -> str:
    return _DIGITS.sub("0", word)


class Vocab:
    """A string <-> id map. Word and char vocabularies reserve 0 for padding and 1 for unknown."""

    def __init__(self, items: list[str], specials: bool = True):
        self.itos: list[str] = ([PAD, UNK] if specials else []) + [s for s in items if not specials or s not in (PAD, UNK)]
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary items must be unique")
        self.specials = specials

    def __len__(self):
        return len(self.itos)

    def __contains__(self, item):
        return item in self.stoi

    def __getitem__(self, item: str) -> int:
        return self.stoi[item]

    def get(self, item: str, default: int = 1) -> int:
        return self.stoi.get(item, default)

    def to_dict(self) -> dict:
        return {"itos": self.itos, "specials": self.specials}

    @classmethod
    def from_dict(cls, data: dict) -> "Vocab":
        vocab = cls.__new__(cls)
        vocab.itos, vocab.specials = list(data["itos"]), bool(data["specials"])
        vocab.stoi = {s: i for i, s in enumerate(vocab.itos)}
        return vocab


class WordLookup:
    """Maps a token to a word id through one normalisation (lowercase, digits to 0) shared with vocab building.

    Lowercasing is on by default because GloVe 6B is uncased; the char-CNN still sees the case.
    """

    def __init__(self, vocab: Vocab, lowercase: bool = True, normalize_digits: bool = False):
        self.vocab, self.lowercase, self.normalize_digits = vocab, lowercase, normalize_digits

    def key(self, word: str) -> str:
        if self.lowercase:
            word = word.lower()
        if self.normalize_digits:
            word = normalize_digits(word)
        return word

    def __call__(self, word: str) -> int:
        return self.vocab.stoi.get(self.key(word), 1)


def read_word_vectors(path: str | Path, key: str | None = None) -> tuple[list[str], np.ndarray]:
    """A GloVe or word2vec text file (word2vec's ``count dim`` header line is detected and skipped; a word may hold
    spaces, as a few of GloVe 840B's do). Errors name the file and line, and ``key`` (the config key that gave the
    path) when the file is missing."""
    path = Path(path)
    given = f"config key {key!r}: " if key else ""
    if path.is_dir():
        raise ValueError(f"{given}{path} is a directory, not a word-vector file")
    if not path.is_file():
        raise FileNotFoundError(f"{given}word-vector file not found: {path}")
    words, rows, dim = [], [], None
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid UTF-8 ({err.reason}); is this a word-vector text "
                                 f"file (GloVe / word2vec .txt, not .bin)?") from None
            if number == 1:
                line = line.removeprefix("\ufeff")
            parts = line.rstrip().split(" ")
            if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue
            if len(parts) < 2:
                continue
            if dim is None:
                dim = len(parts) - 1
            if len(parts) - 1 > dim and not _is_float(parts[1]):
                # a word with spaces in it (GloVe 840B has some: "at name@domain.com"), then its dim numbers
                parts = [" ".join(parts[:-dim]), *parts[-dim:]]
            if len(parts) - 1 != dim:
                raise ValueError(f"{path}:{number}: expected {dim} vector values, found {len(parts) - 1}")
            try:
                row = np.asarray(parts[1:], dtype=np.float32)
            except ValueError:
                bad = next(p for p in parts[1:] if not _is_float(p))
                raise ValueError(f"{path}:{number}: {bad[:40]!r} is not a number; a word-vector file has a word and "
                                 f"{dim} numbers a line") from None
            if not np.isfinite(row).all():
                raise ValueError(f"{path}:{number}: the vector of {parts[0][:40]!r} has a non-finite value")
            words.append(parts[0])
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no word vectors found")
    return words, np.stack(rows)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def build_word_vocab(train_sentences: list[list[str]], pretrained_words: list[str] | None = None,
                     min_count: int = 1, lowercase: bool = True, normalize: bool = False) -> Vocab:
    """Training words (seen at least ``min_count`` times) plus every pretrained word, so that dev/test words
    with a pretrained vector keep it. Keys are normalised as :class:`WordLookup` normalises tokens."""
    key = WordLookup(Vocab([]), lowercase, normalize).key
    counts = Counter(key(w) for sent in train_sentences for w in sent)
    items = dict.fromkeys(key(w) for w in (pretrained_words or []))
    items.update(dict.fromkeys(w for w, c in counts.items() if c >= min_count))
    return Vocab(list(items))


def build_char_vocab(train_sentences: list[list[str]]) -> Vocab:
    return Vocab(sorted({c for sent in train_sentences for w in sent for c in w}))


def build_label_vocab(label_sequences: list[list[str]]) -> Vocab:
    return Vocab(sorted({t for seq in label_sequences for t in seq}), specials=False)


def embedding_matrix(lookup: WordLookup, words: list[str], vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """Rows for ``lookup.vocab``: the pretrained vector where one exists (first one wins when normalisation
    merges words), uniform noise in the vectors' scale elsewhere, zeros for padding."""
    vocab, dim = lookup.vocab, vectors.shape[1]
    scale = float(np.sqrt(3.0 / dim))
    matrix = np.random.default_rng(seed).uniform(-scale, scale, (len(vocab), dim)).astype(np.float32)
    matrix[0] = 0.0
    filled = set()
    for word, vec in zip(words, vectors):
        i = vocab.stoi.get(lookup.key(word))
        if i is not None and i > 0 and i not in filled:  # row 0 (padding) stays zero
            matrix[i] = vec
            filled.add(i)
    return matrix
