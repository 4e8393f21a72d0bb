"""Checks of the strategies' config options that both the config (at load time, against the depth the config
sets) and the strategies (at construction, against the built encoder) run, written once here. Imports nothing of
sparseshare but the error type, so that config.py and the strategies can both use it without a cycle."""
from __future__ import annotations

from ..errors import ConfigError

ROUTERS = ("wpl", "reinforce", "dispatched")


def config_depth(model) -> tuple[str, int] | None:
    """``(key, layers)`` of the encoder depth the config sets, or None when only the loaded model knows it
    (a Hugging Face Transformer)."""
    if model.encoder == "bilstm":
        return "model.bilstm.layers", model.bilstm.layers
    if model.encoder == "scratch":
        return "model.scratch.layers", model.scratch.layers
    return None


def routing_blocks_per_layer(blocks: int | list[int], depth: int | None, depth_key: str = "") -> list[int]:
    """``model.routing_blocks`` as one count per layer (``depth`` layers; None: only checks the counts)."""
    counts = [blocks] * (depth or 1) if isinstance(blocks, int) else list(blocks)
    if depth is not None and len(counts) != depth:
        where = f" ({depth_key})" if depth_key else ""
        raise ConfigError(f"config key 'model.routing_blocks' lists {len(counts)} layer(s) but the encoder has "
                          f"{depth}{where}; give one block count per layer, or one int for all")
    bad = [k for k in counts if k < 1]
    if bad or not counts:
        raise ConfigError(f"config key 'model.routing_blocks' must give every layer >= 1 block(s), got {blocks!r}")
    return counts


def check_task_layer(task: str, layer: int, tasks: list[str], depth: int | None, depth_key: str = "") -> None:
    key = f"config key 'model.task_layers.{task}'"
    if task not in tasks:
        raise ConfigError(f"{key}: {task!r} is not one of the model's tasks {list(tasks)}")
    if layer < 1:
        raise ConfigError(f"{key} must be a 1-based encoder layer >= 1, got {layer}")
    if depth is not None and layer > depth:
        where = f" ({depth_key})" if depth_key else ""
        raise ConfigError(f"{key} must be <= the encoder depth {depth}{where}, got {layer}")


def check_bottom_layers(k: int, depth: int, depth_key: str = "") -> None:
    where = f" ({depth_key})" if depth_key else ""
    if not 1 <= k < depth:
        raise ConfigError(f"config key 'model.bottom_layers' must be >= 1 and < the encoder depth {depth}{where}, "
                          f"so that each task owns at least one layer and at least one is shared; got {k}")
