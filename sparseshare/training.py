"""Multi-task training with Accelerate, read top to bottom in :func:`run_training`.

Distributed runs: every process follows the same epoch plan (same task, same global batch at every
step) and takes its slice of the global batch; the loss is scaled so that DDP's gradient average equals
the gradient of the mean loss over the *global* batch, hence 1 and N processes train the same model.
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from transformers import get_scheduler

from .config import Config, upgrade_saved_model_config, validate
from .data.batching import bucketed_batches
from .data.corpus import load_split
from .data.schedules import epoch_plan
from .data.schemes import convert
from .data.vocab import (Vocab, WordLookup, build_char_vocab, build_label_vocab, build_word_vocab,
                         embedding_matrix, read_word_vectors)
from .metrics import format_table, score_task
from .model import MultiTaskTagger
from .optim import MaskedAdamW, MaskedSGD
from .files import atomic_path, recover_folder, replace_folder, write_json_atomically
from .run_folder import check_run_folder, lock_for_all_processes, remove_outputs
from .tasks import TaskSpec, load_task


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
@dataclass
class TaskData:
    spec: TaskSpec
    labels: Vocab  # in the train scheme
    train_tokens: list[list[str]]
    train_labels: list[list[int]]
    dev: object  # datasets.Dataset with tokens / labels (corpus scheme)
    test: object | None  # None when the corpus has no test split here
    train_word_ids: list = field(default_factory=list)  # word ids of the training sentences, computed once


def task_dir(config: Config, spec: TaskSpec) -> str:
    data = config.data
    return data.task_dirs.get(spec.name) or data.dir or str(Path(data.root) / spec.corpus)


def load_task_data(config: Config, log=print) -> dict[str, TaskData]:
    result = {}
    for name in config.tasks:
        spec = load_task(name)
        options = dict(source=config.data.source, data_dir=task_dir(config, spec),
                       hub_path=config.data.hub_paths.get(spec.name))
        train = load_split(spec, "train", **options)
        if config.data.max_train_sentences:
            train = train.select(range(min(len(train), config.data.max_train_sentences)))
        dev = load_split(spec, "dev", **options)
        try:
            test = load_split(spec, "test", **options)
        except FileNotFoundError as err:
            log(f"[{spec.name}] no test split: {err}")
            test = None
        tokens = list(train["tokens"])  # plain lists: indexed per batch, Arrow access would be slow
        labels = [convert(seq, spec.scheme, spec.train_scheme) for seq in train["labels"]]
        vocab = build_label_vocab(labels)
        ids = [[vocab[t] for t in seq] for seq in labels]
        result[spec.name] = TaskData(spec, vocab, tokens, ids, dev, test)
        log(f"[{spec.name}] train {len(tokens)} / dev {len(dev)} / test {len(test) if test is not None else '-'} "
            f"sentences, {len(vocab)} labels ({spec.train_scheme})")
    return result


def build_model(config: Config, data: dict[str, TaskData]) -> MultiTaskTagger:
    all_train = [s for d in data.values() for s in d.train_tokens]
    bilstm = config.model.bilstm
    matrix = None
    if config.model.encoder in ("bilstm", "scratch"):
        vectors_words, vectors = (read_word_vectors(bilstm.embeddings, "model.bilstm.embeddings")
                                  if bilstm.embeddings else ([], None))
        if vectors is not None and vectors.shape[1] != bilstm.word_dim:
            raise ValueError(f"config key 'model.bilstm.word_dim' is {bilstm.word_dim} but {bilstm.embeddings} "
                             f"has {vectors.shape[1]}-d vectors")
        words = build_word_vocab(all_train, vectors_words, config.data.min_word_count, config.data.lowercase,
                                 config.data.normalize_digits)
        chars = build_char_vocab(all_train)
        if vectors is not None:
            lookup = WordLookup(words, config.data.lowercase, config.data.normalize_digits)
            matrix = torch.from_numpy(embedding_matrix(lookup, vectors_words, vectors, seed=config.train.seed))
    else:  # subword tokenization happens inside the Transformer encoder
        words, chars = Vocab([]), Vocab([])
    model = MultiTaskTagger(config.model, [d.spec for d in data.values()],
                            {name: d.labels.itos for name, d in data.items()}, words, chars,
                            config.data.lowercase, config.data.normalize_digits, pretrained_embeddings=matrix)
    add_word_ids(model, data)
    return model


def add_word_ids(model: MultiTaskTagger, data: dict[str, TaskData]) -> None:
    """Word ids of the training sentences in ``model``'s vocabulary, computed once per run."""
    for d in data.values():
        if len(d.train_word_ids) != len(d.train_tokens):
            d.train_word_ids = [model.featurizer.word_ids(s) for s in d.train_tokens]


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------
def unseen_labels(spec: TaskSpec, train_labels: list[str], gold: list[list[str]]) -> tuple[int, set[str]]:
    """Gold tokens whose label (entity type, for span tasks) never occurs in training."""
    def kind(label):
        return label.split("-", 1)[1] if spec.scheme != "none" and "-" in label else label

    known = {kind(label) for label in train_labels}
    missing = [label for seq in gold for label in seq if kind(label) not in known]
    return len(missing), set(missing)


