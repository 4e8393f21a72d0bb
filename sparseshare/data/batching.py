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
    char_ids: torch.Tensor  # (B, T, C)
    mask: torch.Tensor  # (B, T) bool, True on real tokens
    labels: torch.Tensor | None = None  # (B, T) label ids, IGNORE on padding

    def to(self, device) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(self.words, move(self.word_ids), move(self.char_ids), move(self.mask), move(self.labels))

    def __len__(self):
        return len(self.words)


class Featurizer:
    """Word ids and character ids for a sentence; the same object serves training and tagging."""

    def __init__(self, words: Vocab, chars: Vocab, lowercase: bool = True, normalize_digits: bool = False,
                 max_word_length: int = 30):
        self.lookup = WordLookup(words, lowercase, normalize_digits)
        self.chars = chars
        self.max_word_length = max_word_length

    def encode(self, tokens: list[str]) -> tuple[list[int], list[list[int]]]:
        chars = self.chars.stoi
        return ([self.lookup(w) for w in tokens],
                [[chars.get(c, 1) for c in w[: self.max_word_length]] for w in tokens])

    def collate(self, sentences: list[list[str]], labels: list[list[int]] | None = None) -> Batch:
        """Pad a list of sentences (and optional label id sequences) into a :class:`Batch`."""
        return collate_encoded(sentences, [self.encode(s) for s in sentences], labels)


def collate_encoded(sentences, encoded, labels=None) -> Batch:
    if any(len(s) == 0 for s in sentences):
        raise ValueError("cannot batch an empty sentence")
    size, length = len(sentences), max(len(s) for s in sentences)
    width = max(1, max(len(c) for _, chars in encoded for c in chars))
    word_ids = torch.zeros(size, length, dtype=torch.long)
    char_ids = torch.zeros(size, length, width, dtype=torch.long)
    mask = torch.zeros(size, length, dtype=torch.bool)
    label_ids = torch.full((size, length), IGNORE, dtype=torch.long) if labels is not None else None
    for b, (wids, cids) in enumerate(encoded):
        n = len(wids)
        word_ids[b, :n] = torch.tensor(wids)
        mask[b, :n] = True
        for t, c in enumerate(cids):
            char_ids[b, t, : len(c)] = torch.tensor(c)
        if labels is not None:
            label_ids[b, :n] = torch.tensor(labels[b])
    return Batch(list(sentences), word_ids, char_ids, mask, label_ids)


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
