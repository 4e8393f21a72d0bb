"""Export one task of a Transformer-encoder model as a plain ``AutoModelForTokenClassification`` folder.

The exported folder needs only transformers: ``pipeline("token-classification", model=OUT)`` loads it.
The task's encoder weights are those of the one plain model it runs through (the strategy's
``task_encoder_state``: ``weight * mask`` for sparse sharing, the task's own bottom layers, roaming's unit masks
folded into the down projections, a WPL router's greedy blocks) and its softmax head becomes the ``classifier``.
What cannot be exported is refused with the reason:

- strategies whose task path is not one plain model: cross-stitch, routers that choose per sentence;
- BiLSTM (and scratch-Transformer) encoders have no transformers architecture to map onto;
- a CRF head decodes with Viterbi over transition scores, which a token-classification model (argmax per
  token) cannot reproduce, so the export would predict differently: train with ``model.head: softmax``.

Labels are exported in the corpus scheme, so that transformers' span aggregation understands them: a
head trained in BIOES for an IOB2 corpus has its ``S-``/``E-`` classes named ``B-``/``I-``. On well-formed
predictions this is exactly sparseshare's conversion; where a softmax head predicts an ill-formed BIOES
sequence (``O`` then ``E-PER``), sparseshare repairs it as conlleval reads it and the export cannot.
Each word is labelled at its first subword, as in sparseshare; transformers' own pre-tokeniser may split
a word further (``U.N.`` -> ``u . n .``), so compare per word, at the word's first character.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from .errors import SparseshareError
from .encoders.transformer import TransformerEncoder, transformer_of
from .model import MultiTaskTagger


BIOES_TO_IOB2_PREFIX = {"S": "B", "E": "I"}  # a single-token chunk begins one; a chunk's last token is inside it


class ExportError(SparseshareError, ValueError):
    pass


def corpus_label(label: str, train_scheme: str, scheme: str) -> str:
    """The name of a head class in the corpus scheme, one token at a time."""
    if train_scheme == scheme or label == "O" or "-" not in label:
        return label
    prefix, kind = label.split("-", 1)
    if train_scheme == "bioes" and scheme == "iob2":
        return f"{BIOES_TO_IOB2_PREFIX.get(prefix, prefix)}-{kind}"
    raise ExportError(f"cannot name {train_scheme} classes in the {scheme} scheme token by token")


def export_task(model: MultiTaskTagger, task: str, out: str | Path, overwrite: bool = False) -> Path:
    from transformers import AutoModelForTokenClassification

    model.check_tasks([task])
    config = model.config
    if not any(isinstance(module, TransformerEncoder) for module in model.modules()):
        raise ExportError(f"export needs a Hugging Face Transformer encoder; this model has a {config.encoder!r} "
                          f"encoder, which has no transformers equivalent (use sparseshare to run it)")
    if config.head != "softmax":
        raise ExportError(f"task {task!r} has a {config.head!r} head: CRF (Viterbi) decoding cannot be expressed "
                          f"by AutoModelForTokenClassification, so the export would predict differently; "
                          f"train with model.head=softmax to export")
    try:
        state = model.sharing.task_encoder_state(task)
    except NotImplementedError as err:
        raise ExportError(str(err)) from None
    encoder = transformer_of(model)
    natural = encoder.checkpoint_max_length
    if natural is not None and encoder.max_length < natural:
        raise ExportError(f"model.transformer.max_length is {encoder.max_length}: sparseshare reads a sentence longer "
                          f"than that in overlapping windows, which a token-classification model cannot do (it reads "
                          f"up to {natural} subwords at once), so the export would predict differently on such "
                          f"sentences")
    spec = model.tasks[task]
    labels = [corpus_label(label, spec.train_scheme, spec.scheme) for label in model.labels[task]]
    hf_config = copy.deepcopy(encoder.model.config)
    hf_config.num_labels = len(labels)
    hf_config.id2label = dict(enumerate(labels))
    # S-X and B-X share a name: label2id keeps the first class of each name (only id2label decodes)
    hf_config.label2id = {label: i for i, label in reversed(list(enumerate(labels)))}
    token_model = AutoModelForTokenClassification.from_config(hf_config)

    prefix = "model."  # TransformerEncoder keeps the AutoModel as .model
    base_state = {name[len(prefix):]: tensor for name, tensor in state.items() if name.startswith(prefix)}
    base = getattr(token_model, token_model.base_model_prefix)
    missing, unexpected = base.load_state_dict(base_state, strict=False)
    unexpected = [n for n in unexpected if not n.startswith("pooler.")]  # token classifiers have no pooler
    if missing or unexpected:
        raise ExportError(f"the encoder's weights do not fit {type(token_model).__name__}: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}")
    classifier = getattr(token_model, "classifier", None)
    head = model.heads[task].proj
    if not isinstance(classifier, nn.Linear) or classifier.weight.shape != head.weight.shape:
        raise ExportError(f"{type(token_model).__name__} has no linear classifier of shape "
                          f"{tuple(head.weight.shape)} to take the {task!r} head")
    with torch.no_grad():
        classifier.weight.copy_(head.weight)
        classifier.bias.copy_(head.bias)

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ExportError(f"{out} exists and is not an empty folder; choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    token_model.eval().save_pretrained(out)  # safetensors
    encoder.tokenizer.save_pretrained(out)
    (out / "README.md").write_text(
        f"---\nlibrary_name: transformers\npipeline_tag: token-classification\ntags: [sparseshare-export, {task}]\n---\n\n"
        f"# {task}: exported from a sparseshare {config.sharing}-sharing model\n\n"
        f"{spec.description}. Labels ({spec.scheme.upper()}): {', '.join(sorted(set(labels)))}.\n\n"
        f"```python\nfrom transformers import pipeline\n\ntagger = pipeline(\"token-classification\", "
        f"model=\"<this folder>\", aggregation_strategy=\"first\")\n```\n\n"
        f"Each word is labelled at its first subword, as in training: give the text tokenised as in the training "
        f"corpus (CoNLL/PTB style), tokens separated by spaces. A sentence of more than {natural} subwords is "
        f"more than this model reads at once: sparseshare reads it in overlapping windows, transformers does not. "
        f"A word the tokenizer maps to no subword (a control character) gets no label here; sparseshare reads it "
        f"as the unknown token.\n", encoding="utf-8")
    return out
