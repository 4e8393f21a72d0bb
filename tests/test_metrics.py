"""Token accuracy, span F1 (conlleval-compatible default and strict mode), score_task and format_table."""
import pytest

from sparseshare.metrics import format_table, score_task, span_f1, token_accuracy

GOLD = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
PRED = [["B-PER", "I-PER", "O", "O"], ["B-LOC", "O"]]  # 1 of 3 gold spans found, 2 predicted


def test_token_accuracy_hand_computed():
    result = token_accuracy(GOLD, PRED)
    assert result["correct"] == 4 and result["total"] == 6
    assert result["accuracy"] == pytest.approx(100 * 4 / 6)


def test_token_accuracy_ignore_labels_pp_style():
    gold = [["O", "O", "V", "O"], ["O", "O", "N", "O"], ["O", "O", "N", "O"]]
    pred = [["V", "N", "V", "O"], ["O", "O", "V", "N"], ["O", "O", "N", "O"]]
    result = token_accuracy(gold, pred, ignore=("O",))
    assert result == {"accuracy": pytest.approx(100 * 2 / 3), "correct": 2, "total": 3}
    assert token_accuracy(gold, pred)["total"] == 12


def test_token_accuracy_empty():
    assert token_accuracy([], []) == {"accuracy": 0.0, "correct": 0, "total": 0}
    assert token_accuracy([["O"]], [["X"]], ignore=("O",))["accuracy"] == 0.0


