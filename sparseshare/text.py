"""Raw text -> CoNLL/PTB-style tokens with character offsets, and sentences.

The models are trained on CoNLL-2003 / Penn Treebank tokenisation, so raw text is cut the same way:
punctuation is split off words (``lamb.`` -> ``lamb`` ``.``), clitics are separated (``don't`` -> ``do``
``n't``, ``EU's`` -> ``EU`` ``'s``), while abbreviations (``U.S.``, ``Mr.``), numbers (``3.5``, ``1,000``),
hyphenated words, e-mail addresses and URLs stay whole, and so does a number with a period that opens
the text (``1. Hingis``, a list or ranking item). Quotes are kept as written (CoNLL-2003 writes
``"``, not PTB's ``` `` ``` / ``''``). Every token keeps its ``[start, end)`` character span in the input.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Abbreviations whose final period belongs to the token (lower-cased, without the period).
ABBREVIATIONS = frozenset("""
mr mrs ms dr prof sr jr st mt ft gen col lt sgt capt cmdr adm gov sen rep rev hon pres supt messrs
inc corp co ltd plc bros dept univ assn vol vols fig figs est approx vs etc al cf ie eg
jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu thur thurs fri sat sun
ala ariz ark calif colo conn del fla ga ill ind kan kans ky la md mass mich minn miss mo mont neb nev
okla ore pa penn tenn tex va vt wash wis wyo
""".split())
CLITICS = ("n't", "'s", "'re", "'ve", "'ll", "'d", "'m", "’s", "n’t", "’re", "’ve", "’ll", "’d", "’m")
LEADING = "\"'`([{<“‘«‹„‚$£€¥#"
TRAILING = "\"'`)]}>”’»›“‘«‹,;:!?%"  # German and French texts close with “ ‘ « ‹
CLOSING = set("\"')]}>”’»›“‘«‹")
NUMBER_SIGNS = {"No.", "no.", "Nos.", "nos."}  # keep their period before a number: "No. 1"
SENTENCE_END = {".", "!", "?"}

_URL_OR_EMAIL = re.compile(r"^(?:[a-z][a-z0-9+.-]*://\S+|www\.\S+|[\w.+-]+@[\w-]+\.[\w.-]+)$", re.IGNORECASE)
_INITIALS = re.compile(r"^(?:[A-Za-z]\.)+[A-Za-z]?\.?$")  # U.S. / U.N. / e.g.
_NUMBER = re.compile(r"^[+-]?\d[\d,.:/]*\d$|^\d$")  # 1,000  3.5  12:30  1/2
# A byte-order mark (U+FEFF, e.g. left at the start of a file read without utf-8-sig) and a zero-width space (U+200B,
# common in text copied from web pages, and a word boundary by its Unicode definition) separate like a space and are
# never part of a token; offsets still index the text as given. Python's \s includes neither.
INVISIBLE_SEPARATORS = "\ufeff\u200b"
_WORD = re.compile(rf"[^\s{INVISIBLE_SEPARATORS}]+")
# a line ends with LF, CRLF (CRs before an LF: CR CR LF is CRLF text saved again in text mode on Windows) or lone CRs
_NEWLINE = r"(?:\r*\n|\r(?!\r*\n))"
_BLANK_LINE = re.compile(rf"{_NEWLINE}(?:[^\S\r\n]|[{INVISIBLE_SEPARATORS}])*{_NEWLINE}")
_LIST_NUMBER = re.compile(r"^\d{1,3}\.$")
_INNER_SPLIT = re.compile(r"(--+|\.\.\.+|…)")  # dashes and ellipses split even inside a word


@dataclass(frozen=True)
class Token:
    text: str
    start: int  # character offset in the input text
    end: int  # exclusive


def tokenize(text: str) -> list[Token]:
    """Tokens of ``text`` with their character spans; whitespace is never part of a token."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    tokens: list[Token] = []
    matches = list(_WORD.finditer(text))
    for i, match in enumerate(matches):
        start, chunk = match.start(), match.group()
        keep = (not tokens and _LIST_NUMBER.match(chunk)) or (  # "1. Hingis ...": a ranking or list item
            chunk in NUMBER_SIGNS and i + 1 < len(matches) and matches[i + 1].group()[0].isdigit())
        if keep:
            tokens.append(Token(chunk, start, match.end()))
            continue
        for piece in _INNER_SPLIT.split(chunk):
            if piece:
                tokens.extend(_split_chunk(piece, start))
                start += len(piece)
    # a run of format characters alone (a direction mark, a zero-width joiner, a soft hyphen between spaces)
    return [token for token in tokens if not blank_token(token.text)]


