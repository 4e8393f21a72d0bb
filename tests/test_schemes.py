"""Tag scheme conversions (IOB1 / IOB2 / BIOES) and scheme transition rules."""
import random

import pytest
from seqeval.metrics.sequence_labeling import get_entities

from sparseshare.data.schemes import (
    SCHEMES,
    allowed_transition,
    bioes_to_iob2,
    convert,
    iob1_to_iob2,
    iob2_to_bioes,
    iob2_to_iob1,
)

# (iob1, iob2, bioes): the same chunks written in each scheme.
EQUIVALENT = [
    pytest.param([], [], [], id="empty"),
    pytest.param(["O", "O", "O"], ["O", "O", "O"], ["O", "O", "O"], id="only-O"),
    pytest.param(["I-PER"], ["B-PER"], ["S-PER"], id="single-token-sentence"),
    pytest.param(
        ["I-PER", "I-PER", "B-PER", "O", "I-LOC"],
        ["B-PER", "I-PER", "B-PER", "O", "B-LOC"],
        ["B-PER", "E-PER", "S-PER", "O", "S-LOC"],
        id="adjacent-same-type-then-single-at-end",
    ),
    pytest.param(
        ["I-PER", "B-PER", "B-PER", "I-PER"],
        ["B-PER", "B-PER", "B-PER", "I-PER"],
        ["S-PER", "S-PER", "B-PER", "E-PER"],
        id="three-adjacent-same-type",
    ),
    pytest.param(
        ["I-PER", "I-LOC", "I-LOC"],
        ["B-PER", "B-LOC", "I-LOC"],
        ["S-PER", "B-LOC", "E-LOC"],
        id="adjacent-different-types",
    ),
    pytest.param(
        ["O", "I-NP", "I-NP", "I-NP"],
        ["O", "B-NP", "I-NP", "I-NP"],
        ["O", "B-NP", "I-NP", "E-NP"],
        id="long-chunk-at-sentence-end",
    ),
    pytest.param(
        ["I-B-X", "O", "I-MISC", "B-MISC"],
        ["B-B-X", "O", "B-MISC", "B-MISC"],
        ["S-B-X", "O", "S-MISC", "S-MISC"],
        id="label-with-hyphen",
    ),
]


@pytest.mark.parametrize("iob1,iob2,bioes", EQUIVALENT)
def test_direct_converters(iob1, iob2, bioes):
    assert iob1_to_iob2(iob1) == iob2
    assert iob2_to_iob1(iob2) == iob1
    assert iob2_to_bioes(iob2) == bioes
    assert bioes_to_iob2(bioes) == iob2


@pytest.mark.parametrize("iob1,iob2,bioes", EQUIVALENT)
def test_convert_between_all_span_schemes(iob1, iob2, bioes):
    forms = {"iob1": iob1, "iob2": iob2, "bioes": bioes}
    for source, tags in forms.items():
        for target, expected in forms.items():
            assert convert(tags, source, target) == expected, (source, target)


def test_convert_returns_new_list_and_does_not_mutate():
    tags = ["B-PER", "I-PER", "O"]
    snapshot = list(tags)
    for target in ("iob1", "iob2", "bioes"):
        out = convert(tags, "iob2", target)
        assert out is not tags
    assert tags == snapshot
    same = convert(["X", "Y"], "none", "none")
    assert same == ["X", "Y"]


@pytest.mark.parametrize(
    "function,tags,expected",
    [
        # IOB2 read conlleval-style: I-X after O (or after another type) starts a chunk.
        (iob1_to_iob2, ["O", "I-PER", "I-PER"], ["O", "B-PER", "I-PER"]),
        (iob1_to_iob2, ["B-PER", "I-LOC"], ["B-PER", "B-LOC"]),
        (iob2_to_bioes, ["O", "I-PER", "I-PER"], ["O", "B-PER", "E-PER"]),
        (iob2_to_bioes, ["I-PER"], ["S-PER"]),
        (iob2_to_bioes, ["B-PER", "I-LOC", "O"], ["S-PER", "S-LOC", "O"]),
        (iob2_to_bioes, ["I-PER", "O", "I-PER"], ["S-PER", "O", "S-PER"]),
        # BIOES: an E-/I- with no open chunk starts one.
        (bioes_to_iob2, ["O", "E-PER"], ["O", "B-PER"]),
        (bioes_to_iob2, ["O", "I-PER", "E-PER"], ["O", "B-PER", "I-PER"]),
        (bioes_to_iob2, ["B-PER", "E-LOC"], ["B-PER", "B-LOC"]),
        (bioes_to_iob2, ["B-PER", "O"], ["B-PER", "O"]),
    ],
)
def test_ill_formed_input_is_repaired_like_conlleval(function, tags, expected):
    assert function(tags) == expected


