"""What a run reports while it trains: a progress bar (tqdm on a terminal, a few plain lines otherwise) and
the experiment tracker Accelerate logs to."""
from __future__ import annotations

import logging
import sys
import time

from ..config import Config

logger = logging.getLogger(__name__)


def tracker_name(config: Config) -> str | None:
    choice = config.train.log_with
    if choice in (None, "none"):
        return None
    if choice == "auto":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            return None
        return "tensorboard"
    return choice

def progress_bar(config, accelerator, total, done, epoch):
    # --quiet (the sparseshare logger above INFO) hides the progress too
    if not (config.train.progress_bar and accelerator.is_local_main_process and logger.isEnabledFor(logging.INFO)):
        return None
    if not sys.stderr.isatty():  # nohup, CI, a log file: a few plain lines, not thousands of \r updates
        return PlainProgress(total, done, f"epoch {epoch + 1}")
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}", leave=False, dynamic_ncols=True)

class PlainProgress:
    """tqdm's update / set_postfix / close, printing one line at each quarter of the epoch."""

    def __init__(self, total: int, done: int, desc: str, parts: int = 4):
        self.total, self.count, self.desc, self.postfix = total, done, desc, {}
        self.marks = sorted({max(1, round(total * k / parts)) for k in range(1, parts + 1)})
        self.last_count, self.last_time = done, time.perf_counter()

    def update(self, n: int = 1) -> None:
        before, self.count = self.count, self.count + n
        if any(before < mark <= self.count for mark in self.marks):
            now = time.perf_counter()
            rate = (self.count - self.last_count) / max(now - self.last_time, 1e-9)
            self.last_count, self.last_time = self.count, now
            extra = "".join(f" {k} {v}" for k, v in self.postfix.items())
            print(f"{self.desc}: {self.count}/{self.total} steps ({rate:.1f} steps/s){extra}", file=sys.stderr,
                  flush=True)

    def set_postfix(self, **values) -> None:
        self.postfix = values

    def close(self) -> None:
        pass
