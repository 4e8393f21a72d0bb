"""Separate bottom layers (Zhang et al., "Rethinking Hard-Parameter Sharing in Multi-Task Learning", 2021):
each task owns the lowest ``model.bottom.layers`` encoder layers, the layers above are shared.

The word/char embeddings (and, for the scratch Transformer, the input projection, positions and final
LayerNorm) stay shared, unless ``model.private_embedder`` gives each task its own word table and/or char-CNN
(BiLSTM only; ``private.<task>.<part>.*``, see :mod:`.private_embedder`). Each task's bottom layers start as copies of the built encoder's layers, whose
originals are moved out of the encoder, so the model has ``(tasks - 1) x bottom-layer`` parameters more than
hard sharing. The strategy composes the encoder's parts itself (embeddings once per batch -> the task's
bottom layers -> the shared upper layers); the encoder classes are unchanged, but the encoder instance
kept here holds no layers of its own and is not run as a whole.

A Hugging Face Transformer runs as a whole, once per task: its ``bottom_layers`` lowest layers are replaced by
:class:`~.hf_layers.TaskLayers` (one copy per task; the active task's runs), the embeddings and upper layers are
the model's own.

Parameter names: ``encoder.*`` (shared embeddings), ``bottom.<task>.<i>.*`` (layer i of the task's bottom,
0-based), ``top.<j>.*`` (shared layer ``bottom_layers + j``). Hugging Face Transformer: task t's layer i is
``encoder.model.<layer list>.<i>.copies.<task>.*``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from .base import SharingStrategy, config_depth, layerwise_encoder, register
from .hf_layers import TaskLayers, layer_stack, plain_state
from .private_embedder import PrivateEmbedders, check_private_embedder


def check_bottom_layers(k: int, depth: int, depth_key: str = "") -> None:
    where = f" ({depth_key})" if depth_key else ""
    if not 1 <= k < depth:
        raise ConfigError(f"config key 'model.bottom.layers' must be >= 1 and < the encoder depth {depth}{where}, "
                          f"so that each task owns at least one layer and at least one is shared; got {k}")


@dataclass
class BottomOptions:
    """``model.bottom``."""
    # how many of the lowest encoder layers each task owns; the layers above are shared (Zhang et al. 2021)
    layers: int = 1


@register("bottom")
class BottomSharing(PrivateEmbedders, SharingStrategy):
    Options = BottomOptions
    shared_options = ("private_embedder", "private_embedder_tasks")
    citation = """@misc{zhang2021rethinking,
  title = {Rethinking Hard-Parameter Sharing in Multi-Task Learning},
  author = {Zhang and others},
  year = {2021}
}"""

    @classmethod
    def check_options(cls, config, tasks, depth, depth_key=""):
        if depth is not None:  # a Transformer's depth: checked by the constructor once it is loaded
            check_bottom_layers(config.bottom.layers, depth, depth_key)
        check_private_embedder(config, "bottom", tasks)

    def __init__(self, build_encoder, tasks, config):
        super().__init__(build_encoder, tasks, config)
        encoder = layerwise_encoder("bottom", build_encoder, config)
        k = config.bottom.layers
        depth = config_depth(config)
        self.check_options(config, self.tasks, encoder.num_layers, depth[0] if depth else "the Transformer's "
                                                                                          "num_hidden_layers")
        self.bottom_layers, self.num_layers = k, encoder.num_layers
        self.stand_ins = encoder.layer_access == "stand_in"
        if self.stand_ins:  # the model's k lowest layers become one copy per task
            self.encoder = encoder
            stack = layer_stack(encoder, "bottom")
            for i in range(k):
                stack[i] = TaskLayers(stack[i], self.tasks)
            self.task_switches = list(stack)[:k]
            return
        layers = list(encoder.layers)
        encoder.layers = nn.ModuleList()  # its layers live in bottom/top now: no unused originals
        self.encoder = encoder
        self.make_private_embedders(encoder, config)
        self.bottom = nn.ModuleDict({task: nn.ModuleList(copy.deepcopy(layers[:k])) for task in self.tasks})
        self.top = nn.ModuleList(layers[k:])

    @property
    def output_dim(self) -> int:
        return self.encoder.output_dim

    # -- the encoder's forward pass, in parts -----------------------------------------------------
    def encode(self, x: torch.Tensor, batch, task: str) -> torch.Tensor:
        """Top-layer features of ``task`` from the embeddings ``x``."""
        for layer in (*self.bottom[task], *self.top):
            x = self.encoder.run_layer(layer, x, batch.mask)
        return self.encoder.finish(x, batch.mask)

    def forward(self, batch, task):
        if self.stand_ins:
            return self._hf_forward(batch, task, self.encoder.subword_rows(batch))
        return self.encode(self.encoder.embed(batch, **self.own_embedder(task)), batch, task)

    def _hf_forward(self, batch, task, rows):
        for layer in self.task_switches:
            layer.task = task
        return self.encoder.top_features(batch, rows=rows)[0]

    def own_parameters(self, task: str) -> int:
        """The number of parameters of ``task``'s own bottom layers."""
        own = [layer.copies[task] for layer in self.task_switches] if self.stand_ins else [self.bottom[task]]
        return sum(p.numel() for module in own for p in module.parameters())

    def task_encoder_state(self, task):
        if not self.stand_ins:
            return super().task_encoder_state(task)
        return plain_state(self.encoder, {layer: f"copies.{task}" for layer in self.task_switches})

    def features_for_tasks(self, batch, tasks):
        if self.stand_ins:  # the model runs as a whole, once per task (the batch is tokenised once)
            rows = self.encoder.subword_rows(batch)
            return {task: self._hf_forward(batch, task, rows) for task in tasks}
        if self.private_parts:  # each task embeds the batch its own way
            return super().features_for_tasks(batch, tasks)
        x = self.encoder.embed(batch)  # embeddings once per batch; layers per task, as they differ from the first
        return {task: self.encode(x, batch, task) for task in tasks}

    def card_section(self, model) -> list[str]:
        shared = "the layers above are" if self.private_parts else "the layers above and the embeddings are"
        lines = ["## Separate bottom layers", "",
                 f"Each task owns the lowest {self.bottom_layers} of the encoder's {self.num_layers} layers "
                 f"({self.own_parameters(self.tasks[0]):,} parameters per task); {shared} shared "
                 f"by all tasks."]
        if self.private_parts:
            lines += [""] + self.private_card_lines("Separate bottom layers")
        return lines
