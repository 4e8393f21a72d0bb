"""Hard sharing: one encoder, every task reads its top layer. ``single`` is the one-task case.

With ``model.private_embedder`` (BiLSTM only) each task owns a copy of part of the embedder (the word table, the
char-CNN or both) and the rest of the encoder is shared (see :mod:`.private_embedder`).
"""
from __future__ import annotations

from ..errors import ConfigError
from .base import SharingStrategy, register
from .private_embedder import PRIVATE_PARTS, card_lines, check_private_embedder, move_to_private_copies


@register("hard")
class HardSharing(SharingStrategy):
    options = ("private_embedder",)
    citation = """@article{caruana1997multitask,
  title = {Multitask Learning},
  author = {Caruana, Rich},
  journal = {Machine Learning},
  volume = {28},
  pages = {41--75},
  year = {1997}
}"""

    @classmethod
    def check_options(cls, config, tasks, depth, depth_key=""):
        check_private_embedder(config, "hard")

    def __init__(self, build_encoder, tasks, config):
        super().__init__(build_encoder, tasks, config)
        self.check_options(config, tasks, None)
        self.encoder = build_encoder()
        self.private_parts = PRIVATE_PARTS[config.private_embedder]
        if self.private_parts:  # the built parts become every task's starting copies
            self.private = move_to_private_copies(self.encoder, self.private_parts, self.tasks)

    @property
    def output_dim(self) -> int:
        return self.encoder.output_dim

    def forward(self, batch, task):
        return self.encoder(batch, **self.private[task])[-1] if self.private_parts else self.encoder(batch)[-1]

    def features_for_tasks(self, batch, tasks):
        if self.private_parts:
            return {task: self(batch, task) for task in tasks}
        top = self.encoder(batch)[-1]  # the encoder is shared: run it once for all tasks
        return {task: top for task in tasks}

    def task_encoder_state(self, task):
        state = dict(self.encoder.state_dict())
        if self.private_parts:
            state.update({f"embedder.{k}": v for k, v in self.private[task].state_dict().items()})
        return state

    def card_section(self, model) -> list[str]:
        if not self.private_parts:
            return []
        return card_lines("Hard sharing", self.private, self.private_parts,
                          "the rest of the encoder is shared by all tasks")


@register("single")
class SingleTask(HardSharing):
    options = ()
    citation = None

    @classmethod
    def check_options(cls, config, tasks, depth, depth_key=""):
        if len(tasks) != 1:
            raise ConfigError(f"config key 'model.sharing' = 'single' trains exactly one task, config key 'tasks' "
                              f"lists {len(tasks)}: {list(tasks)}; use 'hard' (or another strategy) for several")

    def __init__(self, build_encoder, tasks, config):
        self.check_options(config, tasks, None)
        super().__init__(build_encoder, tasks, config)
