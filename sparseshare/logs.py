"""The toolkit's messages (what a run loads, its epochs' dev scores, the sparse pipeline's stages) go to the
``sparseshare`` logger and its children (``logging.getLogger(__name__)`` in each module).

As transformers does for its own logger, ``sparseshare`` has a handler of its own that writes the messages, as
they are, to standard output at level INFO, and does not pass them on to the root logger, so a script that
trains sees its run without configuring logging. In a distributed run that handler writes only the main
process's messages below WARNING. :func:`set_verbosity` changes the level (the CLI's ``--quiet`` / ``--verbose``),
:func:`disable_default_handler` and :func:`enable_propagation` hand the messages to an application's own logging.
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

logger = logging.getLogger("sparseshare")


# a process's rank in a distributed run (0 = the main one), as torchrun / accelerate and the MPI launchers name it
_RANK = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK")
# the level the CLI set (--quiet / --verbose), handed to child processes (the distributed mask search's)
VERBOSITY_VARIABLE = "SPARSESHARE_VERBOSITY"


def _is_main_process() -> bool:
    rank = next((os.environ[name] for name in _RANK if os.environ.get(name)), "0")
    return rank == "0"


# logger.info(..., extra=EVERY_PROCESS): a message that every process of a distributed run writes
EVERY_PROCESS = {"every_process": True}


class _MainProcessOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or getattr(record, "every_process", False) or _is_main_process()


class _StandardOutput(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is when a message comes (pytest and notebooks replace it)."""

    def __init__(self):
        super().__init__(sys.stdout)
        self.addFilter(_MainProcessOnly())
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value):  # logging.StreamHandler.__init__ assigns it
        pass


_default_handler = _StandardOutput()
logger.addHandler(_default_handler)
_inherited = os.environ.get(VERBOSITY_VARIABLE, "").upper()
logger.setLevel(_inherited if _inherited in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL") else logging.INFO)
logger.propagate = False


def set_verbosity(level: int | str) -> None:
    """``logging.WARNING`` (or ``"WARNING"``) keeps warnings and errors only; ``logging.DEBUG`` shows more."""
    logger.setLevel(level)


def disable_default_handler() -> None:
    logger.removeHandler(_default_handler)


def enable_propagation() -> None:
    """Pass the messages on to the root logger (an application's ``logging.basicConfig``)."""
    logger.propagate = True


class _Callback(logging.Handler):
    def __init__(self, sink: Callable[[str], object]):
        super().__init__()
        self.sink = sink
        self.addFilter(_MainProcessOnly())

    def emit(self, record: logging.LogRecord) -> None:
        self.sink(record.getMessage())


@contextmanager
def messages_to(sink: Callable[[str], object] | None) -> Iterator[None]:
    """Within the block, the messages go to ``sink`` (e.g. ``list.append``) instead of the default handler; the
    handlers an application added keep receiving them. ``None`` changes nothing."""
    if sink is None:
        yield
        return
    callback = _Callback(sink)
    had_default = _default_handler in logger.handlers
    logger.removeHandler(_default_handler)
    logger.addHandler(callback)
    try:
        yield
    finally:
        logger.removeHandler(callback)
        if had_default:
            logger.addHandler(_default_handler)
