"""The three-line Python API::

    tagger = Tagger.from_pretrained("path/or/hub-id")
    doc = tagger("EU rejects German call to boycott British lamb.")
    doc.tokens, doc.tags["pos"], doc.spans["ner"]

Raw text is tokenised and split into sentences (:mod:`sparseshare.text`); all sentences of all texts in
one call are tagged together in length-sorted batches (the shared encoder runs once per batch for every
task that shares it) and put back in input order.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from seqeval.metrics.sequence_labeling import get_entities

from .model import MultiTaskTagger, check_batch_size, check_token_lists
from .text import split_sentences, tokenize


@dataclass(frozen=True)
class Span:
    label: str
    start: int  # first token
    end: int  # one past the last token
    text: str
    start_char: int | None = None  # character offsets in the input text (None for pre-tokenised input)
    end_char: int | None = None

    def to_dict(self) -> dict:
        return {"label": self.label, "start": self.start, "end": self.end, "text": self.text,
                "start_char": self.start_char, "end_char": self.end_char}


@dataclass
class Doc:
    tokens: list[str]
    tags: dict[str, list[str]] = field(default_factory=dict)  # one tag per token, per task
    spans: dict[str, list[Span]] = field(default_factory=dict)  # span tasks (chunk, NER) only
    sentences: list[tuple[int, int]] = field(default_factory=list)  # token ranges [start, end)
    text: str | None = None  # the raw input (None for pre-tokenised input)
    offsets: list[tuple[int, int]] | None = None  # each token's [start, end) in ``text``

    def __len__(self) -> int:
        return len(self.tokens)

    def to_dict(self) -> dict:
        return {"text": self.text, "tokens": self.tokens, "offsets": self.offsets, "sentences": self.sentences,
                "tags": self.tags, "spans": {task: [s.to_dict() for s in spans] for task, spans in self.spans.items()}}


class Tagger:
    def __init__(self, model: MultiTaskTagger):
        self.model = model.eval()
        self.span_tasks = {name for name, spec in model.tasks.items() if spec.scheme != "none"}

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | torch.device = "cpu", **hub_kwargs) -> "Tagger":
        """A model folder or a Hub repo id; ``hub_kwargs``: ``revision``, ``cache_dir``, ``local_files_only``,
        ``token`` (passed to ``huggingface_hub.snapshot_download``)."""
        return cls(MultiTaskTagger.from_pretrained(name_or_path, device=device, **hub_kwargs))

    @property
    def tasks(self) -> list[str]:
        return list(self.model.tasks)

    def __call__(self, texts: str | Sequence[str], tasks: Sequence[str] | None = None,
                 batch_size: int = 64) -> Doc | list[Doc]:
        """Tag one text (returns a :class:`Doc`) or a list of texts (returns a list of Docs)."""
        single = isinstance(texts, str)
        if not single:
            if not isinstance(texts, Sequence) or isinstance(texts, bytes):
                raise TypeError(f"texts must be a str or a list of str, got {type(texts).__name__}")
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
        texts = [texts] if single else list(texts)
        tokenized = [tokenize(text) for text in texts]
        sentences = [split_sentences(tokens, text) for text, tokens in zip(texts, tokenized)]
        docs = [Doc(tokens=[t.text for t in tokens], sentences=ranges, text=text,
                    offsets=[(t.start, t.end) for t in tokens])
                for text, tokens, ranges in zip(texts, tokenized, sentences)]
        self._tag_docs(docs, tasks, batch_size)
        return docs[0] if single else docs

    def tag_tokens(self, sentences: Sequence[Sequence[str]], tasks: Sequence[str] | None = None,
                   batch_size: int = 64) -> list[Doc]:
        """Tag pre-tokenised sentences as they are (one Doc per sentence, no offsets)."""
        check_token_lists(sentences)
        docs = [Doc(tokens=list(s), sentences=[(0, len(s))] if len(s) else []) for s in sentences]
        self._tag_docs(docs, tasks, batch_size)
        return docs

    def _tag_docs(self, docs: list[Doc], tasks, batch_size: int) -> None:
        tasks = self.model.check_tasks(tasks)
        batch_size = check_batch_size(batch_size)
        units = [(d, start, end) for d, doc in enumerate(docs) for start, end in doc.sentences]
        # tag_tokens has checked the tokens, and the tokenizer makes no blank ones
        predicted = self.model.predict_corpus([docs[d].tokens[s:e] for d, s, e in units], tasks, batch_size) \
            if units else {task: [] for task in tasks}
        for doc in docs:
            doc.tags = {task: [] for task in tasks}
            doc.spans = {task: [] for task in tasks if task in self.span_tasks}
        for i, (d, start, _) in enumerate(units):
            doc = docs[d]
            for task in tasks:
                labels = predicted[task][i]
                doc.tags[task].extend(labels)
                if task in doc.spans:
                    doc.spans[task].extend(self._span(doc, label, start + first, start + last + 1)
                                           for label, first, last in get_entities(labels))

    @staticmethod
    def _span(doc: Doc, label: str, start: int, end: int) -> Span:
        if doc.offsets is None:
            return Span(label, start, end, " ".join(doc.tokens[start:end]))
        first, last = doc.offsets[start][0], doc.offsets[end - 1][1]
        return Span(label, start, end, doc.text[first:last], first, last)