# format characters that are drawn: the prepended concatenation marks (Arabic number signs, end of ayah, ...)
VISIBLE_FORMAT = frozenset("\u0600\u0601\u0602\u0603\u0604\u0605\u06dd\u070f\u0890\u0891\u08e2\U000110bd\U000110cd")


def blank_token(token: str) -> bool:
    """A token without a visible character: spaces and format characters only (byte-order marks, zero-width spaces
    and joiners, direction marks, soft hyphens: Unicode category Cf, but for the few drawn ones). It would get a
    tag of its own."""
    return all(c.isspace() or (unicodedata.category(c) == "Cf" and c not in VISIBLE_FORMAT) for c in token)


def _split_chunk(chunk: str, offset: int) -> list[Token]:
    if chunk.isalnum():  # most words: nothing to split
        return [Token(chunk, offset, offset + len(chunk))]
    if _INNER_SPLIT.fullmatch(chunk):
        return [Token(chunk, offset, offset + len(chunk))]
    address = chunk.rstrip(TRAILING + ".")
    if _URL_OR_EMAIL.match(address):  # trailing punctuation after an address is still split off
        return [Token(address, offset, offset + len(address))] + [
            Token(c, offset + i, offset + i + 1) for i, c in enumerate(chunk) if i >= len(address)]
    head: list[Token] = []
    tail: list[Token] = []
    start, end = 0, len(chunk)
    while start < end and chunk[start] in LEADING:
        head.append(Token(chunk[start], offset + start, offset + start + 1))
        start += 1
    while end > start:
        core, last, cut = chunk[start:end], chunk[end - 1], end
        if last in TRAILING or (last == "." and not _keeps_period(core)):
            cut = end - 1
        else:
            lower = core.lower()
            clitic = next((c for c in CLITICS if lower.endswith(c) and len(core) > len(c)), None) \
                if "'" in core or "’" in core else None
            if clitic is None:
                break
            cut = end - len(clitic)
        tail.append(Token(chunk[cut:end], offset + cut, offset + end))
        end = cut
    core_tokens = [Token(chunk[start:end], offset + start, offset + end)] if end > start else []
    return head + core_tokens + tail[::-1]


def _keeps_period(word: str) -> bool:
    """Does the final period of ``word`` belong to it (an abbreviation or initials)?"""
    stem = word[:-1]
    if not stem or stem.endswith("."):
        return bool(_INITIALS.match(word)) and len(word) > 2
    return stem.lower() in ABBREVIATIONS or bool(_INITIALS.match(word)) or (len(stem) == 1 and stem.isupper())


def split_sentences(tokens: list[Token], text: str | None = None) -> list[tuple[int, int]]:
    """Token ranges ``[start, end)`` of sentences: a sentence ends after ``.``, ``!`` or ``?`` (and any closing
    quotes or brackets written right after it) when the next token starts with an upper-case letter, a digit or an
    opening quote/bracket. With ``text``, a blank line also ends a sentence (headlines, datelines)."""
    if text is not None:  # paragraphs first, then sentences within each
        ranges, first = [], 0
        for i in range(1, len(tokens) + 1):
            if i == len(tokens) or _BLANK_LINE.search(text, tokens[i - 1].end, tokens[i].start):
                ranges += [(first + s, first + e) for s, e in split_sentences(tokens[first:i])]
                first = i
        return ranges
    ranges, start, i, n = [], 0, 0, len(tokens)
    while i < n:
        if tokens[i].text in SENTENCE_END or tokens[i].text in ("...", "…"):
            end = i + 1
            # closing quotes/brackets written right after the punctuation belong to this sentence
            while end < n and tokens[end].text in CLOSING and tokens[end].start == tokens[end - 1].end:
                end += 1
            if end < n and _opens_sentence(tokens[end].text) and tokens[i].text not in ("...", "…"):
                ranges.append((start, end))
                start = end
            i = end
        else:
            i += 1
    if start < n:
        ranges.append((start, n))
    return ranges


def _opens_sentence(text: str) -> bool:
    first = text[0]
    return first.isupper() or first.isdigit() or first in "\"'“‘([{«"
