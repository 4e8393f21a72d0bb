"""Hard sharing: one encoder, every task reads its top layer. ``single`` is the one-task case.

With ``model.private_embedder`` (BiLSTM only) each task owns a copy of the embedder (word embeddings and
char-CNN) and only the BiLSTM layers are shared: the variant that tells whether what tasks lose by sharing comes
from the shared word representations or from the shared layers above them.
"""
from __future__ import annotations

import copy

from torch import nn

from ..errors import ConfigError
from .base import SharingStrategy, register


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
        if config.private_embedder and config.encoder != "bilstm":
            raise ConfigError(f"config key 'model.private_embedder' serves the bilstm encoder, not "
                              f"model.encoder = {config.encoder!r}")

    def __init__(self, build_encoder, tasks, config):
        super().__init__(build_encoder, tasks, config)
        self.check_options(config, tasks, None)
        self.encoder = build_encoder()
        self.private_embedder = config.private_embedder
        if self.private_embedder:  # the built embedder becomes every task's starting copy, then leaves the encoder
            self.embedders = nn.ModuleDict({task: copy.deepcopy(self.encoder.embedder) for task in self.tasks})
            del self.encoder.embedder

    @property
    def output_dim(self) -> int:
        return self.encoder.output_dim

    def _top(self, batch, task):
        x = self.embedders[task](batch)
        for layer in self.encoder.layers:
            x = self.encoder.run_layer(layer, x, batch.mask)
        return self.encoder.finish(x, batch.mask)

    def forward(self, batch, task):
        return self._top(batch, task) if self.private_embedder else self.encoder(batch)[-1]

    def features_for_tasks(self, batch, tasks):
        if self.private_embedder:
            return {task: self._top(batch, task) for task in tasks}
        top = self.encoder(batch)[-1]  # the encoder is shared: run it once for all tasks
        return {task: top for task in tasks}

    def task_encoder_state(self, task):
        state = dict(self.encoder.state_dict())
        if self.private_embedder:
            state.update({f"embedder.{k}": v for k, v in self.embedders[task].state_dict().items()})
        return state

    def card_section(self, model) -> list[str]:
        if not self.private_embedder:
            return []
        own = sum(p.numel() for p in self.embedders[self.tasks[0]].parameters())
        return ["## Hard sharing with private embedders", "",
                f"Each task owns its word embeddings and char-CNN ({own:,} parameters per task); the BiLSTM layers "
                f"are shared by all tasks."]


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
