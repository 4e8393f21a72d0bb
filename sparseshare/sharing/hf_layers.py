"""Layer-wise strategies on a Hugging Face encoder: stand-ins for the model's own layers.

bottom, cross_stitch, roaming and routing act between or inside a Transformer's layers. A Hugging Face model
has no generic way to run its embeddings and layers one by one (each architecture builds its attention mask,
positions and layer arguments differently), so these strategies leave the model's forward pass alone and replace
the entries of its layer list (:meth:`TransformerEncoder.layer_stack`, e.g. BERT's ``encoder.layer``) by the
modules below. The model calls them exactly as it calls its layers; they pass the call on to per-task copies or
routed blocks, with the arguments that carry the batch cut down to the rows each copy serves (:func:`call_rows`).
Checked on BERT, RoBERTa, DistilBERT and ELECTRA (sdpa and eager attention) and DeBERTa-v2 (eager); the layer
list is found by :meth:`TransformerEncoder.layer_stack`. Copies of a layer share the model's config object, so
switching the attention implementation of the model switches theirs. Gradient checkpointing is not supported: a
recomputed layer would read the per-pass attributes of the last pass.

What each stand-in needs per forward pass (the active task, the mixing matrix, a unit mask, a router) the
strategy sets as a plain attribute just before it runs the model. The model is then called for its top layer
only (:meth:`TransformerEncoder.top_features`): ``output_hidden_states`` is recorded by hooks on the original
layer classes, which would see the copies' calls instead of the stand-ins' results.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import PretrainedConfig

from ..errors import ConfigError

# keyword arguments of layer calls that are never batch-first (DeBERTa's relative position embeddings and indices)
NOT_BATCH = frozenset({"rel_embeddings", "relative_pos"})


def layer_stack(encoder, sharing: str) -> nn.ModuleList:
    try:
        return encoder.layer_stack()
    except ValueError as err:
        raise ConfigError(f"config key 'model.sharing' = {sharing!r} needs the Transformer's list of layers: {err}; "
                          f"use a model with a standard layer list (BERT, RoBERTa, DistilBERT, ...)") from None


def copy_layer(layer: nn.Module) -> nn.Module:
    """A deep copy of ``layer`` that shares its config objects (the model's, e.g. the attention implementation)."""
    shared = {id(value): value for module in layer.modules() for value in vars(module).values()
              if isinstance(value, PretrainedConfig)}
    return copy.deepcopy(layer, shared)


def plain_state(encoder: nn.Module, chosen: dict[nn.Module, str]) -> dict[str, torch.Tensor]:
    """``encoder.state_dict()`` as the plain model would name it, with each stand-in replaced by one module it
    holds: ``chosen`` maps a stand-in to the attribute path of that module in it (``"copies.pos"``,
    ``"blocks.1"``, ``"linear"``). That module's weights take the stand-in's names; the stand-in's other weights
    (the other tasks' copies, the unchosen blocks) are dropped. For exporting one task's path as a plain model."""
    names = {id(module): name for name, module in encoder.named_modules()}
    keep = {f"{names[id(standin)]}.": f"{names[id(standin)]}.{inner}." for standin, inner in chosen.items()}
    state = {}
    for key, tensor in encoder.state_dict().items():
        owner = next((prefix for prefix in keep if key.startswith(prefix)), None)
        if owner is None:
            state[key] = tensor
        elif key.startswith(keep[owner]):
            state[owner + key[len(keep[owner]):]] = tensor
    return state


def rows_by_choice(choice: torch.Tensor, choices: int):
    """``(j, rows)`` for every choice j that some row of the batch took: ``rows`` the indices of those rows, or None
    when the whole batch took j (then no gather or scatter is needed). Routing groups a batch by block with it, so
    a block runs once on its rows (no loop over sentences)."""
    for j in range(choices):
        index = (choice == j).nonzero().squeeze(1)
        if index.numel():
            yield j, None if index.numel() == choice.shape[0] else index


def _rows(value, index: torch.Tensor, total: int, length: int):
    """``value`` (an argument of a layer call) restricted to the batch rows ``index``: tensors whose first
    dimension is the batch (``total`` rows) and that also span the sequence (``length`` in a later dimension:
    hidden states, attention masks, position ids), inside tuples and lists too. Other tensors (cache positions,
    broadcast masks, per-model tables) pass unchanged."""
    if isinstance(value, torch.Tensor):
        batch_first = value.dim() >= 2 and value.shape[0] == total and length in value.shape[1:]
        return value.index_select(0, index) if batch_first else value
    if isinstance(value, (tuple, list)):
        return type(value)(_rows(v, index, total, length) for v in value)
    return value


def call_rows(layer: nn.Module, index: torch.Tensor, hidden: torch.Tensor, args, kwargs):
    """``layer`` called on the rows ``index`` of the batch (all rows when ``index`` is None)."""
    if index is None:
        return layer(hidden, *args, **kwargs)
    total, length = hidden.shape[:2]
    return layer(hidden.index_select(0, index), *_rows(args, index, total, length),
                 **{key: value if key in NOT_BATCH else _rows(value, index, total, length)
                    for key, value in kwargs.items()})


def hidden_of(output) -> torch.Tensor:
    """A layer's output hidden states (Transformers 5 layers return a tensor; some return a tuple)."""
    return output if isinstance(output, torch.Tensor) else output[0]


def like(output, hidden: torch.Tensor):
    """``hidden`` in the form the layer returned (a tensor, or a tuple led by it, e.g. DeBERTa's (hidden,
    attentions))."""
    return hidden if isinstance(output, torch.Tensor) else (hidden, *output[1:])


class TaskLayers(nn.Module):
    """bottom: one copy of the layer per task; runs the copy of ``self.task``."""

    def __init__(self, layer: nn.Module, tasks: list[str]):
        super().__init__()
        self.copies = nn.ModuleDict({task: copy_layer(layer) for task in tasks})
        self.task: str | None = None

    def forward(self, hidden_states, *args, **kwargs):
        return self.copies[self.task](hidden_states, *args, **kwargs)


class StitchedLayer(nn.Module):
    """cross_stitch: the layer of every task's column, then the cross-stitch mix. The model runs on T stacked
    copies of the batch (``top_features(batch, replicas=T)``); stack t is task t's column. ``self.mixing`` is the
    layer's (T x T) matrix (a view of the strategy's parameter, set before every forward pass)."""

    def __init__(self, layer: nn.Module, tasks: int):
        super().__init__()
        self.columns = nn.ModuleList(copy_layer(layer) for _ in range(tasks))
        self.mixing: torch.Tensor | None = None

    def forward(self, hidden_states, *args, **kwargs):
        tasks = len(self.columns)
        rows = hidden_states.shape[0] // tasks
        if rows * tasks != hidden_states.shape[0]:
            raise ValueError(f"cross-stitch: {hidden_states.shape[0]} rows are not {tasks} stacks of the batch")
        outputs = [call_rows(column, torch.arange(t * rows, (t + 1) * rows, device=hidden_states.device),
                             hidden_states, args, kwargs) for t, column in enumerate(self.columns)]
        stacked = torch.stack([hidden_of(output) for output in outputs])  # (T, rows, S, H)
        mixed = torch.einsum("ts,s...->t...", self.mixing, stacked)
        return like(outputs[-1], mixed.flatten(0, 1))


class MaskedUnits(nn.Module):
    """roaming: a layer's feed-forward down projection, its input (the feed-forward units, after the
    activation) multiplied by ``self.unit_mask``: a switched-off unit reaches nothing and its weights get no
    gradient from the task."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear
        self.unit_mask: torch.Tensor | None = None

    def forward(self, x):
        return self.linear(x * self.unit_mask.to(x.dtype))


def mask_feed_forward_units(layer: nn.Module, hidden_size: int) -> MaskedUnits:
    """Put a :class:`MaskedUnits` around ``layer``'s feed-forward down projection: the Linear that maps the
    widest input back to ``hidden_size`` (BERT's ``output.dense``, DistilBERT's ``ffn.lin2``)."""
    candidates = [(name, module) for name, module in layer.named_modules()
                  if isinstance(module, nn.Linear) and module.out_features == hidden_size
                  and module.in_features > hidden_size]
    if not candidates:
        raise ConfigError(f"config key 'model.sharing' = 'roaming': no feed-forward down projection (a Linear from "
                          f"more than {hidden_size} units to {hidden_size}) in {type(layer).__name__}")
    name, linear = max(candidates, key=lambda item: item[1].in_features)
    parent_name, _, attribute = name.rpartition(".")
    wrapped = MaskedUnits(linear)
    setattr(layer.get_submodule(parent_name) if parent_name else layer, attribute, wrapped)
    return wrapped


def feed_forward_unit_parameter_masks(layer: nn.Module, gate: MaskedUnits,
                                      unit_mask: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """roaming: the weights of ``layer`` that belong to the feed-forward units ``unit_mask`` keeps, as
    ``{parameter: bool mask}`` for the masked optimisers: their columns of the down projection (``gate``'s) and
    their rows (and bias) of every Linear from the hidden size to the units (BERT's ``intermediate.dense``; a gated
    feed-forward's gate and up projections). A layer without one (a fused projection to twice the units) is refused."""
    units = unit_mask.to(torch.bool)
    down = gate.linear
    masks = {down.weight: units[None, :].expand(down.weight.shape).to(down.weight.device)}
    ups = [module for module in layer.modules() if isinstance(module, nn.Linear) and module is not down
           and module.out_features == down.in_features and module.in_features == down.out_features]
    if not ups:
        raise ConfigError(f"config key 'model.roaming.masked_steps': no Linear from {down.out_features} to "
                          f"{down.in_features} units in {type(layer).__name__}, so the units' own input weights are "
                          f"unknown; set it to false")
    for up in ups:
        masks[up.weight] = units[:, None].expand(up.weight.shape).to(up.weight.device)
        if up.bias is not None:
            masks[up.bias] = units.to(up.bias.device)
    return masks


class RoutedLayer(nn.Module):
    """routing: k blocks (block 0 the model's layer, the others copies of it) plus optionally PASS (the
    identity). ``self.route(hidden_states)`` (set by the strategy before every forward pass) picks each row's
    block; the rows are grouped by block, a block runs once on its rows (no loop over sentences)."""

    def __init__(self, layer: nn.Module, copies: int, has_pass: bool):
        super().__init__()
        self.blocks = nn.ModuleList([layer] + [copy_layer(layer) for _ in range(copies - 1)])
        self.has_pass = has_pass
        self.route = None
        # the layers' output form: 0 = a tensor, n = a tuple of n (hidden first; the others, e.g. attention weights,
        # are returned as None); None until a block has run
        self._tuple_size: int | None = None

    def forward(self, hidden_states, *args, **kwargs):
        choice = self.route(hidden_states)
        blocks = list(self.blocks) + ([None] if self.has_pass else [])
        out = None
        for j, index in rows_by_choice(choice, len(blocks)):
            block = blocks[j]
            if block is None:
                y = hidden_states if index is None else hidden_states.index_select(0, index)
            else:
                output = call_rows(block, index, hidden_states, args, kwargs)
                self._tuple_size = 0 if isinstance(output, torch.Tensor) else len(output)
                y = hidden_of(output)
            if index is None:
                out = y
                break
            out = (hidden_states.new_zeros(hidden_states.shape) if out is None else out).index_copy(0, index, y)
        if self._tuple_size is None:  # every row took PASS before any block ever ran: learn the form from one row
            with torch.no_grad():
                probe = call_rows(self.blocks[0], choice.new_zeros(1), hidden_states, args, kwargs)
            self._tuple_size = 0 if isinstance(probe, torch.Tensor) else len(probe)
        return (out, *[None] * (self._tuple_size - 1)) if self._tuple_size else out
