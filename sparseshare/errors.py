"""Error types that several layers raise (config loading, strategies, model folders), in a module that imports
nothing, so that raising one never ties two layers into an import cycle."""
from __future__ import annotations


class SparseshareError(Exception):
    """The base of every error the toolkit raises on purpose (a bad config, corpus, mask or model folder, a refused
    run, an unreachable Hub, a diverged training): ``except SparseshareError`` catches ours and not torch's or
    Python's own. Each subclass keeps the builtin base it always had (ValueError, OSError, ...), so code that
    catches those still does."""


class ConfigError(SparseshareError, ValueError):
    """A bad config value; the message names the key."""


class ModelFolderError(SparseshareError, FileNotFoundError):
    """A model folder (or Hub repo) that is missing or lacks a file."""


class InvalidModelFolderError(SparseshareError, ValueError):
    """A file of a model folder that is there but cannot be used: corrupt, of a wrong JSON type or dtype, out of range,
    or inconsistent with the folder's other files (sparseshare/model_folder.py). The message names the file and the
    key (a JSON key, a tensor name); ``path`` and ``key`` hold them too (None where none is to blame)."""

    def __init__(self, message: str, path: str | None = None, key: str | None = None):
        super().__init__(message)
        self.path, self.key = path, key