def test_convert_repairs_ill_formed_iob2_to_iob1():
    assert convert(["O", "I-PER", "B-PER"], "iob2", "iob1") == ["O", "I-PER", "B-PER"]
    assert convert(["I-LOC", "I-PER"], "iob2", "iob1") == ["I-LOC", "I-PER"]
    assert convert(["O", "I-PER"], "iob1", "bioes") == ["O", "S-PER"]


@pytest.mark.parametrize(
    "tags,expected",
    [
        (["S-PER", "I-PER"], ["B-PER", "B-PER"]),
        (["E-PER", "E-PER"], ["B-PER", "B-PER"]),
        (["S-PER", "E-PER"], ["B-PER", "B-PER"]),
        (["B-PER", "E-PER", "E-PER"], ["B-PER", "I-PER", "B-PER"]),
        (["B-PER", "E-PER", "I-PER", "E-PER"], ["B-PER", "I-PER", "B-PER", "I-PER"]),
    ],
)
def test_bioes_to_iob2_starts_new_chunk_after_closed_chunk(tags, expected):
    assert bioes_to_iob2(tags) == expected


# ---------------------------------------------------------------------------------------------
# Property-style tests on random sequences


def _random_iob2(rng: random.Random, types=("PER", "LOC", "ORG")) -> list[str]:
    """A random well-formed IOB2 sequence."""
    tags = []
    for _ in range(rng.randint(0, 12)):
        prev = tags[-1] if tags else "O"
        r = rng.random()
        if prev != "O" and r < 0.4:
            tags.append("I-" + prev.split("-", 1)[1])
        elif r < 0.7:
            tags.append("B-" + rng.choice(types))
        else:
            tags.append("O")
    return tags


def _random_any(rng: random.Random, prefixes: str, types=("PER", "LOC")) -> list[str]:
    """Random (mostly ill-formed) tags of a scheme's alphabet."""
    out = []
    for _ in range(rng.randint(1, 8)):
        prefix = rng.choice(prefixes + "O")
        out.append("O" if prefix == "O" else f"{prefix}-{rng.choice(types)}")
    return out


def _spans_iob2(tags):
    """Spans of a well-formed IOB2 sequence, computed independently of the package."""
    spans, start = [], None
    for i, tag in enumerate(tags + ["O"]):
        if start is not None and not tag.startswith("I-"):
            spans.append((tags[start][2:], start, i - 1))
            start = None
        if tag.startswith("B-"):
            start = i
    return spans


def _valid(tags, scheme):
    seq = ["<s>"] + tags + ["</s>"]
    return all(allowed_transition(a, b, scheme) for a, b in zip(seq, seq[1:]))


def test_random_iob2_round_trips():
    rng = random.Random(1234)
    for _ in range(500):
        iob2 = _random_iob2(rng)
        assert _valid(iob2, "iob2")
        bioes = iob2_to_bioes(iob2)
        iob1 = iob2_to_iob1(iob2)
        assert len(bioes) == len(iob1) == len(iob2)
        assert _valid(bioes, "bioes"), (iob2, bioes)
        assert bioes_to_iob2(bioes) == iob2
        assert iob1_to_iob2(iob1) == iob2
        assert convert(iob1, "iob1", "bioes") == bioes
        assert convert(bioes, "bioes", "iob1") == iob1
        # IOB1 uses B- only right after a chunk of the same type.
        for i, tag in enumerate(iob1):
            if tag.startswith("B-"):
                assert i > 0 and iob1[i - 1][2:] == tag[2:] and iob1[i - 1] != "O"
        # BIOES: one S- per single-token chunk, B-/E- pairs for the others.
        spans = _spans_iob2(iob2)
        assert sum(t.startswith("S-") for t in bioes) == sum(s == e for _, s, e in spans)
        assert sum(t.startswith("B-") for t in bioes) == sum(s != e for _, s, e in spans)
        assert sum(t.startswith("E-") for t in bioes) == sum(s != e for _, s, e in spans)
        assert [(lab, s, e) for lab, s, e in get_entities(iob2)] == spans