def evaluate(model: MultiTaskTagger, datasets_by_task: dict[str, object], batch_size: int = 256,
             strict: bool = False, predictions: dict | None = None) -> dict[str, dict]:
    """Scores per task; ``predictions``, when given, receives each task's predicted labels (corpus scheme)."""
    results = {}
    for task, dataset in datasets_by_task.items():
        spec = model.tasks[task]
        gold = list(dataset["labels"])
        pred = model.predict(list(dataset["tokens"]), [task], batch_size)[task]
        if predictions is not None:
            predictions[task] = pred
        result = score_task(spec.metric, gold, pred, spec.ignore_labels, strict=strict, scheme=spec.scheme)
        count, names = unseen_labels(spec, model.labels[task], gold)
        result.update(unseen_labels=count, unseen_label_names=sorted(names))
        results[task] = result
    return results


def mean_score(results: dict[str, dict]) -> float:
    return float(np.mean([r["score"] for r in results.values()]))


# ----------------------------------------------------------------------------------------------
# Optimisation
# ----------------------------------------------------------------------------------------------
def build_optimizer(config: Config, model: MultiTaskTagger) -> torch.optim.Optimizer:
    """One parameter group, split only as the config asks: heads at ``train.head_lr``, and with weight decay
    the usual exemptions (biases, LayerNorm weights, CRF transition scores) as in transformers' Trainer."""
    from transformers.trainer_pt_utils import get_parameter_names

    t = config.train
    heads = {id(p) for p in model.heads.parameters()}
    decayed = set()
    if t.weight_decay:
        names = set(get_parameter_names(model, [torch.nn.LayerNorm], ["bias", "crf."]))
        decayed = {id(p) for n, p in model.named_parameters() if n in names}
    groups: dict[tuple, list] = {}
    for p in model.parameters():
        if p.requires_grad:
            key = (id(p) in heads and t.head_lr is not None, id(p) in decayed or not t.weight_decay)
            groups.setdefault(key, []).append(p)
    param_groups = [{"params": params, "lr": t.head_lr if is_head else t.lr,
                     "weight_decay": t.weight_decay if decays else 0.0}
                    for (is_head, decays), params in groups.items()]
    if model.sharing.masked_optimizer:  # steps must leave weights outside the active mask alone
        if t.optimizer == "sgd":
            return MaskedSGD(param_groups, lr=t.lr, momentum=t.momentum)
        return MaskedAdamW(param_groups, lr=t.lr)
    if t.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=t.lr, momentum=t.momentum)
    return torch.optim.AdamW(param_groups, lr=t.lr)


