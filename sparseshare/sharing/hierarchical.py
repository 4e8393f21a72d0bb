"""Hierarchical sharing (Søgaard & Goldberg, ACL 2016): one shared encoder, each task reads its own layer.

Lower-level tasks (POS) are supervised at lower layers, higher-level tasks (chunking, NER) at upper ones:
``model.hierarchical.task_layers: {pos: 1}`` makes POS read layer 1; tasks not listed read the top layer. A task's loss
therefore reaches only the layers up to the one it reads. With every task on the top layer this is hard
sharing, weight for weight. ``model.private_embedder`` gives each task its own word table and/or char-CNN
(BiLSTM only, see :mod:`.private_embedder`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from .base import SharingStrategy, register
from .private_embedder import PrivateEmbedders, check_private_embedder


def check_task_layer(task: str, layer: int, tasks: list[str], depth: int | None, depth_key: str = "") -> None:
    key = f"config key 'model.hierarchical.task_layers.{task}'"
    if task not in tasks:
        raise ConfigError(f"{key}: {task!r} is not one of the model's tasks {list(tasks)}")
    if layer < 1:
        raise ConfigError(f"{key} must be a 1-based encoder layer >= 1, got {layer}")
    if depth is not None and layer > depth:
        where = f" ({depth_key})" if depth_key else ""
        raise ConfigError(f"{key} must be <= the encoder depth {depth}{where}, got {layer}")


@dataclass
class HierarchicalOptions:
    """``model.hierarchical``."""
    # the 1-based encoder layer each task reads (e.g. {pos: 1}); unlisted tasks read the top layer (Søgaard &
    # Goldberg 2016)
    task_layers: dict[str, int] = field(default_factory=dict)


@register("hierarchical")
class HierarchicalSharing(PrivateEmbedders, SharingStrategy):
    Options = HierarchicalOptions
    shared_options = ("private_embedder", "private_embedder_tasks")
    citation = """@inproceedings{sogaard2016deep,
  title = {Deep multi-task learning with low level tasks supervised at lower layers},
  author = {S{\\o}gaard, Anders and Goldberg, Yoav},
  booktitle = {Proceedings of ACL},
  year = {2016}
}"""

    @classmethod
    def flat_keys(cls):
        return {"task_layers": "task_layers"}

    @classmethod
    def check_options(cls, config, tasks, depth, depth_key=""):
        for task, layer in config.hierarchical.task_layers.items():
            check_task_layer(task, layer, tasks, depth, depth_key)
        check_private_embedder(config, "hierarchical", tasks)

    def __init__(self, build_encoder, tasks, config):
        super().__init__(build_encoder, tasks, config)
        self.encoder = build_encoder()
        depth = self.encoder.num_layers
        self.check_options(config, self.tasks, depth)  # again here: only the built encoder knows a Transformer's depth
        self.task_layers = {task: config.hierarchical.task_layers.get(task, depth) for task in self.tasks}  # 1-based
        self.make_private_embedders(self.encoder, config)

    @property
    def output_dim(self) -> int:
        return self.encoder.output_dim  # every layer has the same width

    def forward(self, batch, task):
        return self.encoder(batch, **self.own_embedder(task))[self.task_layers[task] - 1]

    def features_for_tasks(self, batch, tasks):
        if self.private_parts:  # each task embeds the batch its own way
            return super().features_for_tasks(batch, tasks)
        layers = self.encoder(batch)  # one encoder pass; each task picks its layer
        return {task: layers[self.task_layers[task] - 1] for task in tasks}

    def task_encoder_state(self, task):
        layer, depth = self.task_layers[task], self.encoder.num_layers
        if layer != depth:
            raise NotImplementedError(
                f"task {task!r} reads encoder layer {layer} of {depth} (model.hierarchical.task_layers), but an exported "
                f"encoder runs all its layers and its head reads the top one, so it would predict differently; "
                f"only tasks that read the top layer can be exported")
        return self.with_own_embedder(dict(self.encoder.state_dict()), task)

    def card_section(self, model) -> list[str]:
        own = [""] + self.private_card_lines("Hierarchical sharing", "the BiLSTM layers are shared by all tasks") \
            if self.private_parts else []
        return ["## Hierarchical sharing", "",
                f"One encoder of {self.encoder.num_layers} layers; each task's head reads the output of its own "
                f"layer:", "",
                "| task | layer |", "|---|---|", *[f"| {task} | {self.task_layers[task]} |" for task in self.tasks], *own]

