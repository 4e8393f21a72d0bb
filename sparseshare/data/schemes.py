"""Tag scheme conversions between IOB1, IOB2 (BIO) and BIOES.

All converters take one sentence's tags and return a new list. They accept any
well-formed input of their source scheme, and they are total on ill-formed input
(e.g. a softmax head predicting ``I-PER`` after ``O``): such tags are repaired the
way conlleval reads them, so a decoded sequence can always be scored.
"""
from __future__ import annotations

SCHEMES = ("iob1", "iob2", "bioes", "none")


def _split(tag: str) -> tuple[str, str]:
    if tag == "O" or "-" not in tag:
        return tag, ""
    prefix, label = tag.split("-", 1)
    return prefix, label


def iob1_to_iob2(tags: list[str]) -> list[str]:
    """IOB1 uses B- only between two adjacent chunks of the same type; IOB2 starts every chunk with B-."""
    out = []
    prev_prefix, prev_label = "O", ""
    for tag in tags:
        prefix, label = _split(tag)
        if prefix == "I" and (prev_prefix == "O" or prev_label != label):
            out.append(f"B-{label}")
        else:
            out.append(tag)
        prev_prefix, prev_label = prefix, label
    return out


def iob2_to_iob1(tags: list[str]) -> list[str]:
    out = []
    prev_prefix, prev_label = "O", ""
    for tag in tags:
        prefix, label = _split(tag)
        if prefix == "B" and not (prev_prefix in ("B", "I") and prev_label == label):
            out.append(f"I-{label}")
        else:
            out.append(tag)
        prev_prefix, prev_label = prefix, label
    return out


def iob2_to_bioes(tags: list[str]) -> list[str]:
    tags = iob1_to_iob2(tags)  # repairs I- that starts a chunk, so the rules below see clean IOB2
    out = []
    for i, tag in enumerate(tags):
        prefix, label = _split(tag)
        nxt = tags[i + 1] if i + 1 < len(tags) else "O"
        continues = nxt == f"I-{label}"
        if prefix == "B":
            out.append(tag if continues else f"S-{label}")
        elif prefix == "I":
            out.append(tag if continues else f"E-{label}")
        else:
            out.append(tag)
    return out


def bioes_to_iob2(tags: list[str]) -> list[str]:
    out = []
    open_label = None  # the type of the chunk that the next I-/E- may continue
    for tag in tags:
        prefix, label = _split(tag)
        if prefix in ("I", "E") and open_label == label:
            out.append(f"I-{label}")
        elif prefix in ("B", "S", "I", "E"):
            out.append(f"B-{label}")  # an I-/E- with no open chunk of its type starts one, as conlleval reads it
        else:
            out.append(tag)
        open_label = label if prefix in ("B", "I") else None
    return out


_TO_IOB2 = {"iob1": iob1_to_iob2, "iob2": iob1_to_iob2, "bioes": bioes_to_iob2}
_FROM_IOB2 = {"iob1": iob2_to_iob1, "iob2": lambda tags: list(tags), "bioes": iob2_to_bioes}


def convert(tags: list[str], source: str, target: str) -> list[str]:
    """Convert ``tags`` from scheme ``source`` to scheme ``target`` (via IOB2)."""
    for scheme in (source, target):
        if scheme not in SCHEMES:
            raise ValueError(f"unknown tag scheme {scheme!r}; expected one of {SCHEMES}")
    if source == target or "none" in (source, target):
        if source != target:
            raise ValueError(f"cannot convert between {source!r} and {target!r}: 'none' is not a span scheme")
        return list(tags)
    return _FROM_IOB2[target](_TO_IOB2[source](tags))


SPAN_PREFIXES = {"iob1": ("B", "I"), "iob2": ("B", "I"), "bioes": ("B", "I", "E", "S")}


def well_formed_label(tag: str, scheme: str) -> bool:
    """``O`` or ``<prefix>-<type>`` with a prefix of ``scheme`` and a non-empty type (any label for ``none``)."""
    if scheme == "none":
        return True
    prefix, label = _split(tag)
    return tag == "O" or (prefix in SPAN_PREFIXES[scheme] and bool(label))


def allowed_transition(from_tag: str, to_tag: str, scheme: str) -> bool:
    """Whether ``to_tag`` may follow ``from_tag`` in a well-formed sequence. ``"<s>"``/``"</s>"`` mark the ends."""
    if scheme in ("none", "iob1"):
        return True  # IOB1 allows I- after O; nothing to constrain
    fp, fl = ("O", "") if from_tag == "<s>" else _split(from_tag)
    tp, tl = ("O", "") if to_tag == "</s>" else _split(to_tag)
    if scheme == "iob2":
        if tp == "I":
            return fp in ("B", "I") and fl == tl
        return True
    if scheme == "bioes":
        open_chunk = fp in ("B", "I")
        if open_chunk:
            return tp in ("I", "E") and fl == tl
        return tp not in ("I", "E")
    raise ValueError(f"unknown tag scheme {scheme!r}")


def first_invalid_transition(tags: list[str], scheme: str) -> int | None:
    """Index of the first tag that cannot follow its predecessor in ``scheme`` (len(tags) for a bad ending)."""
    previous = "<s>"
    for i, tag in enumerate(tags):
        if not allowed_transition(previous, tag, scheme):
            return i
        previous = tag
    return len(tags) if tags and not allowed_transition(previous, "</s>", scheme) else None
