"""Sharing strategies, one module each, looked up by the config key ``model.sharing``."""
# each module registers its strategies
from . import bottom, cross_stitch, hard, hierarchical, roaming, routing, sparse  # noqa: F401
from .base import STRATEGIES, SharingStrategy, register


def build_strategy(build_encoder, tasks: list[str], config) -> SharingStrategy:
    """The strategy named by ``config.sharing`` (``config`` is the ModelConfig)."""
    if config.sharing not in STRATEGIES:
        raise ValueError(f"unknown sharing strategy {config.sharing!r}; valid: {sorted(STRATEGIES)}")
    return STRATEGIES[config.sharing](build_encoder, tasks, config)


__all__ = ["STRATEGIES", "SharingStrategy", "build_strategy", "register"]
