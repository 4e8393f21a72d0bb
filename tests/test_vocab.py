"""Vocabularies, word lookup normalisation, pretrained vectors and the embedding matrix."""
import json

import numpy as np
import pytest

from sparseshare.files import load_json, save_json
from sparseshare.data.vocab import (
    PAD,
    UNK,
    Vocab,
    WordLookup,
    build_char_vocab,
    build_label_vocab,
    build_word_vocab,
    embedding_matrix,
    normalize_digits,
    read_word_vectors,
)


def test_vocab_specials():
    vocab = Vocab(["the", "cat", UNK, PAD])
    assert vocab.itos == [PAD, UNK, "the", "cat"]
    assert vocab[PAD] == 0 and vocab[UNK] == 1 and vocab["cat"] == 3
    assert vocab.get("dog") == 1 and vocab.get("dog", 7) == 7
    assert len(vocab) == 4 and "the" in vocab and "dog" not in vocab


def test_vocab_without_specials():
    labels = Vocab(["O", "B-PER"], specials=False)
    assert labels.itos == ["O", "B-PER"] and labels["O"] == 0
    assert PAD not in labels


def test_vocab_rejects_duplicates():
    with pytest.raises(ValueError, match="unique"):
        Vocab(["a", "b", "a"])


def test_vocab_round_trip(tmp_path):
    for vocab in (Vocab(["x", "é", "日本"]), Vocab(["O", "B-X"], specials=False)):
        data = vocab.to_dict()
        save_json(data, tmp_path / "v.json")
        json.loads((tmp_path / "v.json").read_text(encoding="utf-8"))
        back = Vocab.from_dict(load_json(tmp_path / "v.json"))
        assert back.itos == vocab.itos and back.stoi == vocab.stoi and back.specials == vocab.specials
        assert len(back) == len(vocab)


def test_word_lookup_normalisation():
    vocab = Vocab(["the", "0000-00-00", "Paris", "a00"])
    lower = WordLookup(vocab)
    assert lower("The") == vocab["the"] and lower("THE") == vocab["the"]
    assert lower("Paris") == 1  # lowercased to 'paris', not in vocab
    assert lower("1996-08-22") == 1  # digits kept by default
    digits = WordLookup(vocab, lowercase=True, normalize_digits=True)
    assert digits("1996-08-22") == vocab["0000-00-00"]
    assert digits("A12") == vocab["a00"]
    cased = WordLookup(vocab, lowercase=False)
    assert cased("Paris") == vocab["Paris"] and cased("The") == 1
    assert normalize_digits("x1y23") == "x0y00"


def test_build_word_vocab_includes_pretrained_and_train_words():
    train = [["The", "cat", "sat"], ["the", "Dog", "2024"]]
    vocab = build_word_vocab(train, pretrained_words=["apple", "The", "cat"])
    assert vocab.itos[:2] == [PAD, UNK]
    assert {"apple", "the", "cat", "sat", "dog", "2024"} <= set(vocab.itos)
    assert "The" not in vocab and "Dog" not in vocab
    assert len(vocab) == 2 + 6
    digits = build_word_vocab(train, normalize=True)
    assert "0000" in digits and "2024" not in digits
    cased = build_word_vocab(train, lowercase=False)
    assert {"The", "the", "Dog"} <= set(cased.itos)


def test_build_word_vocab_min_count():
    train = [["a", "b", "a"], ["c", "A"]]
    vocab = build_word_vocab(train, pretrained_words=["c"], min_count=2)
    assert "a" in vocab and "b" not in vocab
    assert "c" in vocab  # pretrained words are always kept


def test_char_and_label_vocabs():
    chars = build_char_vocab([["ab", "c"], ["ba"]])
    assert chars.itos == [PAD, UNK, "a", "b", "c"]
    labels = build_label_vocab([["O", "B-PER"], ["I-PER", "O"]])
    assert labels.itos == ["B-PER", "I-PER", "O"] and not labels.specials


def _vectors_file(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_read_word_vectors_glove(tmp_path):
    path = _vectors_file(tmp_path / "g.txt", "the 0.1 0.2 0.3\ncat -1 2 3.5 \n\n, 0 0 1\n")
    words, vectors = read_word_vectors(path)
    assert words == ["the", "cat", ","]
    assert vectors.dtype == np.float32 and vectors.shape == (3, 3)
    np.testing.assert_allclose(vectors[1], [-1, 2, 3.5])


def test_read_word_vectors_word2vec_header(tmp_path):
    path = _vectors_file(tmp_path / "w.txt", "2 4\nthe 1 2 3 4\ncat 5 6 7 8\n")
    words, vectors = read_word_vectors(path)
    assert words == ["the", "cat"]
    assert vectors.shape == (2, 4)
    np.testing.assert_allclose(vectors[1], [5, 6, 7, 8])


def test_read_word_vectors_inconsistent_dims(tmp_path):
    path = _vectors_file(tmp_path / "bad.txt", "3 2\nthe 1 2\ncat 1 2\ndog 1 2 3\n")
    with pytest.raises(ValueError) as info:
        read_word_vectors(path)
    assert f"{path}:4:" in str(info.value)
    assert "expected 2" in str(info.value)


def test_a_word_vector_line_whose_word_holds_spaces_is_read(tmp_path):
    # GloVe 840B has a few lines like these; an extra number after a one-word word stays an error
    path = _vectors_file(tmp_path / "g.txt", "the 1 2\nnew york 3 4\nat a b.com 5 6\n")
    words, vectors = read_word_vectors(path)
    assert words == ["the", "new york", "at a b.com"]
    np.testing.assert_allclose(vectors[2], [5, 6])
    path = _vectors_file(tmp_path / "bad.txt", "the 1 2\ncat 1 2 3\n")
    with pytest.raises(ValueError, match=rf"{path}:2: expected 2 vector values, found 3"):
        read_word_vectors(path)


def test_read_word_vectors_empty(tmp_path):
    with pytest.raises(ValueError, match="no word vectors"):
        read_word_vectors(_vectors_file(tmp_path / "e.txt", "\n"))


def test_embedding_matrix_uses_pretrained_rows():
    words = ["The", "cat", "unused", "the"]
    vectors = np.array([[1, 1], [2, 2], [3, 3], [9, 9]], dtype=np.float32)
    vocab = build_word_vocab([["cat", "sat"]], pretrained_words=words)
    lookup = WordLookup(vocab)
    matrix = embedding_matrix(lookup, words, vectors, seed=0)
    assert matrix.shape == (len(vocab), 2) and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[0], [0, 0])
    np.testing.assert_array_equal(matrix[vocab["the"]], [1, 1])  # first one wins when keys merge
    np.testing.assert_array_equal(matrix[vocab["cat"]], [2, 2])
    np.testing.assert_array_equal(matrix[vocab["unused"]], [3, 3])
    scale = np.sqrt(3.0 / 2)
    sat = matrix[vocab["sat"]]
    assert np.all(np.abs(sat) <= scale) and np.any(sat != 0)
    np.testing.assert_array_equal(embedding_matrix(lookup, words, vectors, seed=0), matrix)


def test_embedding_matrix_padding_row_stays_zero_even_if_pretrained_has_pad():
    words = ["<pad>", "cat"]
    vectors = np.array([[5, 5], [2, 2]], dtype=np.float32)
    vocab = build_word_vocab([["cat"]], pretrained_words=words)
    matrix = embedding_matrix(WordLookup(vocab), words, vectors)
    np.testing.assert_array_equal(matrix[0], [0, 0])
