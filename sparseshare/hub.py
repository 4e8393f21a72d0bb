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

CITATIONS = {
    "sparse": """@inproceedings{sun2020sparse,
  title = {Learning Sparse Sharing Architectures for Multiple Tasks},
  author = {Sun, Tianxiang and Shao, Yunfan and Li, Xiaonan and Liu, Pengfei and Yan, Hang and Qiu, Xipeng and Huang, Xuanjing},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  year = {2020}
}""",
    "hierarchical": """@inproceedings{sogaard2016deep,
  title = {Deep multi-task learning with low level tasks supervised at lower layers},
  author = {S{\\o}gaard, Anders and Goldberg, Yoav},
  booktitle = {Proceedings of ACL},
  year = {2016}
}""",
    "bottom": """@misc{zhang2021rethinking,
  title = {Rethinking Hard-Parameter Sharing in Multi-Task Learning},
  author = {Zhang and others},
  year = {2021}
}""",
    "cross_stitch": """@inproceedings{misra2016cross,
  title = {Cross-stitch Networks for Multi-task Learning},
  author = {Misra, Ishan and Shrivastava, Abhinav and Gupta, Abhinav and Hebert, Martial},
  booktitle = {Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year = {2016}
}""",
    "roaming": """@inproceedings{pascal2021maximum,
  title = {Maximum Roaming Multi-Task Learning},
  author = {Pascal, Lucas and Michiardi, Pietro and Bost, Xavier and Huet, Benoit and Zuluaga, Maria A.},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  year = {2021}
}""",
    "routing": """@inproceedings{rosenbaum2018routing,
  title = {Routing Networks: Adaptive Selection of Non-linear Functions for Multi-Task Learning},
  author = {Rosenbaum, Clemens and Klinger, Tim and Riemer, Matthew},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year = {2018}
}""",
    "hard": """@article{caruana1997multitask,
  title = {Multitask Learning},
  author = {Caruana, Rich},
  journal = {Machine Learning},
  volume = {28},
  pages = {41--75},
  year = {1997}
}""",
}
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
    section = {"sparse": _sparse_section, "routing": _routing_section, "roaming": _roaming_section,
               "hierarchical": _hierarchical_section, "bottom": _bottom_section,
               "cross_stitch": _cross_stitch_section}.get(config.sharing)
    if section is not None:
        lines += ["", *section(model)]
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
    citations = [CITATIONS[config.sharing]] if config.sharing in CITATIONS else []
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


def _sparse_section(model) -> list[str]:
    from .sparse.masks import model_statistics

    stats = model_statistics(model)
    tasks = list(stats["density"])
    lines = ["## Sparse sharing masks", "",
             "Each task runs the encoder through its own binary mask over the prunable weights "
             f"(patterns: {', '.join(f'`{p}`' for p in model.sharing.prunable_patterns)}).", "",
             "| task | density |", "|---|---|"]
    lines += [f"| {t} | {100 * stats['density'][t]:.1f}% |" for t in tasks]
    lines += ["", "Overlap ratio (weights kept by both / kept by either):", "",
              "| | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    lines += [f"| {a} | " + " | ".join(f"{stats['overlap'][a][b]:.3f}" for b in tasks) + " |" for a in tasks]
    counts = stats["parameters"]
    lines += ["", "Parameters: " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in counts.items()) + "."]
    return lines


