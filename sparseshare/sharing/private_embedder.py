"""Per-task copies of parts of the BiLSTM's embedder (``model.private_embedder``), for the strategies that offer
the option (hard, sparse, hierarchical, separate bottom layers, cross-stitch) through :class:`PrivateEmbedders`.

Each task owns a copy of the word table, the char-CNN or both, and the rest of the encoder is shared: issue 23
found about half of what NER loses by sharing (on new names) in the shared word representations that the other
tasks move, the rest in the shared layers above them. The copies live in the strategy as ``private.<task>.<part>.*``
and leave the encoder's embedder, which then reads them per task (``WordEmbedder.forward(batch, words=, chars=)``).
"""
from __future__ import annotations

import copy

from torch import nn

from ..errors import ConfigError

# model.private_embedder -> the WordEmbedder submodules each task owns a copy of
PRIVATE_PARTS = {"none": (), "words": ("words",), "chars": ("chars",), "all": ("words", "chars")}
KEY = "model.private_embedder"


def check_private_embedder(config, strategy: str, tasks: list[str],
                           allowed: tuple[str, ...] = tuple(PRIVATE_PARTS), why_not: str = "") -> None:
    choice = config.private_embedder
    owners = config.private_embedder_tasks
    if owners is not None:
        key = f"config key '{KEY}_tasks'"
        if choice == "none":
            raise ConfigError(f"{key} lists the tasks that own private embedder copies, but {KEY} is 'none'")
        if not owners:
            raise ConfigError(f"{key} is empty; list at least one task, or set {KEY}: none")
        unknown = [t for t in owners if t not in tasks]
        if unknown or len(set(owners)) != len(owners):
            raise ConfigError(f"{key} must list distinct tasks of the model {list(tasks)}, got {list(owners)}")
    if choice not in PRIVATE_PARTS:
        raise ConfigError(f"config key '{KEY}' must be one of {list(allowed)}, got {choice!r}")
    if choice not in allowed:
        raise ConfigError(f"config key '{KEY}' = {choice!r} is not available with model.sharing={strategy} "
                          f"(choose one of {list(allowed)}){why_not}")
    if choice == "none":
        return
    from ..encoders import ENCODER_KINDS, encoder_kind

    if not encoder_kind(config.encoder).private_embedder:
        serves = [name for name, kind in ENCODER_KINDS.items() if kind.private_embedder]
        raise ConfigError(f"config key '{KEY}' serves the {' and '.join(serves)} encoder(s), not model.encoder = "
                          f"{config.encoder!r}")
    if "chars" in PRIVATE_PARTS[choice] and config.bilstm.char_filters == 0:
        raise ConfigError(f"config key '{KEY}' = {choice!r} makes the char-CNN private, but "
                          f"model.bilstm.char_filters = 0 builds none")


def move_to_private_copies(encoder: nn.Module, parts: tuple[str, ...], owners: list[str],
                           keep_shared: bool = False) -> nn.ModuleDict:
    """A copy of the built ``parts`` of ``encoder.embedder`` for each task of ``owners``; the originals leave the
    encoder (no unused weights) unless ``keep_shared`` (tasks that own no copy read them)."""
    embedder = encoder.embedder
    private = nn.ModuleDict({task: nn.ModuleDict({part: copy.deepcopy(getattr(embedder, part)) for part in parts})
                             for task in owners})
    if not keep_shared:
        for part in parts:
            setattr(embedder, part, None)
    return private


def copies_of_shared_parts(state: dict, parts: tuple[str, ...], owners: list[str], keep_shared: bool = False) -> dict:
    """A model state dict with one shared embedder turned into the state of the same model with private ``parts``
    for ``owners``: each copy starts from the shared part (sparse sharing's rewind point is one network), which
    stays when ``keep_shared``."""
    out = {}
    for name, value in state.items():
        part = next((p for p in parts if name.startswith(f"sharing.encoder.embedder.{p}.")), None)
        if part is None or keep_shared:
            out[name] = value
        if part is not None:
            rest = name[len(f"sharing.encoder.embedder.{part}."):]
            out.update({f"sharing.private.{task}.{part}.{rest}": value for task in owners})
    return out


def private_owners(config, tasks: list[str]) -> tuple[list[str], bool]:
    """``(tasks that own copies, in the model's order; whether the shared parts stay for the others)``."""
    listed = config.private_embedder_tasks
    owners = [t for t in tasks if listed is None or t in listed]
    return owners, len(owners) < len(tasks)


class PrivateEmbedders:
    """Mixin of a :class:`~.base.SharingStrategy` that offers ``model.private_embedder``: the strategy calls
    :meth:`make_private_embedders` on its built encoder, passes :meth:`own_embedder` to the encoder's ``embed`` (or
    forward) and :meth:`with_own_embedder` to what it exports. Without the option all three change nothing."""
    private_parts: tuple[str, ...] = ()

    def make_private_embedders(self, encoder: nn.Module, config) -> None:
        self.private_parts = PRIVATE_PARTS[config.private_embedder]
        if self.private_parts:  # the built parts become the owners' starting copies
            owners, keep_shared = private_owners(config, self.tasks)
            self.private = move_to_private_copies(encoder, self.private_parts, owners, keep_shared)

    def owns_embedder(self, task: str) -> bool:
        return bool(self.private_parts) and task in self.private

    def own_embedder(self, task: str) -> dict[str, nn.Module]:
        """Keyword arguments for the encoder's embedder: ``task``'s own parts (none when it owns no copies)."""
        return dict(self.private[task].items()) if self.owns_embedder(task) else {}

    def with_own_embedder(self, state: dict, task: str) -> dict:
        """``state`` (an encoder's ``state_dict`` names) with ``task``'s own parts in place of the shared ones."""
        if self.owns_embedder(task):
            state.update({f"embedder.{k}": v for k, v in self.private[task].state_dict().items()})
        return state

    def private_card_lines(self, strategy_title: str, rest: str = "",
                           shared_how: str = "shared by all tasks") -> list[str]:
        """The card's section: what each task owns, the embedder parts still shared (``shared_how``), ``rest``."""
        if not self.private_parts:
            return []
        what = {"words": "word embeddings", "chars": "char-CNN"}
        own = sum(p.numel() for p in next(iter(self.private.values())).parameters())
        shared = [what[p] for p in what if p not in self.private_parts and getattr(self.encoder.embedder, p, None)
                  is not None]
        owners = list(self.private)
        who = "Each task" if len(owners) == len(self.tasks) else f"Each of {', '.join(owners)}"
        text = f"{who} owns its {' and '.join(what[p] for p in self.private_parts)} ({own:,} parameters per task)"
        if len(owners) < len(self.tasks):
            text += f"; {', '.join(t for t in self.tasks if t not in owners)} read the shared ones"
        if shared:
            text += f"; the {' and '.join(shared)} {'is' if len(shared) == 1 else 'are'} {shared_how}"
        return [f"## {strategy_title} with private embedders", "", text + (f"; {rest}." if rest else ".")]
