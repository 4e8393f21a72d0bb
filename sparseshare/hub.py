"""The Hugging Face Hub side of a model folder: resolving a Hub id to a local snapshot, the model card,
and the upload.

A model folder is the same on disk and on the Hub (see :mod:`sparseshare.model`), so loading a Hub id
is ``snapshot_download`` followed by the local loader, and pushing is ``save_pretrained`` into a
temporary folder followed by one ``upload_folder`` commit.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from .errors import ModelFolderError

# Everything a model folder may hold; nothing else is downloaded (no pickles, no code).
MODEL_FILE_PATTERNS = ["config.json", "vocab.json", "labels.json", "model.safetensors", "masks.safetensors",
                       "routing.json", "README.md", "encoder/*.json", "encoder/*.txt", "encoder/*.model"]

ENCODER_CITATIONS = {
    "bilstm": """@inproceedings{ma2016end,
  title = {End-to-end Sequence Labeling via Bi-directional {LSTM-CNNs-CRF}},
  author = {Ma, Xuezhe and Hovy, Eduard},
  booktitle = {Proceedings of ACL},
  year = {2016}
}""",
}


def resolve_model_folder(name_or_path: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None,
                         local_files_only: bool = False, token: str | bool | None = None) -> Path:
    """A local model folder for a folder path or a Hub repo id (downloaded into the Hub cache)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, OfflineModeIsEnabled
    from huggingface_hub.utils import validate_repo_id

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    not_found = f"model folder not found: {path.resolve()}"
    if isinstance(name_or_path, Path) or name.startswith((".", "~", "/")) or "\\" in name or path.exists() \
            or name.count("/") > 1:
        raise ModelFolderError(not_found)
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelFolderError(f"{not_found} ({name!r} is not a Hub repo id either)") from None
    try:
        return Path(snapshot_download(name, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                                      token=token, allow_patterns=MODEL_FILE_PATTERNS, library_name="sparseshare"))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        raise ModelFolderError(f"{not_found}; as a Hub repo id, {name!r} has no cached copy and the Hub cannot be "
                               f"reached ({type(err).__name__}: {err})") from err
    except HfHubHTTPError as err:
        raise ModelFolderError(f"{not_found}; as a Hub repo id, downloading {name!r} failed: {err}") from err


