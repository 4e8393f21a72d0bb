"""Training plugins: small objects that hook into :class:`~sparseshare.recipes.train.TrainingRecipe`'s loop (flair's
``TrainerPlugin`` is the model). A hook receives the recipe, whose state is in attributes (``recipe.state``, the
``TrainState``; ``recipe.tagger``, the unwrapped model; ``recipe.accelerator``; ``recipe.config``), and what the
moment adds. The recipe runs its plugins in list order at each moment:

- ``on_train_start(recipe)``: after the resume, before the first step;
- ``before_optimizer_step(recipe, step)``: the gradients of the step are there (``step.grad_norm``, the all-reduced
  norm), the weights not yet moved: a plugin may stop the run here;
- ``after_step(recipe, step)``: the step is applied, ``recipe.state.global_step`` counts it;
- ``after_epoch(recipe, epoch)``: dev is scored and the selected model saved; the epoch-end checkpoint comes after
  every plugin's ``after_epoch``, so what a plugin sets in ``recipe.state`` is in it (``recipe.state.stopped_early =
  True`` ends the run after this epoch);
- ``on_train_end(recipe)``: after the last epoch, before the dev-selected model is scored on test.

The recipe runs :func:`default_plugins`, then a caller's own (``run_training(..., plugins=[...])``), then
:class:`PeriodicCheckpoint` (so that a step's checkpoint holds what every plugin did at that step), then the
``callbacks``. A plugin that keeps state across steps keeps it in ``recipe.state.plugins`` (a dict saved as JSON
with every checkpoint) or in the model's buffers; anything else starts afresh on ``--resume``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from ..config import Config
from .checkpoints import TrainingDiverged, flat_config, latest_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)


@dataclass
class StepResult:
    """One optimiser step: its tasks and, per task, ``(task, per-sentence losses, loss weight, global sentences,
    local sentences)``."""
    epoch: int  # 0-based
    tasks: list[str]
    per_task: list[tuple]
    loss: float = 0.0  # this process's weighted loss summed over the step's tasks
    grad_norm: float = 0.0  # of the all-reduced gradient, before clipping


@dataclass
class EpochResult:
    epoch: int  # 1-based: the epoch just finished
    dev: dict
    score: float
    improved: bool
    train_loss: float
    values: dict = field(default_factory=dict)  # the strategy's log_values()


class TrainingPlugin:
    """Base class: every hook does nothing."""

    def on_train_start(self, recipe) -> None:
        pass

    def before_optimizer_step(self, recipe, step: StepResult) -> None:
        pass

    def after_step(self, recipe, step: StepResult) -> None:
        pass

    def after_epoch(self, recipe, epoch: EpochResult) -> None:
        pass

    def on_train_end(self, recipe) -> None:
        pass


class DivergenceCheck(TrainingPlugin):
    """Stop before a step would write NaN/inf into the weights: the norm of the all-reduced gradient (the same on
    every process) tells. Under fp16 an overflow is expected now and then: the gradient scaler skips that step."""

    def before_optimizer_step(self, recipe, step):
        t, world = recipe.config.train, recipe.accelerator.num_processes
        if t.mixed_precision == "fp16":
            return
        if math.isfinite(step.grad_norm) and (world > 1 or math.isfinite(step.loss)):
            return
        state, output_dir = recipe.state, recipe.output_dir
        raise TrainingDiverged(
            f"training diverged at step {state.global_step + 1} (epoch {step.epoch + 1}, task "
            f"{' + '.join(map(repr, step.tasks))}): loss {step.loss}, gradient norm {step.grad_norm}; the step was not "
            f"applied. The last good checkpoint is {latest_checkpoint(output_dir) or 'none'} and "
            f"{output_dir / 'model'} holds the model of epoch "
            f"{state.best_epoch if state.best_epoch > 0 else '-'}. Lower train.lr or set train.clip, "
            f"and train again with --overwrite or into another output_dir")


class StrategyHooks(TrainingPlugin):
    """The sharing strategy learns from the step: a router scores its routes with the step's losses (a process
    without sentences passes none), Maximum Roaming moves its masks."""

    def after_step(self, recipe, step):
        sharing = recipe.tagger.sharing
        for task, losses, weight, _, _ in step.per_task:
            sharing.observe_losses(task, losses.detach() if weight else losses.detach()[:0])
        sharing.after_step(recipe.state.global_step)


class PeriodicCheckpoint(TrainingPlugin):
    """A checkpoint every ``train.checkpoint_every`` steps (the epoch end writes its own)."""

    def after_step(self, recipe, step):
        t = recipe.config.train
        if recipe.state.global_step % t.checkpoint_every == 0:
            save_checkpoint(recipe.accelerator, recipe.output_dir, recipe.state, t.keep_checkpoints, recipe.tagger)


class EarlyStopping(TrainingPlugin):
    """``train.patience`` epochs without a better dev score end the run (0: never). A run it stopped, resumed with a
    patience that would not have stopped it (``train.patience`` is a resumable change), goes on: its last checkpoint
    is the state after that epoch, which an uninterrupted run with that patience trains on from."""

    key = "early_stopping"

    def on_train_start(self, recipe):
        patience, state = recipe.config.train.patience, recipe.state
        if not state.stopped_early:
            return
        if not state.plugins.get(self.key, {}).get("stopped"):  # another plugin's stop, or an older checkpoint's
            logger.warning(f"this run had stopped after epoch {state.epoch} and trains no more (its checkpoint does "
                           f"not say that early stopping stopped it)")
            return
        if patience and state.bad_epochs >= patience:
            logger.warning(f"this run stopped early after epoch {state.epoch} (no dev improvement for "
                           f"{state.bad_epochs} epochs) and trains no more with train.patience={patience}: raise it "
                           f"(0: no early stopping) to continue it")
            return
        state.stopped_early = False
        state.plugins.pop(self.key)
        logger.info(f"continuing the run that stopped early after epoch {state.epoch}: train.patience is "
                    f"{patience} now")

    def after_epoch(self, recipe, epoch):
        patience, state = recipe.config.train.patience, recipe.state
        if patience and state.bad_epochs >= patience and not state.stopped_early:
            state.stopped_early = True
            state.plugins[self.key] = {"stopped": True}
            logger.info(f"early stop: no dev improvement for {patience} epochs (best epoch {state.best_epoch})")


class Tracker(TrainingPlugin):
    """The experiment tracker of ``train.log_with`` (Accelerate's): the config at the start, the training loss,
    the strategy's values and the dev scores at every epoch end."""

    def on_train_start(self, recipe):
        recipe.accelerator.init_trackers("sparseshare", config=flat_config("", recipe.config.to_dict(), {}))

    def after_epoch(self, recipe, epoch):
        step = recipe.state.global_step
        recipe.accelerator.log({"train/loss": epoch.train_loss, **epoch.values}, step=step)
        recipe.accelerator.log({f"dev/{k}": r["score"] for k, r in epoch.dev.items()} | {"dev/mean": epoch.score},
                               step=step)

    def on_train_end(self, recipe):
        # Not accelerator.end_training(): it also destroys the process group, and a pipeline (the sparse recipe)
        # trains several times in one process. The CLI destroys the group when the command is done.
        for tracker in recipe.accelerator.trackers:
            tracker.finish()


class StepCallbacks(TrainingPlugin):
    """``callback(global_step)`` after every step (tests interrupt a run mid-epoch with one)."""

    def __init__(self, callbacks):
        self.callbacks = list(callbacks)

    def after_step(self, recipe, step):
        for callback in self.callbacks:
            callback(recipe.state.global_step)


def default_plugins(config: Config) -> list[TrainingPlugin]:
    """The recipe's own plugins that run before a caller's (the step checkpoint runs after them: see
    :class:`~sparseshare.recipes.train.TrainingRecipe`)."""
    from .progress import tracker_name

    return [DivergenceCheck(), StrategyHooks(), EarlyStopping(), *([Tracker()] if tracker_name(config) else [])]


__all__ = ["DivergenceCheck", "EarlyStopping", "EpochResult", "PeriodicCheckpoint", "StepCallbacks", "StepResult",
           "StrategyHooks", "Tracker", "TrainingPlugin", "default_plugins"]

