"""Hard sharing: one encoder, every task reads its top layer. ``single`` is the one-task case.

With ``model.private_embedder`` (BiLSTM only) each task owns a copy of part of the embedder (the word table, the
char-CNN or both) and the rest of the encoder is shared: the variant that tells whether what tasks lose by sharing
comes from the shared word representations or from the shared layers above them (issue 23: NER's loss on new names).
"""
from __future__ import annotations

import copy

from torch import nn

from ..errors import ConfigError
from .base import SharingStrategy, register

# model.private_embedder -> the WordEmbedder submodules each task owns a copy of
PRIVATE_PARTS = {"none": (), "words": ("words",), "chars": ("chars",), "all": ("words", "chars")}


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
        choice = config.private_embedder
        if choice not in PRIVATE_PARTS:
            raise ConfigError(f"config key 'model.private_embedder' must be one of {list(PRIVATE_PARTS)}, got {choice!r}")
        if choice == "none":
            return
        if config.encoder != "bilstm":
            raise ConfigError(f"config key 'model.private_embedder' serves the bilstm encoder, not "
                              f"model.encoder = {config.encoder!r}")
        if "chars" in PRIVATE_PARTS[choice] and config.bilstm.char_filters == 0:
            raise ConfigError(f"config key 'model.private_embedder' = {choice!r} makes the char-CNN private, but "
                              f"model.bilstm.char_filters = 0 builds none")

    def __init__(self, build_encoder, tasks, config):
        super().__init__(build_encoder, tasks, config)
        self.check_options(config, tasks, None)
        self.encoder = build_encoder()
        self.private_parts = PRIVATE_PARTS[config.private_embedder]
        if self.private_parts:  # the built part becomes every task's starting copy, then leaves the shared embedder
            embedder = self.encoder.embedder
            self.private = nn.ModuleDict({
                task: nn.ModuleDict({part: copy.deepcopy(getattr(embedder, part)) for part in self.private_parts})
                for task in self.tasks})
            for part in self.private_parts:
                setattr(embedder, part, None)

    @property
    def output_dim(self) -> int:
        return self.encoder.output_dim

    def _top(self, batch, task):
        x = self.encoder.embedder(batch, **self.private[task])
        for layer in self.encoder.layers:
            x = self.encoder.run_layer(layer, x, batch.mask)
        return self.encoder.finish(x, batch.mask)

    def forward(self, batch, task):
        return self._top(batch, task) if self.private_parts else self.encoder(batch)[-1]

    def features_for_tasks(self, batch, tasks):
        if self.private_parts:
            return {task: self._top(batch, task) for task in tasks}
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
        what = {"words": "word embeddings", "chars": "char-CNN"}
        own = sum(p.numel() for p in self.private[self.tasks[0]].parameters())
        return ["## Hard sharing with private embedders", "",
                f"Each task owns its {' and '.join(what[p] for p in self.private_parts)} ({own:,} parameters per "
                f"task); the rest of the encoder is shared by all tasks."]


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