def push_folder(folder: Path, repo_id: str, *, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload sparseshare model", revision: str | None = None):
    """Create the repo if needed and upload ``folder`` in one commit; returns the ``CommitInfo``."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
    return api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=folder, commit_message=commit_message,
                             revision=revision)


def push_to_hub(model, repo_id: str, **kwargs):
    """``model.save_pretrained`` into a temporary folder, then :func:`push_folder`."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = model.save_pretrained(Path(tmp) / "model")
        return push_folder(folder, repo_id, **kwargs)


# -- model card ---------------------------------------------------------------------------------
def model_card(model, info: dict | None = None):
    """A ``huggingface_hub.ModelCard`` describing ``model`` (a :class:`~sparseshare.model.MultiTaskTagger`)."""
    from huggingface_hub import ModelCard, ModelCardData

    info = info or {}
    config, tasks = model.config, model.tasks
    datasets = sorted({spec.hub.id for spec in tasks.values() if spec.hub is not None})
    card_data = ModelCardData(
        language="en", library_name="sparseshare", pipeline_tag="token-classification",
        tags=["sparseshare", "multi-task-learning", "sequence-labeling", f"{config.sharing}-sharing",
              f"{config.encoder}-encoder", *tasks],
        datasets=datasets or None)
    names = " + ".join(tasks)
    lines = [f"# sparseshare: {names} ({config.sharing} sharing, {_encoder_name(config)})", "",
             f"A multi-task sequence labeller trained with sparseshare "
             f"({len(tasks)} task{'s' if len(tasks) > 1 else ''}: {names}). Weights are safetensors, "
             f"everything else JSON; loading runs no code from this repository.", "",
             "## Use", "", "```python", "from sparseshare import Tagger", "",
             'tagger = Tagger.from_pretrained("<this repo id or folder>")',
             'doc = tagger("EU rejects German call to boycott British lamb.")',
             *[f'doc.spans["{t}"]' if spec.scheme != "none" else f'doc.tags["{t}"]' for t, spec in tasks.items()],
             "```", "", "or `sparseshare tag <repo id or folder> input.txt --format json`.", "",
             "## Tasks", "", "| task | what | output | labels |", "|---|---|---|---|"]
    for name, spec in tasks.items():
        labels = sorted({label.split("-", 1)[-1] for label in model.labels[name]} - {"O"}) \
            if spec.scheme != "none" else model.labels[name]
        shown = ", ".join(labels[:40]) + (f", ... ({len(labels)} in all)" if len(labels) > 40 else "")
        output = f"spans ({spec.scheme.upper()} tags)" if spec.scheme != "none" else "one tag per token"
        lines.append(f"| {name} | {spec.description} | {output} | {shown} |")
    lines += ["", "## Model", "", f"- Encoder: {_encoder_name(config)}.", f"- Sharing: `{config.sharing}`.",
              f"- Heads: `{config.head}`, one per task.",
              f"- Parameters: {sum(p.numel() for p in model.parameters()):,}."]
    section = model.sharing.card_section(model)  # each strategy describes its own state
    if section:
        lines += ["", *section]
    lines += ["", "## Scores", ""]
    lines += _scores_section(info)
    if info.get("training_config"):
        import yaml

        lines += ["", "## Training configuration", "", "```yaml",
                  yaml.safe_dump(info["training_config"], sort_keys=False).rstrip(), "```"]
    lines += ["", "## Intended use and limits", "",
              "- English newswire-style text, tokenised like the training corpora (raw text is tokenised "
              "PTB/CoNLL-style by `Tagger`). Expect lower scores on other domains, on lower-cased or noisy "
              "text, and on languages other than English.",
              "- The label sets are fixed by the training corpora (listed above); the model cannot produce others.",
              "- Test scores, where shown, were measured once on each task's test split, after the model was "
              "selected on dev.",
              "", "## Citation", ""]
    citations = [model.sharing.citation] if model.sharing.citation else []
    citations += [ENCODER_CITATIONS[config.encoder]] if config.encoder in ENCODER_CITATIONS else []
    lines += (["```bibtex", "\n\n".join(citations), "```"] if citations else ["No method citation applies."])
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def _encoder_name(config) -> str:
    if config.encoder == "transformer":
        return f"Transformer encoder `{config.transformer.name_or_path}`"
    if config.encoder == "scratch":
        return f"Transformer trained from scratch ({config.scratch.layers} layers, {config.scratch.dim}-d)"
    c = config.bilstm
    return f"BiLSTM ({c.layers}x{c.hidden}) + char-CNN, {c.word_dim}-d word embeddings"


def _scores_section(info: dict) -> list[str]:
    splits = [s for s in ("dev", "test") if info.get(s)]
    if not splits:
        return ["No scores were recorded with this model folder."]
    tasks = list(dict.fromkeys(t for s in splits for t in info[s]))
    lines = ["| task | " + " | ".join(splits) + " |", "|---" * (len(splits) + 1) + "|"]
    lines += [f"| {t} | " + " | ".join(f"{info[s][t]:.2f}" if t in info[s] else "–" for s in splits) + " |"
              for t in tasks]
    lines += ["", "Accuracy for tagging tasks, span F1 (seqeval, conlleval-compatible) for span tasks; "
              "the checkpoint was selected on dev"
              + (f" (epoch {info['selected_epoch']})" if info.get("selected_epoch") else "") + "."]
    if info.get("command"):
        lines += ["", "Produced by:", "", "```bash", info["command"], "```"]
    return lines
