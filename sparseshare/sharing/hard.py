"""Hard sharing: one encoder, every task reads its top layer. ``single`` is the one-task case."""
from __future__ import annotations

from .base import SharingStrategy, register


@register("hard")
class HardSharing(SharingStrategy):
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
    def __init__(self, build_encoder, tasks, config):
        if len(tasks) != 1:
            raise ValueError(f"sharing 'single' trains exactly one task, got {len(tasks)}: {tasks}; use 'hard' for several")
        super().__init__(build_encoder, tasks, config)
