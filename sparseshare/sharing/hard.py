"""Hard sharing: one encoder, every task reads its top layer. ``single`` is the one-task case."""
from __future__ import annotations

from ..errors import ConfigError
from .base import SharingStrategy, register


@register("hard")
class HardSharing(SharingStrategy):
    citation = """@article{caruana1997multitask,
  title = {Multitask Learning},
  author = {Caruana, Rich},
  journal = {Machine Learning},
  volume = {28},
  pages = {41--75},
  year = {1997}
}"""

    def __init__(self, build_encoder, tasks, config):
        super().__init__(build_encoder, tasks, config)
        self.encoder = build_encoder()

    @property
    def output_dim(self) -> int:
        return self.encoder.output_dim

    def forward(self, batch, task):
        return self.encoder(batch)[-1]

    def features_for_tasks(self, batch, tasks):
        top = self.encoder(batch)[-1]  # the encoder is shared: run it once for all tasks
        return {task: top for task in tasks}

    def task_encoder_state(self, task):
        return dict(self.encoder.state_dict())


@register("single")
class SingleTask(HardSharing):
    citation = None

    @classmethod
    def check_options(cls, config, tasks, depth, depth_key=""):
        if len(tasks) != 1:
            raise ConfigError(f"config key 'model.sharing' = 'single' trains exactly one task, config key 'tasks' "
                              f"lists {len(tasks)}: {list(tasks)}; use 'hard' (or another strategy) for several")

    def __init__(self, build_encoder, tasks, config):
        self.check_options(config, tasks, None)
        super().__init__(build_encoder, tasks, config)
