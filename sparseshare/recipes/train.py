"""The training recipe, read top to bottom in :func:`run_training`: Accelerate -> data and model -> (lock, resume
checks) -> optimiser and schedule -> resume from a checkpoint -> the epoch loop -> dev selection and early
stopping -> the dev-selected model evaluated once on test -> results.json. ``sparseshare train`` and
``recipes/train.py`` run it; the sparse recipe (:mod:`.train_sparse`) runs it once per stage.

The components it assembles are the library's: :mod:`sparseshare.training` (data, checkpoints, progress),
:mod:`sparseshare.optim`, :mod:`sparseshare.evaluation`.

Distributed runs: every process follows the same epoch plan (same task, same global batch at every
step) and takes its slice of the global batch; the loss is scaled so that DDP's gradient average equals
the gradient of the mean loss over the *global* batch, hence 1 and N processes train the same model.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import set_seed

from ..config import Config, ConfigError, validate
from ..data.batching import bucketed_batches
from ..data.schedules import epoch_steps, step_plan
from ..evaluation import evaluate, mean_score
from ..files import write_json_atomically
from ..logs import messages_to
from ..metrics import format_table
from ..model import MultiTaskTagger
from ..optim import MaskedAdamW, MaskedSGD, PerTaskState, StepMasks, build_optimizer, build_scheduler
from ..run_folder import RUN_OUTPUTS, check_run_folder
from ..training.checkpoints import (STATE_FILE, TrainingDiverged, TrainState, check_finite, check_random_states,
                                    flat_config, latest_checkpoint, recover_interrupted_saves, save_checkpoint,
                                    save_model_atomically)
from ..training.claim import claimed_output_dir
from ..training.data import (TaskData, add_word_ids, build_model, check_input_files, load_task_data,
                             run_inputs)
from ..training.distillation import TeacherTargets, check_teachers, gold_weight
from ..training.progress import progress_bar, tracker_name
from ..training.threads import use_training_threads


logger = logging.getLogger(__name__)

def run_training(config: Config, resume: bool = False, callbacks=(), log=None, *, data=None, build=None,
                 evaluate_test: bool = True, command: str | None = None, overwrite: bool = False,
                 config_file: str | Path | None = None) -> dict:
    """Train, select on dev, evaluate test once. Returns the results written to ``results.json``.

    ``callbacks`` are called as ``callback(global_step)`` after every optimisation step (tests use one to
    interrupt a run mid-epoch). Pipelines (the sparse recipe) pass already loaded ``data``, a
    ``build(config, data) -> MultiTaskTagger`` that starts from given weights and masks, and
    ``evaluate_test=False`` for intermediate runs, so that test is only looked at once. ``command`` (the
    CLI passes its command line) goes into the model card. A folder holding a run is continued with ``resume``,
    replaced with ``overwrite``, and otherwise refused; nothing is written before the inputs are read and checked,
    and no file the run reads is deleted or replaced (``config_file``: the YAML file the config came from, one of
    them). A full disk ends the run with a :class:`~sparseshare.run_folder.DiskFullError` naming ``output_dir``.
    The run's messages go to the ``sparseshare`` logger (:mod:`sparseshare.logs`); ``log``, a callable, receives them
    instead of its default handler.
    """
    with messages_to(log):
        return _run_training(config, resume, callbacks, data=data, build=build, evaluate_test=evaluate_test,
                             command=command, overwrite=overwrite, config_file=config_file)


def _run_training(config: Config, resume: bool, callbacks, *, data, build, evaluate_test: bool, command: str | None,
                  overwrite: bool, config_file: str | Path | None) -> dict:
    validate(config)  # load_config validated already; a Config built in Python had no such check
    check_input_files(config)
    inputs = run_inputs(config, config_file)
    output_dir = Path(config.output_dir)
    t = config.train

    # 1. Accelerate: the global batch is split across processes; heads a step does not use get no gradient.
    accelerator = Accelerator(
        # Without a GPU, `accelerate launch --multi_gpu` starts plain CPU processes: cpu=True makes
        # Accelerate join them into one gloo process group instead of training N independent copies.
        cpu=not torch.accelerator.is_available(),
        mixed_precision=t.mixed_precision,
        log_with=tracker_name(config),
        project_dir=str(output_dir),
        # The global batch is split across processes by hand below; declaring split_batches also makes
        # the prepared LR scheduler step once per optimisation step (not once per process).
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        # Our buffers are constants (e.g. position ids; no BatchNorm): no need to broadcast them every step.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)],
    )
    if accelerator.device.type == "cpu":
        logger.info(f"{use_training_threads(t.threads)} CPU threads per process")
    # device_specific: each rank draws its own dropout masks (DDP broadcasts rank 0's initial weights).
    set_seed(t.seed, device_specific=True)
    # a quick look before the (slow) data loading; checked again under the lock
    check_run_folder(output_dir, resume, overwrite, latest_checkpoint(output_dir) is not None, probe_lock=True,
                     inputs=inputs)

    # 2. Data and model: corpora and vectors are read (and checked) before anything is written.
    data = data if data is not None else load_task_data(config)
    unknown = [task for task in t.task_weights if task not in data]
    if unknown:  # by the tasks' names (a task file's name:), known once the tasks are read
        raise ConfigError(f"config key 'train.task_weights': task(s) {unknown} are not among the run's tasks {list(data)}")
    model = (build or build_model)(config, data)
    model.sharing.initialize(t.seed)  # e.g. Maximum Roaming's initial masks; a resumed checkpoint replaces them
    add_word_ids(model, data)
    model.sharing.prepare_training(config, list(data))  # e.g. sparse sharing's masks (sparse.masks)
    check_teachers(t.distill_from, model)  # their config.json and labels.json; loaded when training starts
    logger.info(f"model: {config.model.encoder} encoder, {config.model.sharing} sharing, {config.model.head} heads, "
                f"{sum(p.numel() for p in model.parameters()):,} parameters")
    dev_sets = {name: d.dev for name, d in data.items()}

    # One run writes into output_dir at a time; the lock is held until the run ends.
    with claimed_output_dir(config, accelerator, resume=resume, overwrite=overwrite, inputs=inputs,
                            outputs=RUN_OUTPUTS, done_marker="results.json",
                            has_checkpoint=lambda: latest_checkpoint(output_dir) is not None,
                            repair=lambda: recover_interrupted_saves(output_dir)):
        checkpoint = latest_checkpoint(output_dir)  # none after --overwrite removed them
        if resume and checkpoint is None:
            logger.info(f"--resume: no checkpoint under {output_dir / 'checkpoints'}, starting from scratch")
        return _train(config, accelerator, model, data, dev_sets, checkpoint, callbacks, evaluate_test, command)


def _train(config: Config, accelerator: Accelerator, model: MultiTaskTagger, data: dict[str, TaskData],
           dev_sets: dict, checkpoint: Path | None, callbacks, evaluate_test: bool, command: str | None) -> dict:
    t, output_dir = config.train, Path(config.output_dir)
    # 3. Optimiser and LR schedule, sized by the (fixed) number of steps per epoch.
    batches_per_task = {n: math.ceil(len(d.train_tokens) / t.batch_size) for n, d in data.items()}
    steps_per_epoch = epoch_steps(batches_per_task, t.task_weights, t.epoch_length, t.schedule)
    optimizer = build_optimizer(config, model, accelerator.device.type)
    scheduler = build_scheduler(config, optimizer, steps_per_epoch)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    tagger: MultiTaskTagger = accelerator.unwrap_model(model)
    masked_optimizer = optimizer.optimizer if isinstance(optimizer.optimizer, (MaskedSGD, MaskedAdamW)) else None
    per_task_optimizer = optimizer.optimizer if isinstance(optimizer.optimizer, PerTaskState) else None

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
        logger.info(f"resumed from {checkpoint} (epoch {state.epoch}, step {state.step_in_epoch} of that epoch)")
    if tracker_name(config):
        accelerator.init_trackers("sparseshare", config=flat_config("", config.to_dict(), {}))

    # Teachers' soft targets (distillation), computed before the first step; the same on every process.
    teachers = (TeacherTargets.compute(t.distill_from, data, tagger, t.eval_batch_size)
                if t.distill_from else None)
    total_steps = t.epochs * steps_per_epoch
    step_masks = StepMasks(tagger.sharing.parameter_masks) if masked_optimizer is not None else None
    rank, world = accelerator.process_index, accelerator.num_processes
    # 5. Epochs (none left when resuming a run that had already stopped early).
    for epoch in range(state.epoch, t.epochs if not state.stopped_early else state.epoch):
        rng = np.random.default_rng([t.seed, epoch])
        batches = {name: bucketed_batches([len(s) for s in d.train_tokens], t.batch_size, rng)
                   for name, d in data.items()}
        plan = step_plan(t.schedule, batches, rng, t.temperature, t.task_weights, t.epoch_length)
        progress = progress_bar(config, accelerator, len(plan), state.step_in_epoch, epoch)
        model.train()
        started, sentences_seen, loss_sum, steps_run = time.perf_counter(), 0, 0.0, 0
        for step, items in enumerate(plan):
            if step < state.step_in_epoch:
                continue  # already trained before the interruption
            tasks = [task for task, _ in items]
            loss_value, per_task = 0.0, []
            for position, (task, indices) in enumerate(items):  # one task's batch, or every task's (joint)
                # This process's slice of the global batch. A process left without sentences still runs a
                # zero-weighted forward/backward so that the gradient all-reduce stays in step.
                local = indices[rank::world]
                d = data[task]
                weight = loss_weight(indices, d.train_tokens, world, t.loss_normalization)
                if not local:
                    local, weight = indices[:1], 0.0
                batch = tagger.featurizer.collate([d.train_tokens[i] for i in local],
                                                  [d.train_labels[i] for i in local],
                                                  [d.train_word_ids[i] for i in local]).to(accelerator.device)
                if teachers is not None and task in teachers:
                    soft = teachers.batch(task, local, batch.mask.shape[1], accelerator.device)
                    losses = model(batch, task, soft, gold_weight(state.global_step, total_steps, t.distill_weight))
                else:
                    losses = model(batch, task)
                loss = losses.sum() * weight
                # the gradients of the step's tasks add up; DDP all-reduces them once, after the last task's pass
                # (it allows one forward pass per backward pass, so the tasks' losses are not summed into one)
                with accelerator.no_sync(model) if position < len(items) - 1 else contextlib.nullcontext():
                    accelerator.backward(loss)
                loss_value += loss.item()
                per_task.append((task, losses, weight, len(indices), len(local)))
            # The norm of the all-reduced gradient (the same on every process; max_norm inf leaves it unchanged)
            # tells whether this step would write NaN/inf into the weights: stop before the update. (Under fp16
            # an overflow is expected now and then: the gradient scaler skips that step.)
            grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), t.clip or math.inf))
            if t.mixed_precision != "fp16" and (not math.isfinite(grad_norm) or (
                    world == 1 and not math.isfinite(loss_value))):
                raise TrainingDiverged(
                    f"training diverged at step {state.global_step + 1} (epoch {epoch + 1}, task "
                    f"{' + '.join(map(repr, tasks))}): loss {loss_value}, gradient norm {grad_norm}; the step was not "
                    f"applied. The last good checkpoint is {latest_checkpoint(output_dir) or 'none'} and "
                    f"{output_dir / 'model'} holds the model of epoch "
                    f"{state.best_epoch if state.best_epoch > 0 else '-'}. Lower train.lr or set train.clip, "
                    f"and train again with --overwrite or into another output_dir")
            if masked_optimizer is not None:  # the weights any of the step's tasks may move
                masked_optimizer.set_masks(step_masks(tasks))
            if per_task_optimizer is not None:
                per_task_optimizer.set_task(tasks[0])  # (the joint schedule is refused with per-task states)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            state.global_step += 1
            state.step_in_epoch = step + 1
            for task, losses, weight, sentences, _ in per_task:
                # e.g. a router scores its routes (a process without sentences passes none)
                tagger.sharing.observe_losses(task, losses.detach() if weight else losses.detach()[:0])
                sentences_seen += sentences
            tagger.sharing.after_step(state.global_step)  # e.g. Maximum Roaming moves its masks (saved below)
            trained = [float(losses.detach().sum()) / count for _, losses, weight, _, count in per_task if weight]
            if trained:  # this process's mean sentence loss (rank 0's; joint: the mean over the step's tasks)
                loss_sum, steps_run = loss_sum + sum(trained) / len(trained), steps_run + 1
            if progress is not None:
                progress.update(1)
                progress.set_postfix(task="+".join(tasks), loss=f"{loss_sum / max(1, steps_run):.3f}")
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
        logger.info(f"epoch {epoch + 1}: dev " + ", ".join(f"{k} {r['score']:.2f}" for k, r in dev.items())
                    + f" | mean {score:.2f}{' (best)' if improved else ''} | {sentences_seen / max(elapsed, 1e-9):.0f} sent/s"
                    + "".join(f" | {k} {v:.3f}" for k, v in sharing_values.items()))
        accelerator.log({f"dev/{k}": r["score"] for k, r in dev.items()} | {"dev/mean": score}, step=state.global_step)
        state.stopped_early = bool(t.patience and state.bad_epochs >= t.patience)
        save_checkpoint(accelerator, output_dir, state, t.keep_checkpoints)  # weights checked above
        if state.stopped_early:
            logger.info(f"early stop: no dev improvement for {t.patience} epochs (best epoch {state.best_epoch})")
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
    logger.info("dev (selected epoch %d):\n%s" % (state.best_epoch, format_table(dev)))
    if test:
        logger.info("test:\n" + format_table(test))
    return results

def loss_weight(indices: list[int], sentences: list[list[str]], world: int, normalization: str) -> float:
    """The factor of one process's summed sentence losses such that DDP's average over ``world`` processes is the
    *global* batch ``indices``' mean loss per sentence (``normalization="sentence"``) or per word (``"token"``:
    a long sentence, whose CRF loss is larger, then weighs no more per word than a short one)."""
    units = len(indices) if normalization == "sentence" else sum(len(sentences[i]) for i in indices)
    return world / units


def _summary(results: dict[str, dict]) -> dict[str, float]:
    return {task: round(r["score"], 4) for task, r in results.items()}