@pytest.mark.parametrize("source,prefixes", [("iob1", "BI"), ("iob2", "BI")])
def test_random_ill_formed_keeps_conlleval_spans(source, prefixes):
    """Any input, however ill-formed, converts to sequences whose chunks are those conlleval/seqeval read."""
    rng = random.Random(99)
    for _ in range(800):
        tags = _random_any(rng, prefixes)
        expected = get_entities(tags)
        for target in ("iob1", "iob2", "bioes"):
            out = convert(tags, source, target)
            assert get_entities(out) == expected, (tags, target, out)
        # via IOB2 (convert(x, s, s) is a plain copy, so use the direct repairing converter)
        assert _valid(iob1_to_iob2(tags), "iob2")
        assert _valid(convert(tags, source, "bioes"), "bioes")


def test_random_ill_formed_bioes_keeps_conlleval_spans():
    rng = random.Random(99)
    for _ in range(800):
        tags = _random_any(rng, "BIES")
        assert get_entities(convert(tags, "bioes", "iob2")) == get_entities(tags), tags


def test_random_ill_formed_bioes_output_is_well_formed_iob2():
    rng = random.Random(7)
    for _ in range(500):
        tags = _random_any(rng, "BIES")
        assert _valid(bioes_to_iob2(tags), "iob2")


# ---------------------------------------------------------------------------------------------
# convert errors and allowed_transition


@pytest.mark.parametrize("source,target", [("bilou", "iob2"), ("iob2", "IOB2"), ("", "bioes")])
def test_convert_rejects_unknown_schemes(source, target):
    with pytest.raises(ValueError, match="unknown tag scheme"):
        convert(["O"], source, target)


@pytest.mark.parametrize("source,target", [("none", "iob2"), ("iob2", "none"), ("bioes", "none"), ("none", "iob1")])
def test_convert_rejects_none_to_span(source, target):
    with pytest.raises(ValueError, match="none"):
        convert(["O"], source, target)


def test_schemes_constant():
    assert set(SCHEMES) == {"iob1", "iob2", "bioes", "none"}


@pytest.mark.parametrize(
    "a,b,ok",
    [
        ("<s>", "O", True),
        ("<s>", "B-PER", True),
        ("<s>", "I-PER", False),
        ("O", "I-PER", False),
        ("O", "B-PER", True),
        ("B-PER", "I-PER", True),
        ("I-PER", "I-PER", True),
        ("B-PER", "I-LOC", False),
        ("I-LOC", "I-PER", False),
        ("B-PER", "B-PER", True),
        ("I-PER", "O", True),
        ("B-PER", "</s>", True),
        ("I-PER", "</s>", True),
        ("O", "</s>", True),
    ],
)
def test_allowed_transition_iob2(a, b, ok):
    assert allowed_transition(a, b, "iob2") is ok


@pytest.mark.parametrize(
    "a,b,ok",
    [
        ("<s>", "O", True),
        ("<s>", "B-PER", True),
        ("<s>", "S-PER", True),
        ("<s>", "I-PER", False),
        ("<s>", "E-PER", False),
        ("B-PER", "I-PER", True),
        ("B-PER", "E-PER", True),
        ("I-PER", "E-PER", True),
        ("I-PER", "I-PER", True),
        ("B-PER", "E-LOC", False),
        ("I-PER", "I-LOC", False),
        ("B-PER", "O", False),
        ("I-PER", "O", False),
        ("B-PER", "B-PER", False),
        ("B-PER", "S-PER", False),
        ("E-PER", "B-PER", True),
        ("E-PER", "S-LOC", True),
        ("E-PER", "O", True),
        ("E-PER", "I-PER", False),
        ("E-PER", "E-PER", False),
        ("S-PER", "I-PER", False),
        ("S-PER", "E-PER", False),
        ("S-PER", "S-PER", True),
        ("O", "E-PER", False),
        ("O", "O", True),
        ("B-PER", "</s>", False),
        ("I-PER", "</s>", False),
        ("E-PER", "</s>", True),
        ("S-PER", "</s>", True),
        ("O", "</s>", True),
    ],
)
def test_allowed_transition_bioes(a, b, ok):
    assert allowed_transition(a, b, "bioes") is ok


@pytest.mark.parametrize("scheme", ["iob1", "none"])
def test_allowed_transition_unconstrained_schemes(scheme):
    for a, b in [("O", "I-PER"), ("<s>", "I-PER"), ("B-PER", "I-LOC"), ("I-PER", "</s>")]:
        assert allowed_transition(a, b, scheme) is True


def test_allowed_transition_unknown_scheme():
    with pytest.raises(ValueError, match="unknown tag scheme"):
        allowed_transition("O", "O", "bilou")
