"""Length-bucketed batches and collation."""
from collections import Counter

import numpy as np
import pytest
import torch

from sparseshare.data.batching import IGNORE, Featurizer, bucketed_batches
from sparseshare.data.vocab import Vocab


def _lengths(n, seed=0):
    return np.random.default_rng(seed).integers(1, 60, size=n).tolist()


@pytest.mark.parametrize("rng_seed", [None, 0, 1])
@pytest.mark.parametrize("n,batch_size,pool", [(1, 4, 50), (10, 3, 2), (257, 16, 4), (100, 100, 1), (50, 7, 50)])
def test_every_index_exactly_once_and_batch_size(rng_seed, n, batch_size, pool):
    lengths = _lengths(n, seed=n)
    rng = None if rng_seed is None else np.random.default_rng(rng_seed)
    batches = bucketed_batches(lengths, batch_size, rng, pool_batches=pool)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(n))
    assert all(1 <= len(b) <= batch_size for b in batches)
    assert all(isinstance(i, int) for i in flat)
    assert len(batches) >= -(-n // batch_size)
    # only one short batch per pool at most
    short = sum(len(b) < batch_size for b in batches)
    assert short <= -(-n // (batch_size * pool))


def test_eval_batches_sorted_longest_first():
    lengths = [3, 9, 1, 9, 5, 2, 7]
    batches = bucketed_batches(lengths, 3, None)
    assert batches == [[1, 3, 6], [4, 0, 5], [2]]


def test_training_batches_group_similar_lengths():
    lengths = _lengths(400, seed=3)
    rng = np.random.default_rng(5)
    batches = bucketed_batches(lengths, 10, rng, pool_batches=50)  # one pool holds everything
    # within one pool, batches are cut from a length-sorted list: their length ranges do not interleave
    ranges = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
    for (lo1, hi1), (lo2, hi2) in zip(ranges, ranges[1:]):
        assert hi1 <= lo2
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    random_spread = np.mean([np.ptp(np.asarray(lengths)[np.random.default_rng(9).permutation(400)[:10]])
                             for _ in range(5)])
    assert spread < 0.25 * random_spread


def test_training_batches_are_shuffled_and_deterministic():
    lengths = _lengths(300, seed=4)
    b1 = bucketed_batches(lengths, 8, np.random.default_rng(11), pool_batches=5)
    b2 = bucketed_batches(lengths, 8, np.random.default_rng(11), pool_batches=5)
    b3 = bucketed_batches(lengths, 8, np.random.default_rng(12), pool_batches=5)
    assert b1 == b2
    assert b1 != b3
    maxima = [max(lengths[i] for i in b) for b in b1]
    assert maxima != sorted(maxima, reverse=True) and maxima != sorted(maxima)


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        bucketed_batches([1, 2], 0, None)


def test_collate_pads_and_masks():
    words = Vocab(["the", "cat"])
    chars = Vocab(list("thecas"))
    featurizer = Featurizer(words, chars, max_word_length=2)
    batch = featurizer.collate([["The", "cat", "sat"], ["cat"]], labels=[[0, 1, 2], [1]])
    assert batch.word_ids.tolist() == [[words["the"], words["cat"], 1], [words["cat"], 0, 0]]
    assert batch.mask.tolist() == [[True, True, True], [True, False, False]]
    assert batch.labels.tolist() == [[0, 1, 2], [1, IGNORE, IGNORE]]
    # distinct words only: "", "The", "cat", "sat" (row 0 is the empty padding word)
    assert batch.char_ids.shape == (4, 2)
    assert batch.char_index.tolist() == [[1, 2, 3], [2, 0, 0]]
    assert batch.char_ids[1].tolist() == [1, chars["h"]]  # 'T' unknown to the char vocab: case kept
    assert batch.char_ids[0].tolist() == [0, 0]
    assert len(batch) == 2
    assert featurizer.collate([["cat"]]).labels is None
    with pytest.raises(ValueError, match="empty sentence"):
        featurizer.collate([["a"], []])
