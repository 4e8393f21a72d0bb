"""Turning sentences into padded tensors, and length-bucketed batches."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .vocab import Vocab, WordLookup

IGNORE = -100  # label id for padding and for unscored positions (CrossEntropyLoss's ignore_index)


@dataclass
class Batch:
    words: list[list[str]]
    word_ids: torch.Tensor  # (B, T)
    char_ids: torch.Tensor  # (U, C): characters of the batch's U distinct words; row 0 is the empty padding word
    char_index: torch.Tensor  # (B, T): each token's row in char_ids
    mask: torch.Tensor  # (B, T) bool, True on real tokens
    labels: torch.Tensor | None = None  # (B, T) label ids, IGNORE on padding

    def to(self, device) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(self.words, move(self.word_ids), move(self.char_ids), move(self.char_index), move(self.mask),
                     move(self.labels))

    def __len__(self):
        return len(self.words)


class Featurizer:
    """Word ids and character ids for sentences; the same object serves training and tagging.

    Characters are encoded once per distinct word of a batch (frequent tokens such as "the" or "," would
    otherwise be run through the char-CNN dozens of times per batch)."""

    def __init__(self, words: Vocab, chars: Vocab, lowercase: bool = True, normalize_digits: bool = False,
                 max_word_length: int = 30):
        self.lookup = WordLookup(words, lowercase, normalize_digits)
        self.chars = chars
        self.max_word_length = max_word_length
        self._char_cache: dict[str, list[int]] = {}

    def word_ids(self, tokens: list[str]) -> list[int]:
        return [self.lookup(w) for w in tokens]

    def char_ids(self, word: str) -> list[int]:
        ids = self._char_cache.get(word)
        if ids is None:
            chars = self.chars.stoi
            ids = [chars.get(c, 1) for c in word[: self.max_word_length]]
            if len(self._char_cache) < 200_000:  # bounded: a long-running tagger sees unbounded vocabularies
                self._char_cache[word] = ids
        return ids

    def collate(self, sentences: list[list[str]], labels: list[list[int]] | None = None,
                word_ids: list[list[int]] | None = None) -> Batch:
        """Pad sentences (with optional label ids and precomputed word ids) into a :class:`Batch`."""
        if not sentences or any(len(s) == 0 for s in sentences):
            raise ValueError("cannot batch an empty sentence")
        if word_ids is None:
            word_ids = [self.word_ids(s) for s in sentences]
        length = max(len(s) for s in sentences)
        rows: dict[str, int] = {"": 0}
        char_index = [[rows.setdefault(w, len(rows)) for w in s] + [0] * (length - len(s)) for s in sentences]
        char_rows = [self.char_ids(w) for w in rows]
        width = max(1, max(len(r) for r in char_rows))
        lengths = torch.tensor([len(s) for s in sentences])
        return Batch(
            words=list(sentences),
            word_ids=torch.tensor([ids + [0] * (length - len(ids)) for ids in word_ids]),
            char_ids=torch.tensor([r + [0] * (width - len(r)) for r in char_rows]),
            char_index=torch.tensor(char_index),
            mask=torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1),
            labels=None if labels is None else torch.tensor([seq + [IGNORE] * (length - len(seq)) for seq in labels]),
        )


def bucketed_batches(lengths: list[int], batch_size: int, rng: np.random.Generator | None,
                     pool_batches: int = 50) -> list[list[int]]:
    """Batches of sentences of similar length.

    With ``rng``: shuffle, sort within pools of ``pool_batches`` batches, cut, shuffle the batches (training).
    Without: sort everything by length (evaluation; callers restore the input order).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = np.asarray(lengths)
    if rng is None:
        order = np.argsort(-lengths, kind="stable")
        return [order[i: i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    order = rng.permutation(len(lengths))
    pool = batch_size * pool_batches
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start: start + pool]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i: i + batch_size].tolist() for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches
