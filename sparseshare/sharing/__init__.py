"""Sharing strategies, one module each, looked up by the config key ``model.sharing``."""
from . import bottom, hard, hierarchical, sparse  # noqa: F401  (each module registers its strategies)
from .base import STRATEGIES, SharingStrategy, register


def build_strategy(build_encoder, tasks: list[str], config) -> SharingStrategy:
    """The strategy named by ``config.sharing`` (``config`` is the ModelConfig)."""
    if config.sharing not in STRATEGIES:
        raise ValueError(f"unknown sharing strategy {config.sharing!r}; valid: {sorted(STRATEGIES)}")
    return STRATEGIES[config.sharing](build_encoder, tasks, config)


__all__ = ["STRATEGIES", "SharingStrategy", "build_strategy", "register"]
