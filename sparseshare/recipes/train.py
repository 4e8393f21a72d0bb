"""The training recipe, read top to bottom in :meth:`TrainingRecipe.run`: Accelerate -> data and model -> (lock,
resume checks) -> optimiser and schedule -> resume from a checkpoint -> the epoch loop -> dev selection and early
stopping -> the dev-selected model evaluated once on test -> results.json. ``sparseshare train`` and
``recipes/train.py`` run it through :func:`run_training`; the sparse recipe (:mod:`.train_sparse`) runs it once per
stage.

The components it assembles are the library's: :mod:`sparseshare.training` (data, checkpoints, progress, the
plugins that hook into the loop), :mod:`sparseshare.optim`, :mod:`sparseshare.evaluation`.

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
from ..training.checkpoints import (STATE_FILE, TrainState, check_finite, check_random_states, latest_checkpoint,
                                    recover_interrupted_saves, save_checkpoint, save_model_atomically)
from ..training.claim import claimed_output_dir
from ..training.data import (TaskData, add_word_ids, build_model, check_input_files, load_task_data,
                             run_inputs)
from ..training.distillation import TeacherTargets, check_teachers, gold_weight
from ..training.plugins import EpochResult, PeriodicCheckpoint, StepCallbacks, StepResult, default_plugins
from ..training.progress import progress_bar, tracker_name
from ..training.threads import use_training_threads


logger = logging.getLogger(__name__)

def run_training(config: Config, resume: bool = False, callbacks=(), log=None, *, data=None, build=None,
                 evaluate_test: bool = True, command: str | None = None, overwrite: bool = False,
                 config_file: str | Path | None = None, plugins=()) -> dict:
    """Train, select on dev, evaluate test once. Returns the results written to ``results.json``.

    ``callbacks`` are called as ``callback(global_step)`` after every optimisation step (tests use one to
    interrupt a run mid-epoch); ``plugins`` (:mod:`sparseshare.training.plugins`) hook into the loop after the
    recipe's own. Pipelines (the sparse recipe) pass already loaded ``data``, a
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
        recipe = TrainingRecipe(config, data=data, build=build, evaluate_test=evaluate_test, command=command,
                                plugins=plugins, callbacks=callbacks)
        return recipe.run(resume=resume, overwrite=overwrite, config_file=config_file)


