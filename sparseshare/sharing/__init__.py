"""Sharing strategies, one module each, looked up by the config key ``model.sharing``."""
from . import hard  # noqa: F401  (registers hard, single)
from .base import STRATEGIES, SharingStrategy, register


def build_strategy(name: str, build_encoder, tasks: list[str], encoder_kind: str) -> SharingStrategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown sharing strategy {name!r}; valid: {sorted(STRATEGIES)}")
    return STRATEGIES[name](build_encoder, tasks, encoder_kind)


__all__ = ["STRATEGIES", "SharingStrategy", "build_strategy", "register"]
