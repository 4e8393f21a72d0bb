"""Hard sharing: one encoder, every task reads its top layer. ``single`` is the one-task case.

With ``model.private_embedder`` (BiLSTM only) each task owns a copy of part of the embedder (the word table, the
char-CNN or both) and the rest of the encoder is shared (see :mod:`.private_embedder`).
"""
from __future__ import annotations

from ..errors import ConfigError
from .base import SharingStrategy, register
from .private_embedder import PrivateEmbedders, check_private_embedder


@register("hard")
class HardSharing(PrivateEmbedders, SharingStrategy):
    shared_options = ("private_embedder", "private_embedder_tasks")
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
        check_private_embedder(config, "hard", tasks)

    def __init__(self, build_encoder, tasks, config):
        super().__init__(build_encoder, tasks, config)
        self.check_options(config, tasks, None)
        self.encoder = build_encoder()
        self.make_private_embedders(self.encoder, config)

    @property
    def output_dim(self) -> int:
        return self.encoder.output_dim

    def forward(self, batch, task):
        return self.encoder(batch, **self.own_embedder(task))[-1]

    def features_for_tasks(self, batch, tasks):
        if self.private_parts:  # each task embeds the batch its own way
            return super().features_for_tasks(batch, tasks)
        top = self.encoder(batch)[-1]  # the encoder is shared: run it once for all tasks
        return {task: top for task in tasks}

    def task_encoder_state(self, task):
        return self.with_own_embedder(dict(self.encoder.state_dict()), task)

    def card_section(self, model) -> list[str]:
        return self.private_card_lines("Hard sharing", "the BiLSTM layers are shared by all tasks")


@register("single")
class SingleTask(HardSharing):
    shared_options = ()
    citation = None

    @classmethod
    def check_options(cls, config, tasks, depth, depth_key=""):
        if len(tasks) != 1:
            raise ConfigError(f"config key 'model.sharing' = 'single' trains exactly one task, config key 'tasks' "
                              f"lists {len(tasks)}: {list(tasks)}; use 'hard' (or another strategy) for several")

    def __init__(self, build_encoder, tasks, config):
        self.check_options(config, tasks, None)
        super().__init__(build_encoder, tasks, config)
