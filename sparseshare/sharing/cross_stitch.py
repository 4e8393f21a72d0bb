"""Cross-stitch networks (Misra et al., CVPR 2016): one encoder column per task, the tasks' activations mixed
after every layer by a learned (T x T) matrix.

After layer l, task t's column continues from ``sum_s alpha_l[t, s] * h_l^s``, the mix of every column's output
(``mixing[l]`` is the layer's matrix, rows = the receiving task). The matrices start with ``model.cross_stitch.init``
(alpha) on the diagonal and ``(1 - alpha) / (T - 1)`` elsewhere; alpha = 1 makes the columns independent
single-task encoders. A batch of task t runs *every* column (training cost grows linearly with the number of
tasks: that is the method) and returns task t's top mixed activation; :meth:`features_for_tasks` runs the
columns once and returns each task's.

Shared part: the word/char embeddings (for the scratch Transformer also its input projection and positions)
are computed once and read by every column. The paper has no shared part; the embedding table is most of a
tagger's parameters (a GloVe vocabulary), so copying it T times would multiply the model's size for little
(every column would start from the same vectors anyway). Everything above the embeddings is per task: the
layers and, for the scratch Transformer, the final LayerNorm. ``model.private_embedder`` (BiLSTM only, see
:mod:`.private_embedder`) gives each column its own word table and/or char-CNN (``all``: whole columns, as in the
paper); a column's embeddings then reach the other tasks only through the mixing.

A Hugging Face Transformer: every entry of its layer list becomes a :class:`~.hf_layers.StitchedLayer` holding
the T columns' copies of that layer; the model runs once on T stacked copies of the batch (stack t = task t's
column; the embeddings are shared, computed per stack), and after each layer the stacks are mixed.

Parameter names: ``encoder.*`` (shared embeddings), ``columns.<task>.<i>.*`` (layer i of the task's column,
0-based), ``norms.<task>.*`` (scratch only), ``mixing`` (layers x T x T). Hugging Face Transformer: column t's
layer i is ``encoder.model.<layer list>.<i>.columns.<t>.*``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from .base import SharingStrategy, layerwise_encoder, register
from .hf_layers import StitchedLayer, layer_stack
from .private_embedder import PrivateEmbedders, check_private_embedder


def mixing_init(layers: int, tasks: int, alpha: float) -> torch.Tensor:
    """(layers, T, T): alpha on the diagonal, (1 - alpha) / (T - 1) elsewhere (1 for a single task)."""
    if tasks == 1:
        return torch.ones(layers, 1, 1)
    matrix = torch.full((tasks, tasks), (1.0 - alpha) / (tasks - 1))
    matrix.fill_diagonal_(alpha)
    return matrix.expand(layers, tasks, tasks).clone()


@dataclass
class CrossStitchOptions:
    """``model.cross_stitch``."""
    # initial weight alpha of a task's own column in every layer's (T x T) mixing matrix, (1 - alpha) / (T - 1) for
    # each other task's column (Misra et al. 2016); in [0, 1]
    init: float = 0.9


@register("cross_stitch")
class CrossStitchSharing(PrivateEmbedders, SharingStrategy):
    Options = CrossStitchOptions
    shared_options = ("private_embedder", "private_embedder_tasks")
    citation = """@inproceedings{misra2016cross,
  title = {Cross-stitch Networks for Multi-task Learning},
  author = {Misra, Ishan and Shrivastava, Abhinav and Gupta, Abhinav and Hebert, Martial},
  booktitle = {Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year = {2016}
}"""

    @classmethod
    def check_options(cls, config, tasks, depth, depth_key=""):
        if not 0.0 <= config.cross_stitch.init <= 1.0:
            raise ConfigError(f"config key 'model.cross_stitch.init' must be in [0, 1], got {config.cross_stitch.init}")
        check_private_embedder(config, "cross_stitch", tasks)

    def __init__(self, build_encoder, tasks, config):
        super().__init__(build_encoder, tasks, config)
        self.check_options(config, self.tasks, None)  # also for a ModelConfig built in Python, not loaded
        encoder = layerwise_encoder("cross_stitch", build_encoder, config)
        self.num_layers = encoder.num_layers
        self.mixing = nn.Parameter(mixing_init(self.num_layers, len(self.tasks), config.cross_stitch.init))
        self.stand_ins = encoder.layer_access == "stand_in"
        self.norms = None  # per-task copies of the norm the encoder applies after its top layer, if any
        if self.stand_ins:  # every layer of the model becomes T columns' layers + the mix
            self.encoder = encoder
            stack = layer_stack(encoder, "cross_stitch")
            for i in range(self.num_layers):
                stack[i] = StitchedLayer(stack[i], len(self.tasks))
            self.stitched = list(stack)
            return
        layers = encoder.layers
        encoder.layers = nn.ModuleList()  # the columns own the layers now: no unused originals
        if encoder.norm is not None:
            self.norms = nn.ModuleDict({task: copy.deepcopy(encoder.norm) for task in self.tasks})
            encoder.norm = None
        self.encoder = encoder
        self.make_private_embedders(encoder, config)
        # every column starts as a copy of the same initialisation, like the paper's columns that all start
        # from one pretrained network
        self.columns = nn.ModuleDict({task: copy.deepcopy(layers) for task in self.tasks})

    @property
    def output_dim(self) -> int:
        return self.encoder.output_dim

    def columns_forward(self, batch, rows: list[int] | None = None) -> torch.Tensor:
        """(T', B, L, H): the top mixed activations of the tasks at ``rows`` (all tasks when None)."""
        if self.stand_ins:  # the model runs one stack of the batch per task; its layers are StitchedLayers
            for i, layer in enumerate(self.stitched):
                layer.mixing = self.mixing[i]
            try:
                top = self.encoder.top_features(batch, replicas=len(self.tasks))
            finally:  # no views of the parameter (with their graph) are kept between passes
                for layer in self.stitched:
                    layer.mixing = None
            return top if rows is None else top[rows]
        if self.private_parts:  # every column reads its own task's embeddings
            h = torch.stack([self.encoder.embed(batch, **self.own_embedder(task)) for task in self.tasks])
        else:
            x = self.encoder.embed(batch)
            h = x.unsqueeze(0).expand(len(self.tasks), *x.shape)  # every column reads the shared embeddings
        for i in range(self.num_layers):
            out = torch.stack([self.encoder.run_layer(self.columns[task][i], h[j], batch.mask) for j, task in enumerate(self.tasks)])
            mixing = self.mixing[i]
            if i == self.num_layers - 1 and rows is not None:
                mixing = mixing[rows]  # the top layer: only the rows that are read
            h = torch.einsum("ts,s...->t...", mixing, out)
        return h

    def _top(self, h: torch.Tensor, task: str, batch) -> torch.Tensor:
        return h if self.stand_ins else self.encoder.finish(h, batch.mask, self.norms[task] if self.norms else None)

    def forward(self, batch, task):
        return self._top(self.columns_forward(batch, [self.tasks.index(task)])[0], task, batch)

    def features_for_tasks(self, batch, tasks):
        rows = [self.tasks.index(task) for task in tasks]
        top = self.columns_forward(batch, rows)
        return {task: self._top(top[j], task, batch) for j, task in enumerate(tasks)}

    def task_encoder_state(self, task):
        raise NotImplementedError(f"cross_stitch mixes every task's column after each layer, so task {task!r} runs "
                                  f"through all {len(self.tasks)} columns, not one encoder that could be exported")

    def card_section(self, model) -> list[str]:
        tasks = self.tasks
        lines = ["## Cross-stitch", "",
                 f"One encoder column per task; after each of the {self.num_layers} layers, task t's column continues "
                 f"from the mix sum_s alpha[t, s] x (column s's output). The learned mixing matrices (rows: the "
                 f"receiving task):"]
        for i, matrix in enumerate(self.mixing.detach().cpu().tolist()):
            lines += ["", f"Layer {i + 1}:", "", "| | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
            lines += [f"| {t} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for t, row in zip(tasks, matrix)]
        if self.private_parts:
            lines += [""] + self.private_card_lines(
                "Cross-stitch", "a task's own parts feed only its column, and the mixing passes each column's outputs "
                "to the others", shared_how="read by every column")
        return lines