def _routing_section(model) -> list[str]:
    from .sharing.routing import ROUTING_FILE, final_map

    s, routing = model.sharing, model.sharing.routing_map()
    blocks = ", ".join(f"{k}{' + PASS' if p else ''}" for k, p in zip(s.copies, s.has_pass))
    router = {"wpl": "one tabular policy per task, Weighted Policy Learner",
              "reinforce": "one MLP per layer over the layer input and the task, REINFORCE",
              "dispatched": f"a REINFORCE dispatcher assigns each sentence to one of {s.agents} tabular WPL agents"
              }[s.router]
    lines = ["## Routing", "",
             "Every encoder layer offers several blocks (copies of the layer; PASS is the identity) and a router "
             "picks one per layer for each sentence.", "",
             f"- Router: `{s.router}` ({router}); collaboration reward rho {s.rho}.",
             f"- Blocks per layer: {blocks}."]
    if routing.get("dispatch") and any(any(shares) for shares in routing["dispatch"].values()):
        lines.append("- Dispatch (share of each task's training sentences per agent): " + "; ".join(
            f"{task} " + ", ".join(f"{p:.3f}" for p in shares) for task, shares in routing["dispatch"].items()) + ".")
    try:
        table, what = final_map(routing)
    except ValueError:  # REINFORCE before any epoch: no routes to show
        lines += ["", "No routes were recorded yet (the model was not trained)."]
    else:
        layers, greedy = range(s.num_layers), routing.get("greedy")
        title = f"Most-used block per task and layer ({what})" if routing["epochs"] else \
            "Most likely block per task and layer (no epoch recorded yet: the policy)"
        lines += ["", f"{title}:", "",
                  "| task | " + " | ".join(f"layer {n + 1}" for n in layers) + " |", "|---" * (len(layers) + 1) + "|"]
        for task in s.tasks:
            cells = []
            for n in layers:
                top = max(range(len(table[task][n])), key=table[task][n].__getitem__)
                cell = f"{routing['choices'][n][top]} ({table[task][n][top]:.3f})"
                if greedy and greedy[task][n] != top:
                    cell += f" / greedy {routing['choices'][n][greedy[task][n]]}"
                cells.append(cell)
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
        lines += ["", "At inference each task takes its greedy route (the policy's argmax; shown where it is not the "
                      "most-used block)." if greedy else
                      "At inference each sentence takes the router's argmax for its input."]
    held = "every epoch's routing map and the historical block usage" + (
        ", the policies and the greedy routes" if s.router == "wpl" else
        ", the dispatch shares per task and the agents' policies and greedy routes" if s.router == "dispatched" else "")
    lines += ["", f"`{ROUTING_FILE}` holds {held}; draw it with "
                  f"`sparseshare routing show <repo id or folder> --png routing.png`."]
    return lines


def _hierarchical_section(model) -> list[str]:
    s = model.sharing
    return ["## Hierarchical sharing", "",
            f"One encoder of {s.encoder.num_layers} layers; each task's head reads the output of its own layer:", "",
            "| task | layer |", "|---|---|", *[f"| {task} | {s.task_layers[task]} |" for task in s.tasks]]


def _bottom_section(model) -> list[str]:
    s = model.sharing
    return ["## Separate bottom layers", "",
            f"Each task owns the lowest {s.bottom_layers} of the encoder's {s.num_layers} layers "
            f"({s.own_parameters(s.tasks[0]):,} parameters per task); the layers above and the embeddings are "
            f"shared by all tasks."]


def _cross_stitch_section(model) -> list[str]:
    s = model.sharing
    tasks = s.tasks
    lines = ["## Cross-stitch", "",
             f"One encoder column per task; after each of the {s.num_layers} layers, task t's column continues from "
             f"the mix sum_s alpha[t, s] x (column s's output). The learned mixing matrices (rows: the receiving "
             f"task):"]
    for i, matrix in enumerate(s.mixing.detach().cpu().tolist()):
        lines += ["", f"Layer {i + 1}:", "", "| | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
        lines += [f"| {t} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for t, row in zip(tasks, matrix)]
    return lines


def _roaming_section(model) -> list[str]:
    s = model.sharing
    units = "feed-forward units" if s.scratch or s.hf else "output units"
    return ["## Maximum Roaming", "",
            f"Each task runs every encoder layer through its own binary mask over the layer's {s.units} {units}.", "",
            f"- Sharing ratio p: {model.config.roaming_ratio} ({s.active} of {s.units} units per layer and task).",
            f"- delta: {s.delta} (every {s.delta} training steps each task swaps one active unit for one it never "
            f"visited)." if s.delta else "- Roaming switched off (model.roaming_fixed): the masks never move, a fixed "
                                         "random partition.",
            f"- Roaming progress r(c): {s.roaming_progress():.3f} (share of the task x layer x unit triples "
            f"visited so far).",
            f"- Units no task is active on: {s.uncovered_units()} of {s.masks.shape[0] * s.units} (every unit is "
            f"covered at initialisation; an update may switch a unit off for the last task using it)."]


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
