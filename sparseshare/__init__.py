"""sparseshare: multi-task sequence labeling with sparse and other sharing strategies.

    from sparseshare import Tagger
    tagger = Tagger.from_pretrained("path/or/hub-id")
    doc = tagger("EU rejects German call to boycott British lamb.")
"""
__version__ = "0.1.0"

from .errors import SparseshareError  # noqa: E402  (imports nothing: `import sparseshare` stays light)
from . import logs  # noqa: E402,F401  (the sparseshare logger's default handler, whichever module logs first)

_LAZY = {"Tagger": "tagger", "Doc": "tagger", "Span": "tagger", "MultiTaskTagger": "model"}
__all__ = ["__version__", "SparseshareError", *_LAZY]


def __getattr__(name):  # torch and transformers are imported on first use, not by `import sparseshare`
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'sparseshare' has no attribute {name!r}")
