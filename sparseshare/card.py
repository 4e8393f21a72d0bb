"""The model card (README.md of a model folder): what the model is, its tasks and scores, the sharing
strategy's own section and the citations. Each strategy writes its section (``card_section``) and names its
citation, and so does each encoder kind; this module knows none of their internals."""
from __future__ import annotations

import re
from pathlib import Path

from .encoders import encoder_kind


def model_card(model, info: dict | None = None):
    """A ``huggingface_hub.ModelCard`` describing ``model`` (a :class:`~sparseshare.model.MultiTaskTagger`)."""
    from huggingface_hub import ModelCard, ModelCardData

    info = info or {}
    config, tasks = model.config, model.tasks
    corpora = {name: _corpus_given(name, info.get("training_config")) for name in tasks}
    datasets = sorted({spec.hub.id for name, spec in tasks.items() if spec.hub is not None and not corpora[name]})
    names = " + ".join(tasks)
    results = _eval_results(tasks, corpora, info)
    card_data = ModelCardData(
        language="en", library_name="sparseshare", pipeline_tag="token-classification",
        tags=["sparseshare", "multi-task-learning", "sequence-labeling", f"{config.sharing}-sharing",
              f"{config.encoder}-encoder", *tasks],
        datasets=datasets or None, eval_results=results or None, base_model=_hub_checkpoint(config),
        model_name=f"sparseshare {names} ({config.sharing} sharing)" if results else None)
    lines = [f"# sparseshare: {names} ({config.sharing} sharing, {encoder_kind(config.encoder).describe(config)})", "",
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
        what = spec.description + (f"; trained on {corpora[name]}" if corpora[name] else "")
        lines.append(f"| {name} | {what} | {output} | {shown} |")
    lines += ["", "## Model", "", f"- Encoder: {encoder_kind(config.encoder).describe(config)}.", f"- Sharing: `{config.sharing}`.",
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
    kind = encoder_kind(config.encoder)
    citations += [kind.citation] if kind.citation else []
    lines += (["```bibtex", "\n\n".join(citations), "```"] if citations else ["No method citation applies."])
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def _corpus_given(task: str, training_config) -> str | None:
    """The corpus the training config gave ``task`` instead of the one its task file names (``data.dir``,
    ``data.task_dirs.<task>``, ``data.hub_paths.<task>``), as the card should say it; None when it trained on its own
    (or no training config is known). The card's dataset metadata names only the task files' own corpora."""
    data = training_config.get("data") if isinstance(training_config, dict) else None
    if not isinstance(data, dict):
        return None
    given = (("data.hub_paths", data.get("hub_paths")),) if data.get("source") == "hub" else (
        ("data.task_dirs", data.get("task_dirs")), ("data.dir", data.get("dir")))
    for key, value in given:
        if isinstance(value, dict):
            value, key = value.get(task), f"{key}.{task}"
        if value:
            return f"`{value}` from {key}"
    return None


def _hub_checkpoint(config) -> str | None:
    """The Hub id of the pretrained checkpoint the encoder started from (the card's ``base_model``, the Hub's model
    tree); None for an encoder trained from scratch, a local folder or a ``package:`` checkpoint."""
    name = encoder_kind(config.encoder).checkpoint(config)
    if not name or name.startswith("package:") or Path(name).exists():
        return None
    return name if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) else None


def _eval_results(tasks: dict, corpora: dict, info: dict) -> list:
    """The Hub's model-index entries (``EvalResult``): each recorded score of a task trained and scored on its task
    file's own Hub dataset, under that dataset's split names. Scores on a corpus given by the training config are
    left out: the Hub would show them under a dataset they were not measured on."""
    from huggingface_hub import EvalResult

    results = []
    for split in ("dev", "test"):
        for task, score in (info.get(split) or {}).items():
            spec = tasks.get(task)
            if spec is None or spec.hub is None or corpora.get(task) or not isinstance(score, (int, float)):
                continue
            results.append(EvalResult(
                # (no task_name: the Hub groups the metrics of one dataset and split under one task, so each
                # metric's name says which of the model's tasks it scores)
                task_type="token-classification", dataset_type=spec.hub.id,
                dataset_name=spec.hub.id, dataset_config=spec.hub.config, dataset_revision=spec.hub.revision,
                dataset_split=spec.hub.splits.get(split, split),
                metric_type="accuracy" if spec.metric == "accuracy" else "f1", metric_value=round(float(score), 2),
                metric_name=f"{task} {'accuracy' if spec.metric == 'accuracy' else 'span F1 (seqeval)'}"))
    return results


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
