"""The routing map: ``routing.json`` (every epoch's share of each task's sentences per block, the historical usage,
the policies) read back, printed and drawn (``sparseshare routing show MODEL --png out.png``)."""
from __future__ import annotations

import json
import math
from pathlib import Path

ROUTING_FILE = "routing.json"
# model.routing.collaboration -> whose routes the collaboration reward's historical probability counts
WHOSE_ROUTES = {"all_tasks": "all tasks'", "per_task": "each task's own"}


def load_routing_map(source) -> dict:
    """A routing map from a dict, a ``routing.json`` file or a model folder holding one."""
    if isinstance(source, dict):
        return source
    path = Path(source)
    if path.is_dir():
        path = path / ROUTING_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no routing map at {path} (only models with model.sharing=routing have one)")
    return json.loads(path.read_text(encoding="utf-8"))


def final_map(routing: dict, epoch: int | None = None) -> tuple[dict, str]:
    """The map to show: epoch ``epoch``'s (1-based; default the last) route shares, else (WPL, untrained) the
    policies."""
    epochs = routing.get("epochs") or []
    if epoch is not None and not 1 <= epoch <= len(epochs):
        raise ValueError(f"epoch {epoch} is not in the routing map, which records epochs 1..{len(epochs)}"
                         if epochs else f"epoch {epoch}: the routing map records no epoch (the model was not trained)")
    if epochs:
        epoch = epoch or len(epochs)
        return epochs[epoch - 1], f"epoch {epoch}: share of training sentences"
    if routing.get("policy"):
        return routing["policy"], "policy"
    raise ValueError("the routing map has no epoch recorded yet (the model was not trained)")


def task_block_information(shares: dict[str, list[list[float]]]) -> list[float]:
    """I(task; block) in bits, per layer, of one epoch's map (task -> per layer, the share of the task's sentences
    through each choice), with the tasks trained in that epoch equally likely: 0 when every task takes the same
    blocks in the same proportions (hard sharing with unused blocks), log2(T) at most (each task its own block),
    never above log2(choices). A task with no sentences in the epoch (all shares 0) is left out."""
    tasks = [t for t in shares if any(sum(layer) > 0 for layer in shares[t])]
    if not tasks:
        return []
    bits = []
    for layer in range(len(shares[tasks[0]])):
        rows = [[p / sum(shares[t][layer]) for p in shares[t][layer]] for t in tasks]
        marginal = [sum(column) / len(rows) for column in zip(*rows)]
        information = sum(p * math.log2(p / q) for row in rows for p, q in zip(row, marginal) if p > 0) / len(rows)
        bits.append(max(0.0, information))  # rounding can leave -1e-17
    return bits


def format_routing_map(routing: dict, epoch: int | None = None) -> str:
    table, what = final_map(routing, epoch)
    collaboration = routing.get("collaboration", "all_tasks")  # routing.json files written before it existed
    lines = [f"router {routing['router']}, rho {routing['rho']} over {WHOSE_ROUTES[collaboration]} routes; {what}"]
    if routing.get("epochs"):
        information = task_block_information(table)
        lines.append("  I(task; block): " + ", ".join(f"layer {n + 1} {b:.3f} bits" for n, b in enumerate(information)))
    for task in routing["tasks"]:
        for layer, names in enumerate(routing["choices"]):
            shares = ", ".join(f"{name} {p:.3f}" for name, p in zip(names, table[task][layer]))
            lines.append(f"  {task:>10} layer {layer + 1}: {shares}")
    if routing.get("dispatch"):
        agents = list(routing["agents"])
        for task, shares in routing["dispatch"].items():
            lines.append(f"  {task:>10} dispatched to: " + ", ".join(f"{a} {p:.3f}" for a, p in zip(agents, shares)))
    lines.append("  historical usage (all tasks): " + " | ".join(
        ", ".join(f"{name} {p:.3f}" for name, p in zip(names, row))
        for names, row in zip(routing["choices"], routing["usage"])))
    return "\n".join(lines)


def draw_routing_map(source, path: str | Path, epoch: int | None = None) -> Path:
    """One heatmap per task (rows: layers, columns: choices) of an epoch's route shares (default the last), and
    below it, when two or more epochs were recorded, each task's shares over the epochs (one line per layer and
    choice), into a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    routing = load_routing_map(source)
    table, what = final_map(routing, epoch)
    tasks, choices, epochs = routing["tasks"], routing["choices"], routing.get("epochs") or []
    width = max(len(c) for c in choices)
    rows = 2 if len(epochs) >= 2 else 1
    fig, axes = plt.subplots(rows, len(tasks), squeeze=False, layout="constrained",
                             figsize=(max(1.0 * width, 3.0) * len(tasks) + 3, 0.7 * len(choices) + 2 + 3 * (rows - 1)))
    for i, (ax, task) in enumerate(zip(axes[0], tasks)):
        grid = [row + [float("nan")] * (width - len(row)) for row in table[task]]
        image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        for layer, row in enumerate(table[task]):
            for j, p in enumerate(row):
                ax.text(j, layer, f"{p:.2f}", ha="center", va="center", color="black" if p > 0.6 else "white")
        longest = max(choices, key=len)
        ax.set_xticks(range(width), labels=[name.replace("block ", "b") for name in longest])
        ax.set_yticks(range(len(choices)), labels=[f"layer {n + 1}" for n in range(len(choices))] if i == 0 else [])
        ax.set_title(task)
    fig.colorbar(image, ax=list(axes[0]), fraction=0.046)
    if rows == 2:  # over training: x = epoch, one line per (layer: line style, choice: colour)
        x = range(1, len(epochs) + 1)
        for i, (ax, task) in enumerate(zip(axes[1], tasks)):
            for layer, names in enumerate(choices):
                for j, name in enumerate(names):
                    ax.plot(x, [e[task][layer][j] for e in epochs], color=f"C{j}", marker=".",
                            linestyle=["-", "--", ":", "-."][layer % 4], label=f"layer {layer + 1} {name}")
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("epoch")
            ax.set_ylabel("share of sentences" if i == 0 else "")
        axes[1][-1].legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"Routing map ({routing['router']}; {what})")
    fig.savefig(str(path), dpi=120)
    plt.close(fig)
    return Path(path)