def test_span_f1_hand_computed():
    result = span_f1(GOLD, PRED)
    assert result["precision"] == pytest.approx(50.0)
    assert result["recall"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(40.0)
    assert result["support"] == 3
    types = result["types"]
    assert list(types) == ["LOC", "ORG", "PER"]
    assert types["PER"] == {"precision": pytest.approx(100.0), "recall": pytest.approx(100.0),
                            "f1": pytest.approx(100.0), "support": 1}
    assert types["LOC"]["precision"] == pytest.approx(0.0) and types["LOC"]["support"] == 1
    assert types["ORG"]["recall"] == pytest.approx(0.0) and types["ORG"]["support"] == 1


def test_span_f1_boundary_and_type_errors_count_as_wrong():
    gold = [["B-PER", "I-PER", "I-PER", "O", "B-MISC"]]
    pred = [["B-PER", "I-PER", "O", "O", "B-ORG"]]
    result = span_f1(gold, pred)
    assert result["f1"] == pytest.approx(0.0)
    assert result["types"]["ORG"]["support"] == 0
    perfect = span_f1(gold, gold)
    assert perfect["f1"] == pytest.approx(100.0) and perfect["support"] == 2


def test_span_f1_conlleval_default_vs_strict():
    gold = [["B-PER", "I-PER"]]
    pred = [["I-PER", "I-PER"]]
    assert span_f1(gold, pred)["f1"] == pytest.approx(100.0)
    assert span_f1(gold, pred, strict=True, scheme="iob2")["f1"] == pytest.approx(0.0)
    assert span_f1(gold, gold, strict=True, scheme="iob2")["f1"] == pytest.approx(100.0)


def test_span_f1_strict_bioes():
    gold = [["B-PER", "E-PER", "O", "S-LOC"]]
    pred = [["B-PER", "E-PER", "O", "B-LOC"]]  # B-LOC without E-LOC: not a strict BIOES span
    strict = span_f1(gold, pred, strict=True, scheme="bioes")
    assert strict["precision"] == pytest.approx(100.0)
    assert strict["recall"] == pytest.approx(50.0)


def test_span_f1_strict_iob1_not_keyerror():
    gold = [["I-PER", "I-PER", "O"]]
    try:
        result = span_f1(gold, gold, strict=True, scheme="iob1")
    except ValueError:
        return
    assert result["f1"] == pytest.approx(100.0)


@pytest.mark.parametrize("fn", [token_accuracy, span_f1])
def test_length_mismatch_raises(fn):
    with pytest.raises(ValueError, match="sentence 1"):
        fn([["O"], ["O", "O"]], [["O"], ["O"]])
    with pytest.raises(ValueError, match="2 gold sentences but 1 predicted"):
        fn([["O"], ["O"]], [["O"]])


def test_score_task():
    acc = score_task("accuracy", [["O", "V"]], [["N", "V"]], ignore_labels=["O"])
    assert acc["score"] == acc["accuracy"] == pytest.approx(100.0)
    f1 = score_task("span_f1", GOLD, PRED)
    assert f1["score"] == f1["f1"] == pytest.approx(40.0)
    strict = score_task("span_f1", [["B-PER", "I-PER"]], [["I-PER", "I-PER"]], strict=True, scheme="iob2")
    assert strict["score"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="unknown metric"):
        score_task("bleu", [["O"]], [["O"]])


def test_format_table():
    results = {
        "ner": score_task("span_f1", GOLD, PRED),
        "pos": dict(score_task("accuracy", [["NN", "VB"]], [["NN", "NN"]]),
                    unseen_labels=2, unseen_label_names={"XX", "AA"}),
    }
    table = format_table(results)
    lines = table.splitlines()
    assert lines[0].split() == ["task", "type", "prec", "rec", "F1/acc", "support"]
    ner = next(line for line in lines if line.startswith("ner"))
    assert ner.split() == ["ner", "ALL", "50.00", "33.33", "40.00", "3"]
    for name in ("PER", "LOC", "ORG"):
        row = next(line for line in lines if line.split()[:1] == [name])
        assert len(row.split()) == 5
    per = next(line for line in lines if line.split()[:1] == ["PER"])
    assert per.split() == ["PER", "100.00", "100.00", "100.00", "1"]
    pos = next(line for line in lines if line.startswith("pos"))
    assert pos.split() == ["pos", "acc", "50.00", "2"]
    assert "2 gold token(s)" in table and "AA, XX" in table


def test_strict_evaluation_scores_the_heads_own_ill_formed_output():
    """NER's head predicts BIOES and the corpus is IOB2: converted first, B-PER B-PER E-PER reads as two well-formed
    IOB2 spans and strict scoring sees nothing wrong. Strict evaluation scores the head's own labels in BIOES."""
    from sparseshare.evaluation import evaluate
    from sparseshare.tasks import load_task

    spec = load_task("ner")
    assert (spec.scheme, spec.train_scheme) == ("iob2", "bioes")
    head = [["B-PER", "B-PER", "E-PER", "O"], ["S-LOC", "O"]]  # the first: ill-formed BIOES

    class Model:
        tasks, labels = {"ner": spec}, {"ner": ["O", "B-PER", "E-PER", "S-LOC"]}

        def predict_corpus(self, sentences, tasks, batch_size, head_scheme=False):
            assert head_scheme  # evaluation converts the head's labels itself
            return {"ner": head}

    data = {"ner": {"tokens": [["a", "b", "c", "d"], ["e", "f"]],
                    "labels": [["B-PER", "I-PER", "I-PER", "O"], ["B-LOC", "O"]]}}
    written = {}
    default = evaluate(Model(), data, predictions=written)["ner"]
    strict = evaluate(Model(), data, strict=True)["ner"]
    assert written["ner"] == [["B-PER", "B-PER", "I-PER", "O"], ["B-LOC", "O"]]  # the corpus scheme, as conlleval reads
    # default: B-PER | B-PER I-PER | B-LOC, one of three right; strict BIOES drops the B-PER without its E-PER and
    # reads B-PER E-PER | S-LOC, one of two right
    assert default["precision"] == pytest.approx(100 / 3) and default["recall"] == pytest.approx(50.0)
    assert strict["precision"] == pytest.approx(50.0) and strict["recall"] == pytest.approx(50.0)
    assert strict["support"] == default["support"] == 2