def build_scheduler(config: Config, optimizer, steps_per_epoch: int):
    t = config.train
    if t.lr_schedule == "inverse_time":  # Ma & Hovy (2016): lr / (1 + decay * epoch)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 1.0 / (1.0 + t.lr_decay * (step // steps_per_epoch)))
    return get_scheduler(t.lr_schedule, optimizer, num_warmup_steps=t.warmup_steps,
                         num_training_steps=t.epochs * steps_per_epoch)


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------
@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # steps completed within the current epoch
    global_step: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list = field(default_factory=list)


STATE_FILE = "train_state.json"


def _checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder is complete once its train_state.json exists)."""
    found = [p for p in (output_dir / "checkpoints").glob("step_*")
             if p.name[5:].isdigit() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = _checkpoints(output_dir)
    return found[-1] if found else None


def save_checkpoint(accelerator: Accelerator, output_dir: Path, state: TrainState, keep: int,
                    model: torch.nn.Module | None = None) -> None:
    """Write into a temporary folder and rename it into place, so that a crash mid-save never leaves a
    folder that looks complete (the epoch-end checkpoint may replace a step checkpoint of the same step)."""
    check_finite(model, state)
    folder = output_dir / "checkpoints" / f"step_{state.global_step:08d}"
    partial = folder.with_name(folder.name + ".partial")
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / STATE_FILE).write_text(json.dumps(dataclasses.asdict(state), indent=1))
        replace_folder(partial, folder)
        for old in _checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def save_model_atomically(model: MultiTaskTagger, folder: Path, extra: dict) -> None:
    partial = folder.with_name(folder.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    model.save_pretrained(partial, extra=extra)
    replace_folder(partial, folder)


def recover_interrupted_saves(output_dir: Path) -> None:
    """Put back the folders a crash left between the two renames of a save (see files.replace_folder)."""
    recover_folder(output_dir / "model")
    for old in (output_dir / "checkpoints").glob("step_*.old"):
        recover_folder(old.with_name(old.name[:-len(".old")]))
    for partial in (output_dir / "checkpoints").glob("step_*.partial"):
        shutil.rmtree(partial, ignore_errors=True)


def check_random_states(checkpoint: Path, process_index: int) -> None:
    """Accelerate's load_state only logs (at info level) when it cannot restore the RNG states, and the run then
    goes on with other dropout masks than the uninterrupted run: refuse instead. Loaded as Accelerate loads it
    (torch.load with weights_only=True), so a pickle that would run code is refused too."""
    from accelerate.utils import load

    path = checkpoint / f"random_states_{process_index}.pkl"
    try:
        states = load(str(path))
        if not isinstance(states, dict):
            raise TypeError(f"a {type(states).__name__}, not a dict of random states")
        random.Random().setstate(states["random_state"])
        np.random.RandomState().set_state(states["numpy_random_seed"])
        torch.Generator().set_state(states["torch_manual_seed"])
        if torch.cuda.is_available() and len(states["torch_cuda_manual_seed"]) != torch.cuda.device_count():
            raise ValueError(f"{len(states['torch_cuda_manual_seed'])} CUDA random states for "
                             f"{torch.cuda.device_count()} devices")
    except Exception as err:  # noqa: BLE001 - unpickling raises many types for a damaged file
        raise CheckpointError(f"checkpoint {checkpoint}: cannot restore the random states from {path} "
                              f"({type(err).__name__}: {err}); an exact resume is impossible from it. Delete the "
                              f"folder to resume from the previous checkpoint, if train.keep_checkpoints kept one"
                              ) from None


def check_finite(model: torch.nn.Module | None, state: TrainState) -> None:
    """A checkpoint or model with NaN/inf weights is never written over a good one."""
    if model is None:
        return
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise TrainingDiverged(f"training diverged by step {state.global_step}: {len(bad)} weight tensor(s) hold "
                               f"NaN/inf (first: {bad[0]}); nothing was saved over the last good checkpoint and model")


class CheckpointError(ValueError):
    pass


class TrainingDiverged(RuntimeError):
    pass


# Keys a resumed run may change: how long it runs and how it reports, not what it computes.
RESUMABLE_CHANGES = {"train.epochs", "train.patience", "train.progress_bar", "train.log_with",
                     "train.checkpoint_every", "train.keep_checkpoints", "train.eval_batch_size"}


def check_resume_config(saved: dict, current: dict) -> None:
    if isinstance(saved.get("model"), dict):
        saved = {**saved, "model": upgrade_saved_model_config(saved["model"])}
    old, new = _flat("", saved, {}), _flat("", current, {})
    # A key the checkpointed run's config.yaml lacks was added to sparseshare later: that run used its default.
    old = {**{k: v for k, v in _flat("", Config().to_dict(), {}).items() if k in new}, **old}
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise ValueError(f"--resume: the config differs from the checkpointed run's config.yaml in {details}; "
                         f"resume with the same settings or use another output_dir")


def _tracker(config: Config) -> str | None:
    choice = config.train.log_with
    if choice in (None, "none"):
        return None
    if choice == "auto":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            return None
        return "tensorboard"
    return choice


def _flat(prefix: str, value, out: dict):
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


# ----------------------------------------------------------------------------------------------
# The recipe
# ----------------------------------------------------------------------------------------------
def run_training(config: Config, resume: bool = False, callbacks=(), log=None, *, data=None, build=None,
                 evaluate_test: bool = True, command: str | None = None, overwrite: bool = False) -> dict:
    """Train, select on dev, evaluate test once. Returns the results written to ``results.json``.

    ``callbacks`` are called as ``callback(global_step)`` after every optimisation step (tests use one to
    interrupt a run mid-epoch). Pipelines (the sparse recipe) pass already loaded ``data``, a
    ``build(config, data) -> MultiTaskTagger`` that starts from given weights and masks, and
    ``evaluate_test=False`` for intermediate runs, so that test is only looked at once. ``command`` (the
    CLI passes its command line) goes into the model card. A folder holding a run is continued with ``resume``,
    replaced with ``overwrite``, and otherwise refused; nothing is written before the inputs are read and checked.
    """
    validate(config)  # load_config validated already; a Config built in Python had no such check
    check_input_files(config)
    output_dir = Path(config.output_dir)
    t = config.train

    # 1. Accelerate: the global batch is split across processes; heads a step does not use get no gradient.
    accelerator = Accelerator(
        # Without a GPU, `accelerate launch --multi_gpu` starts plain CPU processes: cpu=True makes
        # Accelerate join them into one gloo process group instead of training N independent copies.
        cpu=not torch.accelerator.is_available(),
        mixed_precision=t.mixed_precision,
        log_with=_tracker(config),
        project_dir=str(output_dir),
        # The global batch is split across processes by hand below; declaring split_batches also makes
        # the prepared LR scheduler step once per optimisation step (not once per process).
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        # Our buffers are constants (e.g. position ids; no BatchNorm): no need to broadcast them every step.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)],
    )
    log = log or accelerator.print
    # device_specific: each rank draws its own dropout masks (DDP broadcasts rank 0's initial weights).
    set_seed(t.seed, device_specific=True)
    # a quick look before the (slow) data loading; checked again under the lock
    check_run_folder(output_dir, resume, overwrite, latest_checkpoint(output_dir) is not None, probe_lock=True)

    # 2. Data and model: corpora and vectors are read (and checked) before anything is written.
    data = data if data is not None else load_task_data(config, log)
    model = (build or build_model)(config, data)
    model.sharing.initialize(t.seed)  # e.g. Maximum Roaming's initial masks; a resumed checkpoint replaces them
    add_word_ids(model, data)
    model.sharing.prepare_training(config, list(data))  # e.g. sparse sharing's masks (sparse.masks)
    log(f"model: {config.model.encoder} encoder, {config.model.sharing} sharing, {config.model.head} heads, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters")
    dev_sets = {name: d.dev for name, d in data.items()}

    # One run writes into output_dir at a time; the lock is held until the run ends.
    lock = lock_for_all_processes(output_dir, accelerator.is_main_process, accelerator.num_processes)
    try:
        if accelerator.is_main_process:
            recover_interrupted_saves(output_dir)
        accelerator.wait_for_everyone()
        checkpoint = latest_checkpoint(output_dir)
        check_run_folder(output_dir, resume, overwrite, checkpoint is not None)
        if resume and checkpoint is not None and (output_dir / "config.yaml").is_file():
            check_resume_config(yaml.safe_load((output_dir / "config.yaml").read_text()), config.to_dict())
        accelerator.wait_for_everyone()  # every process has looked before the main one removes or writes
        if accelerator.is_main_process:
            if overwrite:
                remove_outputs(output_dir, inputs=(config.sparse.masks, config.model.bilstm.embeddings))
            with atomic_path(output_dir / "config.yaml") as partial:
                partial.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        checkpoint = None if overwrite else checkpoint
        if resume and checkpoint is None:
            log(f"--resume: no checkpoint under {output_dir / 'checkpoints'}, starting from scratch")
        return _train(config, accelerator, model, data, dev_sets, checkpoint, callbacks, log, evaluate_test, command)
    finally:
        if lock is not None:
            lock.release()


def check_input_files(config: Config) -> None:
    """Files the config names, checked by key before any corpus is read (which can take a while)."""
    files = {"sparse.masks": config.sparse.masks}
    if config.model.encoder in ("bilstm", "scratch"):
        files["model.bilstm.embeddings"] = config.model.bilstm.embeddings
    for key, path in files.items():
        if path is None:
            continue
        if Path(path).is_dir():
            raise FileNotFoundError(f"config key {key!r}: {path} is a directory, not a file")
        if not Path(path).is_file():
            raise FileNotFoundError(f"config key {key!r}: file not found: {path}")


def _train(config: Config, accelerator: Accelerator, model: MultiTaskTagger, data: dict[str, TaskData],
           dev_sets: dict, checkpoint: Path | None, callbacks, log, evaluate_test: bool, command: str | None) -> dict:
    t, output_dir = config.train, Path(config.output_dir)
    # 3. Optimiser and LR schedule, sized by the (fixed) number of steps per epoch.
    batches_per_task = {n: math.ceil(len(d.train_tokens) / t.batch_size) for n, d in data.items()}
    steps_per_epoch = sum(batches_per_task.values())
    optimizer = build_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer, steps_per_epoch)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    tagger: MultiTaskTagger = accelerator.unwrap_model(model)
    masked_optimizer = optimizer.optimizer if isinstance(optimizer.optimizer, (MaskedSGD, MaskedAdamW)) else None

    # 4. Resume from the newest complete checkpoint.
    state = TrainState()
    if checkpoint is not None:
        expected = ["model.safetensors", "optimizer.bin", "scheduler.bin",
                    f"random_states_{accelerator.process_index}.pkl"]
        missing = [name for name in expected if not (checkpoint / name).is_file()]
        if missing:
            raise FileNotFoundError(f"checkpoint {checkpoint} is incomplete: missing {', '.join(missing)} (delete "
                                    f"the folder to resume from the previous checkpoint, if train.keep_checkpoints "
                                    f"kept one)")
        check_random_states(checkpoint, accelerator.process_index)
        accelerator.load_state(str(checkpoint))
        state = TrainState(**json.loads((checkpoint / STATE_FILE).read_text()))
        log(f"resumed from {checkpoint} (epoch {state.epoch}, step {state.step_in_epoch} of that epoch)")
    if _tracker(config):
        accelerator.init_trackers("sparseshare", config=_flat("", config.to_dict(), {}))

    rank, world = accelerator.process_index, accelerator.num_processes
    # 5. Epochs (none left when resuming a run that had already stopped early).
    for epoch in range(state.epoch, t.epochs if not state.stopped_early else state.epoch):
        rng = np.random.default_rng([t.seed, epoch])
        batches = {name: bucketed_batches([len(s) for s in d.train_tokens], t.batch_size, rng)
                   for name, d in data.items()}
        plan = epoch_plan(t.schedule, batches, rng, t.temperature)
        progress = _progress(config, accelerator, len(plan), state.step_in_epoch, epoch)
        model.train()
        started, sentences_seen, loss_sum, steps_run = time.perf_counter(), 0, 0.0, 0
        for step, (task, indices) in enumerate(plan):
            if step < state.step_in_epoch:
                continue  # already trained before the interruption
            # This process's slice of the global batch. A process left without sentences still runs a
            # zero-weighted forward/backward so that the gradient all-reduce stays in step.
            local = indices[rank::world]
            weight = world / len(indices)
            if not local:
                local, weight = indices[:1], 0.0
            d = data[task]
            batch = tagger.featurizer.collate([d.train_tokens[i] for i in local], [d.train_labels[i] for i in local],
                                              [d.train_word_ids[i] for i in local]).to(accelerator.device)
            losses = model(batch, task)
            loss = losses.sum() * weight
            accelerator.backward(loss)
            # The norm of the all-reduced gradient (the same on every process; max_norm inf leaves it unchanged)
            # tells whether this step would write NaN/inf into the weights: stop before the update. (Under fp16
            # an overflow is expected now and then: the gradient scaler skips that step.)
            grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), t.clip or math.inf))
            loss_value = loss.item()
            if t.mixed_precision != "fp16" and (not math.isfinite(grad_norm) or (
                    world == 1 and not math.isfinite(loss_value))):
                raise TrainingDiverged(
                    f"training diverged at step {state.global_step + 1} (epoch {epoch + 1}, task {task!r}): loss "
                    f"{loss_value}, gradient norm {grad_norm}; the step was not applied. The last good checkpoint "
                    f"is {latest_checkpoint(output_dir) or 'none'} and {output_dir / 'model'} holds the model of "
                    f"epoch {state.best_epoch if state.best_epoch > 0 else '-'}. Lower train.lr or set train.clip, "
                    f"and train again with --overwrite or into another output_dir")
            if masked_optimizer is not None:
                masked_optimizer.set_masks(tagger.sharing.parameter_masks(task))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            state.global_step += 1
            state.step_in_epoch = step + 1
            # e.g. a router scores its routes (a process without sentences passes none)
            tagger.sharing.observe_losses(task, losses.detach() if weight else losses.detach()[:0])
            tagger.sharing.after_step(state.global_step)  # e.g. Maximum Roaming moves its masks (saved below)
            sentences_seen += len(indices)
            if weight:  # this process's mean sentence loss (rank 0's, for the progress bar and tracker)
                loss_sum, steps_run = loss_sum + loss_value / weight / len(local), steps_run + 1
            if progress is not None:
                progress.update(1)
                progress.set_postfix(task=task, loss=f"{loss_sum / max(1, steps_run):.3f}")
            if state.global_step % t.checkpoint_every == 0:
                save_checkpoint(accelerator, output_dir, state, t.keep_checkpoints, tagger)
            for callback in callbacks:
                callback(state.global_step)
        if progress is not None:
            progress.close()
        elapsed = time.perf_counter() - started

        # 6. Dev evaluation, model selection, early stopping (dev only; test is never looked at here).
        # Every process evaluates the whole dev set so that all take the same stopping decision.
        dev = evaluate(tagger, dev_sets, t.eval_batch_size)
        score = mean_score(dev)
        state.epoch, state.step_in_epoch = epoch + 1, 0
        improved = score > state.best_score
        # e.g. Maximum Roaming's progress r(c), routing's epoch map; before the save, so the saved model has this epoch
        sharing_values = tagger.sharing.log_values()
        check_finite(tagger, state)  # before this epoch's model and checkpoint are written
        if improved:
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch + 1, 0
            if accelerator.is_main_process:
                save_model_atomically(tagger, output_dir / "model", {"selected_epoch": epoch + 1, "dev": _summary(dev)})
        else:
            state.bad_epochs += 1
        state.history.append({"epoch": epoch + 1, "dev": _summary(dev), "dev_mean": score,
                              "train_sentences_per_s": sentences_seen / max(elapsed, 1e-9),
                              **({"sharing": sharing_values} if sharing_values else {})})
        accelerator.log({"train/loss": loss_sum / max(1, steps_run), **sharing_values}, step=state.global_step)
        log(f"epoch {epoch + 1}: dev " + ", ".join(f"{k} {r['score']:.2f}" for k, r in dev.items())
            + f" | mean {score:.2f}{' (best)' if improved else ''} | {sentences_seen / max(elapsed, 1e-9):.0f} sent/s"
            + "".join(f" | {k} {v:.3f}" for k, v in sharing_values.items()))
        accelerator.log({f"dev/{k}": r["score"] for k, r in dev.items()} | {"dev/mean": score}, step=state.global_step)
        state.stopped_early = bool(t.patience and state.bad_epochs >= t.patience)
        save_checkpoint(accelerator, output_dir, state, t.keep_checkpoints)  # weights checked above
        if state.stopped_early:
            log(f"early stop: no dev improvement for {t.patience} epochs (best epoch {state.best_epoch})")
            break

    # 7. The dev-selected model, evaluated once on test.
    accelerator.wait_for_everyone()
    # Not accelerator.end_training(): it also destroys the process group, and a pipeline (the sparse recipe)
    # trains several times in one process. The CLI destroys the group when the command is done.
    for tracker in accelerator.trackers:
        tracker.finish()
    best = MultiTaskTagger.from_pretrained(output_dir / "model", device=accelerator.device)
    dev = evaluate(best, dev_sets, t.eval_batch_size)
    test_sets = {name: d.test for name, d in data.items() if d.test is not None and evaluate_test}
    test = evaluate(best, test_sets, t.eval_batch_size)
    results = {"selected_epoch": state.best_epoch, "epochs_run": state.epoch, "stopped_early": state.stopped_early,
               "dev": dev, "test": test, "history": state.history,
               "parameters": sum(p.numel() for p in best.parameters()), "num_processes": world}
    if accelerator.is_main_process:
        # the model card shows the scores, the command and the config that produced them
        save_model_atomically(best, output_dir / "model", {
            "selected_epoch": state.best_epoch, "dev": _summary(dev), **({"test": _summary(test)} if test else {}),
            **({"command": command} if command else {}),
            "training_config": config.to_dict()})
        write_json_atomically(output_dir / "results.json", results)  # last: results.json marks the run as finished
    accelerator.wait_for_everyone()  # no process reads model/ (e.g. the next pipeline stage) while it is replaced
    log("dev (selected epoch %d):\n%s" % (state.best_epoch, format_table(dev)))
    if test:
        log("test:\n" + format_table(test))
    return results


def _summary(results: dict[str, dict]) -> dict[str, float]:
    return {task: round(r["score"], 4) for task, r in results.items()}


def _progress(config, accelerator, total, done, epoch):
    if not (config.train.progress_bar and accelerator.is_local_main_process):
        return None
    if not sys.stderr.isatty():  # nohup, CI, a log file: a few plain lines, not thousands of \r updates
        return PlainProgress(total, done, f"epoch {epoch + 1}")
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}", leave=False, dynamic_ncols=True)


class PlainProgress:
    """tqdm's update / set_postfix / close, printing one line at each quarter of the epoch."""

    def __init__(self, total: int, done: int, desc: str, parts: int = 4):
        self.total, self.count, self.desc, self.postfix = total, done, desc, {}
        self.marks = sorted({max(1, round(total * k / parts)) for k in range(1, parts + 1)})
        self.last_count, self.last_time = done, time.perf_counter()

    def update(self, n: int = 1) -> None:
        before, self.count = self.count, self.count + n
        if any(before < mark <= self.count for mark in self.marks):
            now = time.perf_counter()
            rate = (self.count - self.last_count) / max(now - self.last_time, 1e-9)
            self.last_count, self.last_time = self.count, now
            extra = "".join(f" {k} {v}" for k, v in self.postfix.items())
            print(f"{self.desc}: {self.count}/{self.total} steps ({rate:.1f} steps/s){extra}", file=sys.stderr,
                  flush=True)

    def set_postfix(self, **values) -> None:
        self.postfix = values

    def close(self) -> None:
        pass