class TrainingRecipe:
    """One training run, as torchtune shapes its recipes: :meth:`run` calls the ``_setup_*`` steps, :meth:`train`
    and :meth:`_finish` in order; the run's state lives in attributes (``accelerator``, ``data``, ``model``, ``tagger``,
    ``optimizer``, ``scheduler``, ``state``). Checkpoints, early stopping, the tracker, the divergence check and the
    strategy's hooks are plugins (:mod:`sparseshare.training.plugins`)."""

    def __init__(self, config: Config, *, data=None, build=None, evaluate_test: bool = True,
                 command: str | None = None, plugins=(), callbacks=()):
        self.config, self.t, self.output_dir = config, config.train, Path(config.output_dir)
        self.data, self.build, self.evaluate_test, self.command = data, build or build_model, evaluate_test, command
        # a step's checkpoint after every plugin's after_step, before the callbacks (tests crash a run in one)
        self.plugins = [*default_plugins(config), *plugins, PeriodicCheckpoint(),
                        *([StepCallbacks(callbacks)] if callbacks else [])]

    def run(self, *, resume: bool, overwrite: bool, config_file: str | Path | None) -> dict:
        validate(self.config)  # load_config validated already; a Config built in Python had no such check
        check_input_files(self.config)
        inputs = run_inputs(self.config, config_file)
        self._setup_accelerator()
        # a quick look before the (slow) data loading; checked again under the lock
        check_run_folder(self.output_dir, resume, overwrite, latest_checkpoint(self.output_dir) is not None,
                         probe_lock=True, inputs=inputs, config=self.config.to_dict())
        self._setup_data()
        self._setup_model()
        # One run writes into output_dir at a time; the lock is held until the run ends.
        with claimed_output_dir(self.config, self.accelerator, resume=resume, overwrite=overwrite, inputs=inputs,
                                outputs=RUN_OUTPUTS, done_marker="results.json",
                                has_checkpoint=lambda: latest_checkpoint(self.output_dir) is not None,
                                repair=lambda: recover_interrupted_saves(self.output_dir)):
            checkpoint = latest_checkpoint(self.output_dir)  # none after --overwrite removed them
            if resume and checkpoint is None:
                logger.info(f"--resume: no checkpoint under {self.output_dir / 'checkpoints'}, starting from scratch")
            self._setup_optimizer()
            self._setup_scheduler()
            self._prepare()
            self._resume(checkpoint)
            self.train()
            return self._finish()

    # -- setup ---------------------------------------------------------------------------------------------------
    def _setup_accelerator(self) -> None:
        """The global batch is split across processes; heads a step does not use get no gradient."""
        t = self.t
        self.accelerator = Accelerator(
            # Without a GPU, `accelerate launch --multi_gpu` starts plain CPU processes: cpu=True makes
            # Accelerate join them into one gloo process group instead of training N independent copies.
            cpu=not torch.accelerator.is_available(),
            mixed_precision=t.mixed_precision,
            log_with=tracker_name(self.config),
            project_dir=str(self.output_dir),
            # The global batch is split across processes by hand below; declaring split_batches also makes
            # the prepared LR scheduler step once per optimisation step (not once per process).
            dataloader_config=DataLoaderConfiguration(split_batches=True),
            # Our buffers are constants (e.g. position ids; no BatchNorm): no need to broadcast them every step.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)],
        )
        if self.accelerator.device.type == "cpu":
            logger.info(f"{use_training_threads(t.threads)} CPU threads per process")
        # device_specific: each rank draws its own dropout masks (DDP broadcasts rank 0's initial weights).
        set_seed(t.seed, device_specific=True)

    def _setup_data(self) -> None:
        """Corpora and vectors are read (and checked) before anything is written."""
        self.data = self.data if self.data is not None else load_task_data(self.config)
        unknown = [task for task in self.t.task_weights if task not in self.data]
        if unknown:  # by the tasks' names (a task file's name:), known once the tasks are read
            raise ConfigError(f"config key 'train.task_weights': task(s) {unknown} are not among the run's tasks "
                              f"{list(self.data)}")
        self.dev_sets = {name: d.dev for name, d in self.data.items()}
        for name, d in self.data.items():
            if d.spec.metric == "span_f1" and all(label == "O" for labels in d.dev["labels"] for label in labels):
                logger.warning(f"task {name!r}: its dev set has no spans (every label is O), so its F1 is 0 whatever "
                               f"the model predicts: it cannot tell one epoch from another")
        batches_per_task = {n: math.ceil(len(d.train_tokens) / self.t.batch_size) for n, d in self.data.items()}
        self.steps_per_epoch = epoch_steps(batches_per_task, self.t.task_weights, self.t.epoch_length, self.t.schedule)

    def _setup_model(self) -> None:
        config, t = self.config, self.t
        model = self.build(config, self.data)
        model.sharing.initialize(t.seed)  # e.g. Maximum Roaming's initial masks; a resumed checkpoint replaces them
        add_word_ids(model, self.data)
        model.sharing.prepare_training(config, list(self.data))  # e.g. sparse sharing's masks (sparse.masks)
        check_teachers(t.distill_from, model)  # their config.json and labels.json; loaded when training starts
        logger.info(f"model: {config.model.encoder} encoder, {config.model.sharing} sharing, {config.model.head} "
                    f"heads, {sum(p.numel() for p in model.parameters()):,} parameters")
        self.model = model

    def _setup_optimizer(self) -> None:
        self.optimizer = build_optimizer(self.config, self.model, self.accelerator.device.type)

    def _setup_scheduler(self) -> None:
        """Sized by the (fixed) number of steps per epoch."""
        self.scheduler = build_scheduler(self.config, self.optimizer, self.steps_per_epoch)

    def _prepare(self) -> None:
        """Accelerate wraps the model (DDP), the optimiser and the schedule."""
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(self.model, self.optimizer,
                                                                              self.scheduler)
        self.tagger: MultiTaskTagger = self.accelerator.unwrap_model(self.model)
        inner = self.optimizer.optimizer
        self.masked_optimizer = inner if isinstance(inner, (MaskedSGD, MaskedAdamW)) else None
        self.per_task_optimizer = inner if isinstance(inner, PerTaskState) else None

    def _resume(self, checkpoint: Path | None) -> None:
        """From the newest complete checkpoint, if any."""
        self.state = TrainState()
        if checkpoint is None:
            return
        accelerator = self.accelerator
        expected = ["model.safetensors", "optimizer.bin", "scheduler.bin",
                    f"random_states_{accelerator.process_index}.pkl"]
        missing = [name for name in expected if not (checkpoint / name).is_file()]
        if missing:
            raise FileNotFoundError(f"checkpoint {checkpoint} is incomplete: missing {', '.join(missing)} (delete "
                                    f"the folder to resume from the previous checkpoint, if train.keep_checkpoints "
                                    f"kept one)")
        check_random_states(checkpoint, accelerator.process_index)
        accelerator.load_state(str(checkpoint))
        self.state = TrainState(**json.loads((checkpoint / STATE_FILE).read_text()))
        logger.info(f"resumed from {checkpoint} (epoch {self.state.epoch}, step {self.state.step_in_epoch} of that "
                    f"epoch)")

    # -- training ------------------------------------------------------------------------------------------------
    def train(self) -> None:
        t, state = self.t, self.state
        for plugin in self.plugins:
            plugin.on_train_start(self)
        # Teachers' soft targets (distillation), computed before the first step; the same on every process.
        self.teachers = (TeacherTargets.compute(t.distill_from, self.data, self.tagger, t.eval_batch_size)
                         if t.distill_from else None)
        self.total_steps = t.epochs * self.steps_per_epoch
        self.step_masks = StepMasks(self.tagger.sharing.parameter_masks) if self.masked_optimizer is not None else None
        # Epochs (none left when resuming a run that had already stopped early).
        for epoch in range(state.epoch, t.epochs if not state.stopped_early else state.epoch):
            self._train_epoch(epoch)
            if state.stopped_early:  # early stopping, or another plugin
                break
        # every process has trained before the dev-selected model is read back
        self.accelerator.wait_for_everyone()
        for plugin in self.plugins:
            plugin.on_train_end(self)

    def _train_epoch(self, epoch: int) -> None:
        t, state, data = self.t, self.state, self.data
        rng = np.random.default_rng([t.seed, epoch])
        batches = {name: bucketed_batches([len(s) for s in d.train_tokens], t.batch_size, rng)
                   for name, d in data.items()}
        plan = step_plan(t.schedule, batches, rng, t.temperature, t.task_weights, t.epoch_length)
        progress = progress_bar(self.config, self.accelerator, len(plan), state.step_in_epoch, epoch)
        self.model.train()
        started, sentences_seen, loss_sum, steps_run = time.perf_counter(), 0, 0.0, 0
        for step, items in enumerate(plan):
            if step < state.step_in_epoch:
                continue  # already trained before the interruption
            result = self._train_step(epoch, step, items)
            sentences_seen += sum(entry[3] for entry in result.per_task)
            trained = [float(losses.detach().sum()) / count for _, losses, weight, _, count in result.per_task
                       if weight]
            if trained:  # this process's mean sentence loss (rank 0's; joint: the mean over the step's tasks)
                loss_sum, steps_run = loss_sum + sum(trained) / len(trained), steps_run + 1
            if progress is not None:
                progress.update(1)
                progress.set_postfix(task="+".join(result.tasks), loss=f"{loss_sum / max(1, steps_run):.3f}")
            for plugin in self.plugins:
                plugin.after_step(self, result)
        if progress is not None:
            progress.close()
        self._end_epoch(epoch, sentences_seen / max(time.perf_counter() - started, 1e-9),
                        loss_sum / max(1, steps_run))

    def _train_step(self, epoch: int, step: int, items: list) -> StepResult:
        """One optimiser step on one task's batch, or on every task's (the joint schedule)."""
        t, state, accelerator, model = self.t, self.state, self.accelerator, self.model
        rank, world = accelerator.process_index, accelerator.num_processes
        result = StepResult(epoch, [task for task, _ in items], [])
        for position, (task, indices) in enumerate(items):
            # This process's slice of the global batch. A process left without sentences still runs a
            # zero-weighted forward/backward so that the gradient all-reduce stays in step.
            local = indices[rank::world]
            d = self.data[task]
            weight = loss_weight(indices, d.train_tokens, world, t.loss_normalization)
            if not local:
                local, weight = indices[:1], 0.0
            batch = self.tagger.featurizer.collate([d.train_tokens[i] for i in local],
                                                   [d.train_labels[i] for i in local],
                                                   [d.train_word_ids[i] for i in local]).to(accelerator.device)
            if self.teachers is not None and task in self.teachers:
                soft = self.teachers.batch(task, local, batch.mask.shape[1], accelerator.device)
                losses = model(batch, task, soft, gold_weight(state.global_step, self.total_steps, t.distill_weight))
            else:
                losses = model(batch, task)
            loss = losses.sum() * weight
            # the gradients of the step's tasks add up; DDP all-reduces them once, after the last task's pass
            # (it allows one forward pass per backward pass, so the tasks' losses are not summed into one)
            with accelerator.no_sync(model) if position < len(items) - 1 else contextlib.nullcontext():
                accelerator.backward(loss)
            result.loss += loss.item()
            result.per_task.append((task, losses, weight, len(indices), len(local)))
        # The norm of the all-reduced gradient (the same on every process; max_norm inf leaves it unchanged).
        result.grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), t.clip or math.inf))
        for plugin in self.plugins:
            plugin.before_optimizer_step(self, result)
        if self.masked_optimizer is not None:  # the weights any of the step's tasks may move
            self.masked_optimizer.set_masks(self.step_masks(result.tasks))
        if self.per_task_optimizer is not None:
            self.per_task_optimizer.set_task(result.tasks[0])  # (the joint schedule is refused with per-task states)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.global_step += 1
        state.step_in_epoch = step + 1
        return result

    def _end_epoch(self, epoch: int, sentences_per_s: float, train_loss: float) -> None:
        """Dev evaluation and model selection (dev only; test is never looked at here). Every process evaluates
        the whole dev set so that all take the same stopping decision."""
        state, tagger = self.state, self.tagger
        dev = evaluate(tagger, self.dev_sets, self.t.eval_batch_size)
        score = mean_score(dev)
        state.epoch, state.step_in_epoch = epoch + 1, 0
        improved = score > state.best_score
        # e.g. Maximum Roaming's progress r(c), routing's epoch map; before the save, so the saved model has this epoch
        sharing_values = tagger.sharing.log_values()
        check_finite(tagger, state)  # before this epoch's model and checkpoint are written
        if improved:
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch + 1, 0
            if self.accelerator.is_main_process:
                save_model_atomically(tagger, self.output_dir / "model",
                                      {"selected_epoch": epoch + 1, "dev": _summary(dev)})
        else:
            state.bad_epochs += 1
        state.history.append({"epoch": epoch + 1, "dev": _summary(dev), "dev_mean": score,
                              "train_sentences_per_s": sentences_per_s,
                              **({"sharing": sharing_values} if sharing_values else {})})
        logger.info(f"epoch {epoch + 1}: dev " + ", ".join(f"{k} {r['score']:.2f}" for k, r in dev.items())
                    + f" | mean {score:.2f}{' (best)' if improved else ''} | {sentences_per_s:.0f} sent/s"
                    + "".join(f" | {k} {v:.3f}" for k, v in sharing_values.items()))
        result = EpochResult(epoch + 1, dev, score, improved, train_loss, sharing_values)
        for plugin in self.plugins:
            plugin.after_epoch(self, result)
        save_checkpoint(self.accelerator, self.output_dir, state, self.t.keep_checkpoints)  # weights checked above

    # -- the end -------------------------------------------------------------------------------------------------
    def _finish(self) -> dict:
        """The dev-selected model, evaluated once on test; results.json marks the run as finished."""
        accelerator, state, t, output_dir = self.accelerator, self.state, self.t, self.output_dir
        best = MultiTaskTagger.from_pretrained(output_dir / "model", device=accelerator.device)
        dev = evaluate(best, self.dev_sets, t.eval_batch_size)
        test_sets = {name: d.test for name, d in self.data.items() if d.test is not None and self.evaluate_test}
        test = evaluate(best, test_sets, t.eval_batch_size)
        results = {"selected_epoch": state.best_epoch, "epochs_run": state.epoch, "stopped_early": state.stopped_early,
                   "dev": dev, "test": test, "history": state.history,
                   "parameters": sum(p.numel() for p in best.parameters()), "num_processes": accelerator.num_processes}
        if accelerator.is_main_process:
            # the model card shows the scores, the command and the config that produced them
            save_model_atomically(best, output_dir / "model", {
                "selected_epoch": state.best_epoch, "dev": _summary(dev), **({"test": _summary(test)} if test else {}),
                **({"command": self.command} if self.command else {}),
                "training_config": self.config.to_dict()})
            write_json_atomically(output_dir / "results.json", results)  # last: it marks the run as finished
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
