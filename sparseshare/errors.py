"""Error types that several layers raise (config loading, strategies, model folders), in a module that imports
nothing, so that raising one never ties two layers into an import cycle."""
from __future__ import annotations


class ConfigError(ValueError):
    """A bad config value; the message names the key."""


class ModelFolderError(FileNotFoundError):
    """A model folder (or Hub repo) that is missing or lacks a file."""
