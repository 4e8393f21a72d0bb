"""Hierarchical sharing (Søgaard & Goldberg, ACL 2016): one shared encoder, each task reads its own layer.

Lower-level tasks (POS) are supervised at lower layers, higher-level tasks (chunking, NER) at upper ones:
``model.task_layers: {pos: 1}`` makes POS read layer 1; tasks not listed read the top layer. A task's loss
therefore reaches only the layers up to the one it reads. With every task on the top layer this is hard
sharing, weight for weight.
"""
from __future__ import annotations

from .options import check_task_layer
from .base import SharingStrategy, register


@register("hierarchical")
class HierarchicalSharing(SharingStrategy):
    def __init__(self, build_encoder, tasks, config):
        super().__init__(build_encoder, tasks, config)
        self.encoder = build_encoder()
        depth = self.encoder.num_layers
        for task, layer in config.task_layers.items():  # again here: only the built encoder knows a Transformer's depth
            check_task_layer(task, layer, self.tasks, depth)
        self.task_layers = {task: config.task_layers.get(task, depth) for task in self.tasks}  # 1-based

    @property
    def output_dim(self) -> int:
        return self.encoder.output_dim  # every layer has the same width

    def forward(self, batch, task):
        return self.encoder(batch)[self.task_layers[task] - 1]

    def features_for_tasks(self, batch, tasks):
        layers = self.encoder(batch)  # one encoder pass; each task picks its layer
        return {task: layers[self.task_layers[task] - 1] for task in tasks}

    def task_encoder_state(self, task):
        layer, depth = self.task_layers[task], self.encoder.num_layers
        if layer != depth:
            raise NotImplementedError(
                f"task {task!r} reads encoder layer {layer} of {depth} (model.task_layers), but an exported "
                f"encoder runs all its layers and its head reads the top one, so it would predict differently; "
                f"only tasks that read the top layer can be exported")
        return dict(self.encoder.state_dict())
