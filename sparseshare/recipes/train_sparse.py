"""The sparse-sharing recipe, read top to bottom in :func:`run_sparse`:

1. warm-up: a short hard-sharing run; its weights are the rewind point (late resetting). With
   ``sparse.warmup_epochs: 0`` the rewind point is the initialisation (classic lottery ticket);
2. mask search per task by pruning (one global threshold across the prunable tensors, over |w|; with
   ``sparse.criterion: change`` over |w - w_rewind|, with ``learned`` over scores the round learns), giving subnets
   of density ``(1 - prune_fraction)^r`` for rounds r = 0..R:
   - ``sparse.search: iterative`` (Sun et al.): round r trains its subnet from the rewind point, then
     removes ``prune_fraction`` of the surviving weights by the criterion;
   - ``sparse.search: oneshot``: round 0 trains the dense network from the rewind point to convergence (or,
     with ``sparse.dense_models``, is a single-task model fine-tuned from the same checkpoint);
     every later round prunes that trained network to its density and scores it on dev without
     retraining (seconds instead of a training run per round);
3. subnet selection per task on dev (with ``sparse.random_masks``, the control: each selected mask is
   replaced by a random one keeping as many weights per tensor);
4. joint training of all tasks, each through its mask, from the rewind point (with ``model.private_embedder``,
   each task's own copy of the embedder parts starts from the rewind point's one shared embedder: the warm-up
   and the search run one network, as without it);
5. the report: dev/test scores, densities, overlap ratios, parameter counts, the search's cost.

Every stage writes into ``output_dir`` and is skipped when its results are already there, so an
interrupted pipeline continues where it stopped (a round resumes from its own checkpoints)::

    warmup/            hard-sharing run (model/ is the rewind point), or init/ with warmup_epochs 0
    search/<task>/round_<r>/   mask.safetensors, the round's run (model/, results.json), round.json
    masks.safetensors  the selected mask per task
    joint/             the joint run; joint/model is the final model (masks.safetensors inside)
    report.json, report.md, overlap.png
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import set_seed
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..config import Config, ModelConfig, build_dataclass, load_config, upgrade_saved_model_config
from ..config import task_names as config_task_names
from ..errors import ConfigError
from ..encoders import encoder_kind
from ..evaluation import evaluate
from ..files import atomic_path, write_json_atomically
from ..logs import EVERY_PROCESS, VERBOSITY_VARIABLE, messages_to
from ..model import MultiTaskTagger
from ..run_folder import check_run_folder
from ..training.claim import claimed_output_dir
from ..training.data import TaskData, build_model, check_input_files, load_task_data, run_inputs, task_names
from ..training.distillation import check_teachers
from ..sharing.masks import (MaskError, check_masks, density, draw_overlap, format_report, load_masks,
                             model_statistics, prune_by_magnitude, random_masks_like, save_masks)
from ..sharing.base import STRATEGIES
from ..sharing.sparse import score_name
from ..sharing.private_embedder import PRIVATE_PARTS, copies_of_shared_parts, private_owners
from ..training.threads import use_training_threads
from .train import run_training


logger = logging.getLogger(__name__)

# What the pipeline writes into its output_dir (removed by --overwrite; other files there are left alone).
PIPELINE_OUTPUTS = ("report.json", "report.md", "overlap.png", "joint", "masks.safetensors", "search", "init",
                    "warmup", "config.yaml")


def run_sparse(config: Config, resume: bool = False, log=None, command: str | None = None,
               overwrite: bool = False, config_file: str | Path | None = None) -> dict:
    """Run (or with ``resume``, continue; with ``overwrite``, start again) the pipeline in ``config.output_dir``.
    Under a distributed launch the warm-up and the joint training are data-parallel, while each process searches
    its own tasks. Everything the stages read is checked before the first stage starts; no file the pipeline reads
    (``config_file``, the YAML file the config came from, among them) is deleted or replaced; a full disk ends it
    with a :class:`~sparseshare.run_folder.DiskFullError` naming ``output_dir``. ``log``, a callable, receives the
    messages instead of the ``sparseshare`` logger's default handler (:mod:`sparseshare.logs`)."""
    with messages_to(log):
        return _run_sparse(config, resume, command, overwrite, config_file)


def _run_sparse(config: Config, resume: bool, command: str | None, overwrite: bool,
                config_file: str | Path | None) -> dict:
    if config.model.sharing != "sparse":
        raise ValueError(f"config key 'model.sharing' must be 'sparse' for the sparse recipe, got {config.model.sharing!r}")
    # the same process group the training recipe's Accelerator (run_training) joins (cpu=True: see .train)
    state = PartialState(cpu=not torch.accelerator.is_available())
    if state.device.type == "cpu":
        logger.info(f"{use_training_threads(config.train.threads)} CPU threads per process")
    out = Path(config.output_dir)
    check_input_files(config)
    inputs = run_inputs(config, config_file)
    check_run_folder(out, resume, overwrite, has_checkpoint=_has_stage_outputs(out), outputs=PIPELINE_OUTPUTS,
                     done_marker="report.json", probe_lock=True, inputs=inputs, config=config.to_dict())
    data = load_task_data(config)  # corpora and vectors are read (and checked) before anything is written
    set_seed(config.train.seed)
    template = build_model(one_network(config), data)  # fixes the vocabulary and the initialisation for every stage
    given_masks = check_pipeline_inputs(config, template)
    with claimed_output_dir(config, state, resume=resume, overwrite=overwrite, inputs=inputs, outputs=PIPELINE_OUTPUTS,
                            done_marker="report.json", has_checkpoint=lambda: _has_stage_outputs(out)):
        return _run_pipeline(config, state, out, data, template, given_masks, command)


def _has_stage_outputs(out: Path) -> bool:
    """Whether a stage of the pipeline has written into ``out``: what a resumed pipeline continues (its config.yaml
    alone is not a run's, see run_folder.check_inputs_kept)."""
    return any((out / name).exists() for name in PIPELINE_OUTPUTS if name != "config.yaml")


def check_pipeline_inputs(config: Config, template: MultiTaskTagger) -> dict | None:
    """What a later stage reads, checked before the first stage (a mismatch would otherwise surface after the warm-up
    and the search): the teachers of ``train.distill_from`` fit the run's tasks (by their names: a task file's
    ``name:``, not its path), as their config.json and labels.json say (only the joint stage loads their weights);
    ``sparse.masks`` holds a fitting mask for every task. Returns those masks (None without ``sparse.masks``)."""
    check_teachers(config.train.distill_from, template)
    check_dense_models(config, template)
    unknown = [task for task in config.train.task_weights if task not in template.tasks]
    if unknown:  # the warm-up and the joint stage would refuse them, after the stages before them
        raise ConfigError(f"config key 'train.task_weights': task(s) {unknown} are not among the run's tasks "
                          f"{list(template.tasks)}")
    if config.model.sparse.mask_scores:
        raise ConfigError("config key 'model.sparse.mask_scores' is what the pipeline sets for the search rounds of "
                          "sparse.criterion: learned; the joint model reads no scores: leave it false")
    return _given_masks(config, template) if config.sparse.masks else None


def check_dense_models(config: Config, template: MultiTaskTagger) -> None:
    """Each folder of ``sparse.dense_models`` is a model of that task, fine-tuned from the run's checkpoint (the one
    its config.json names), whose encoder has the run's prunable tensors with their shapes (read from the file's
    header: nothing is loaded yet)."""
    prunable = template.sharing.prunable()
    ours = encoder_kind(config.model.encoder).checkpoint(config.model)
    for task, folder in config.sparse.dense_models.items():
        key = f"config key 'sparse.dense_models.{task}'"
        if task not in template.tasks:
            raise ConfigError(f"{key}: {task!r} is not one of the run's tasks {list(template.tasks)}")
        weights, labels, saved = (Path(folder) / name for name in ("model.safetensors", "labels.json", "config.json"))
        if not weights.is_file() or not labels.is_file() or not saved.is_file():
            raise ConfigError(f"{key}: {folder} is not a model folder (no model.safetensors, labels.json or "
                              f"config.json)")
        if task not in json.loads(labels.read_text()):
            raise ConfigError(f"{key}: the model in {folder} has no task {task!r}")
        try:  # the model section only: the checkpoint it started from
            model = build_dataclass(ModelConfig, upgrade_saved_model_config(json.loads(saved.read_text())["model"]),
                                    "model")
            started_from = encoder_kind(model.encoder).checkpoint(model)
        except (ValueError, TypeError, KeyError) as err:
            raise ConfigError(f"{key}: {saved} has no readable model section ({err})") from None
        if model.encoder != config.model.encoder or started_from != ours:
            raise ConfigError(f"{key}: the model in {folder} was fine-tuned from {started_from!r} (encoder "
                              f"{model.encoder!r}), not from the run's checkpoint {ours!r}: its change from the "
                              f"rewind point means nothing here")
        with safe_open(str(weights), "pt") as file:
            shapes = {name: tuple(file.get_slice(name).get_shape()) for name in file.keys()}
        for name, parameter in prunable.items():
            if shapes.get(f"sharing.encoder.{name}") != tuple(parameter.shape):
                raise ConfigError(f"{key}: the model in {folder} has no encoder tensor {name!r} of shape "
                                  f"{tuple(parameter.shape)}, which the run's encoder has (train it with the run's "
                                  f"model settings)")


def _run_pipeline(config: Config, state: PartialState, out: Path, data: dict[str, TaskData],
                  template: MultiTaskTagger, given_masks: dict | None, command: str | None) -> dict:
    tasks = list(data)  # the tasks' names (a task file's name:), which the stages' folders and masks are named by
    # 1. The rewind point.
    if given_masks is not None:
        masks, search, rewind = given_masks, {}, None
        masks_file = config.sparse.masks
        logger.info(f"masks from {masks_file}: skipping warm-up and search")
    else:
        rewind = warm_up(config, data, template, out / "warmup")

        # 2-3. Mask search and selection. Tasks are independent here: a distributed launch gives each
        # process its own tasks instead of searching every task data-parallel.
        if state.num_processes > 1:
            search = search_distributed(config, state, out)
        else:
            search = {}
            for task in tasks:
                search[task] = search_masks(config, data[task], template, rewind, out / "search" / task)
                write_json_atomically(out / "search" / task / SEARCH_DONE, search[task])
        masks = {task: select_mask(config, search[task], out / "search" / task) for task in tasks}
        if config.sparse.random_masks:
            masks = random_masks_like(masks, seed=config.train.seed)
            logger.info("control: each selected mask replaced by a random mask of the same density per tensor")
        masks_file = str(out / "masks.safetensors")
        if state.is_main_process:
            save_masks(masks, masks_file)

    # 4. Joint training through the masks; test is evaluated once, on the dev-selected joint model.
    joint_config = dataclasses.replace(config, output_dir=str(out / "joint"))
    if config.sparse.distill:  # BAM!'s teachers: each task's dense network from its search (round 0)
        teachers = {task: str(dense_network(config, out / "search" / task)) for task in tasks}
        joint_config = dataclasses.replace(joint_config, train=dataclasses.replace(
            config.train, distill_from={**teachers, **config.train.distill_from}))

    def build_joint(cfg, task_data):
        parts = PRIVATE_PARTS[cfg.model.private_embedder]
        if parts:  # each owner's copy of the parts starts from the one shared embedder of the rewind point
            owners, keep_shared = private_owners(cfg.model, tasks)
            start = copies_of_shared_parts(template.state_dict() if rewind is None else rewind, parts, owners,
                                           keep_shared)
            model = _model_like(template, cfg.model, tasks, start)
        else:
            model = copy.deepcopy(template)
            if rewind is not None:
                model.load_state_dict({**rewind, **model.sharing.missing_state(rewind, "sharing.")}, strict=True)
        model.sharing.set_masks(masks, where=masks_file)
        return model

    joint = _run_stage(joint_config, data, build_joint, evaluate_test=True, command=command)
    costs = stage_costs(out, tasks, search)

    # 5. The report.
    return write_report(config, out, joint, search, costs, write=state.is_main_process)


# ----------------------------------------------------------------------------------------------
# 1. Warm-up
# ----------------------------------------------------------------------------------------------
def warm_up(config: Config, data: dict[str, TaskData], template: MultiTaskTagger, folder: Path) -> dict:
    """The state dict every search round and the joint training start from."""
    if config.sparse.warmup_epochs == 0:
        init = folder.parent / "init" / "model.safetensors"
        state = PartialState()
        if not init.is_file() and state.is_main_process:  # saved once: a resumed run rewinds to the same weights
            init.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(init) as partial:  # a crash mid-write never leaves a truncated file
                save_file({k: v.contiguous() for k, v in template.state_dict().items()}, str(partial))
        state.wait_for_everyone()
        logger.info("rewind point: the initialisation")
        return load_file(str(init))
    if not (folder / "results.json").is_file():
        logger.info(f"warm-up: hard sharing for {config.sparse.warmup_epochs} epoch(s)")
        warm = _stage_config(config, folder, sharing="hard", epochs=config.sparse.warmup_epochs)

        def build_hard(cfg, task_data):
            return _model_like(template, cfg.model, list(task_data), template.state_dict())

        _run_stage(warm, data, build_hard, evaluate_test=False)
    logger.info(f"rewind point: {folder / 'model'}")
    return load_file(str(folder / "model" / "model.safetensors"))


# ----------------------------------------------------------------------------------------------
# 2. Mask search (iterative magnitude pruning)
# ----------------------------------------------------------------------------------------------
def search_masks(config: Config, task_data: TaskData, template: MultiTaskTagger, rewind: dict,
                 folder: Path) -> list[dict]:
    """Rounds 0..R for one task; returns one record per round (density, dev score, cost)."""
    s, task = config.sparse, task_data.spec.name
    train = search_train_data(config, task_data)
    dense = template.sharing.dense_masks([task])[task]
    mask, records = dense, []
    for r in range(s.rounds + 1):
        round_dir = folder / f"round_{r:02d}"
        done = round_dir / "round.json"
        if done.is_file():
            records.append(json.loads(done.read_text()))
            mask = load_masks(round_dir / "mask.safetensors")[task]
        else:
            round_dir.mkdir(parents=True, exist_ok=True)
            if not (round_dir / "mask.safetensors").is_file():
                save_masks({task: mask}, round_dir / "mask.safetensors")
            mask = load_masks(round_dir / "mask.safetensors")[task]
            if s.search == "oneshot" and (r > 0 or task in s.dense_models):
                record = _score_pruned(config, task_data, dense_network(config, folder), mask, r, rewind)
                if r == 0:  # trained elsewhere: its cost is not the search's
                    record["dense_model"] = s.dense_models[task]
            else:
                record = _train_round(config, train, template, rewind, mask, round_dir, r)
            write_json_atomically(done, record)
            records.append(record)
            how = ("trained" if record["epochs"] else f"the dense network of {record['dense_model']}"
                   if "dense_model" in record else "pruned, not retrained")
            logger.info(f"[{task}] round {r}: density {record['density'] * 100:.1f}%, dev {record['dev']:.2f} "
                        f"({how}, {record['wall_s']:.0f}s)")
        if r < s.rounds:  # the next round's mask
            if s.search == "oneshot":  # the trained dense network pruned to density (1 - p)^(r + 1), one threshold
                trained = load_file(str(dense_network(config, folder) / "model.safetensors"))
                fraction = 1.0 - (1.0 - s.prune_fraction) ** (r + 1)
                mask = prune(s.criterion, trained, rewind, dense, fraction, task)
            else:  # this round's trained (dev-selected) weights lose prune_fraction of the survivors
                trained = load_file(str(round_dir / "model" / "model.safetensors"))
                mask = prune(s.criterion, trained, rewind, mask, s.prune_fraction, task)
    return records


def prune(criterion: str, trained: dict, rewind: dict, mask: dict, fraction: float, task: str) -> dict:
    """``mask`` without ``fraction`` of its weights, by ``sparse.criterion``: the lowest mask scores the round learned
    (``learned``), or the smallest :func:`pruning_scores` in absolute value."""
    if criterion == "learned":
        scores = {name: trained[f"sharing.mask_scores.{score_name(task, name)}"] for name in mask}
        return prune_by_magnitude(scores, mask, fraction, signed=True)
    return prune_by_magnitude(pruning_scores(criterion, trained, rewind, mask), mask, fraction)


def pruning_scores(criterion: str, trained: dict, rewind: dict, names) -> dict[str, torch.Tensor]:
    """What a pruning step ranks the prunable weights ``names`` by (the smallest in absolute value go): the trained
    weights (``magnitude``) or how far training moved them from the rewind point (``change``)."""
    scores = {name: trained[f"sharing.encoder.{name}"] for name in names}
    if criterion == "change":
        scores = {name: w - rewind[f"sharing.encoder.{name}"].to(w.dtype) for name, w in scores.items()}
    return scores


def _train_round(config: Config, train: TaskData, template: MultiTaskTagger, rewind: dict, mask: dict,
                 round_dir: Path, r: int) -> dict:
    """Train the subnet ``mask`` from the rewind point for ``sparse.search_epochs``; its dev-selected score."""
    task = train.spec.name
    round_config = _stage_config(config, round_dir, tasks=[task_entry(config, task)],
                                 epochs=config.sparse.search_epochs)
    results = _run_stage(round_config, {task: train}, _search_builder(template, task, rewind, mask),
                         evaluate_test=False)
    shutil.rmtree(round_dir / "checkpoints", ignore_errors=True)  # the round is complete
    return {"round": r, "density": density(mask), "dev": results["dev"][task]["score"],
            "epochs": results["epochs_run"], "train_sentences": len(train.train_tokens),
            "wall_s": _stage_seconds(round_dir)}


def dense_network(config: Config, folder: Path) -> Path:
    """The model folder of the trained dense network a one-shot search prunes: ``sparse.dense_models``' for the
    task, or the search's own round 0."""
    return Path(config.sparse.dense_models.get(folder.name, folder / "round_00" / "model"))


def _score_pruned(config: Config, task_data: TaskData, trained: Path, mask: dict, r: int, rewind: dict) -> dict:
    """The one-shot search's cheap score: the dev score of the trained dense network with ``mask`` applied,
    without retraining."""
    started = time.perf_counter()
    task = task_data.spec.name
    model = _as_one_task_sparse_model(MultiTaskTagger.from_pretrained(trained), config, task, rewind)
    model.sharing.set_masks({task: mask})
    model.eval()
    score = evaluate(model, {task: task_data.dev}, config.train.eval_batch_size)[task]["score"]
    return {"round": r, "density": density(mask), "dev": score, "epochs": 0, "train_sentences": 0,
            "wall_s": round(time.perf_counter() - started, 1)}


def _as_one_task_sparse_model(model: MultiTaskTagger, config: Config, task: str, rewind: dict) -> MultiTaskTagger:
    """``task`` of ``model`` (its own vocabulary, labels and head; any strategy that keeps one encoder under
    ``sharing.encoder``, such as a single-task run's hard sharing) as a sparse model of the pipeline's model options,
    reading ``rewind``, the rewind point, outside its mask."""
    base = with_strategy(model.config, "sparse")
    sparse = dataclasses.replace(base.sparse, prunable=config.model.sparse.prunable,
                                 outside_mask=config.model.sparse.outside_mask)
    options = dataclasses.replace(base, strategy_options={**base.strategy_options, "sparse": sparse})
    rewind_encoder = {k: v for k, v in rewind.items() if k.startswith("sharing.encoder.")}
    twin = _model_like(model, options, [task], model.state_dict())
    rewind_copy = {k: v for k, v in twin.sharing.missing_state(rewind_encoder, "sharing.").items()
                   if k.startswith("sharing.rewind_weights.")}
    twin.load_state_dict(rewind_copy, strict=False)
    return twin


def search_train_data(config: Config, task_data: TaskData) -> TaskData:
    """The training sentences a search round trains on: the first ``sparse.search_max_train_sentences``, or all."""
    n = config.sparse.search_max_train_sentences
    if not n:
        return task_data
    return dataclasses.replace(task_data, train_tokens=task_data.train_tokens[:n], train_labels=task_data.train_labels[:n],
                               train_word_ids=task_data.train_word_ids[:n])


def search_distributed(config: Config, state: PartialState, out: Path, exchange=None) -> dict[str, list[dict]]:
    """Process k searches tasks k, k + N, ... each in a single-process child: a search round trains one task, which
    must not join the launch's gradient all-reduce (it would average the processes' different tasks). Then the
    processes tell each other through the process group how their searches ended (``exchange``: one
    all-gather, by default over a gloo group of their own whose timeout waits out the longest search, where the
    launch's group would time out after 30 minutes); once every process has finished its own searches (a process
    whose search failed starts no other), a failure anywhere stops every process and names the task. A process that
    dies before the exchange leaves the others waiting until the launcher stops them (accelerate and torchrun stop
    every process when one exits with an error). The records and masks are read from the search folders, so the
    output_dir must be shared by the processes (one machine, or a shared file system)."""
    exchange = exchange or outcome_exchange()
    distributed_env = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                       "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
    env = {k: v for k, v in os.environ.items() if k not in distributed_env and not k.startswith("ACCELERATE_")}
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # the child takes this process's place and threads
    env[VERBOSITY_VARIABLE] = logging.getLevelName(logging.getLogger("sparseshare").level)  # --quiet reaches it
    if torch.cuda.is_available():  # the child sees only this process's GPU
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(torch.cuda.device_count()))))
        env["CUDA_VISIBLE_DEVICES"] = visible.split(",")[state.local_process_index]
    tasks = task_names(config)  # a task file's name:, as the single-process search names its folders
    failed: dict[str, str] = {}
    for task in tasks[state.process_index::state.num_processes]:
        folder = out / "search" / task
        if not (folder / SEARCH_DONE).is_file():
            logger.info(f"[{task}] mask search in process {state.process_index}", extra=EVERY_PROCESS)
            child = subprocess.run([sys.executable, "-m", "sparseshare.recipes.train_sparse", "search", str(out), task],
                                   env=env)
            if child.returncode != 0:
                failed[task] = f"exit code {child.returncode}"
                break
    everyone = exchange(failed)  # one outcome per process, in process order
    if failed:
        task, why = next(iter(failed.items()))
        raise RuntimeError(f"mask search for task {task!r} failed ({why}); see its output above")
    others = sorted(task for outcome in everyone for task in outcome)
    if others:
        raise RuntimeError(f"mask search for task(s) {others} failed in another process; see its output")
    return {task: json.loads((out / "search" / task / SEARCH_DONE).read_text()) for task in tasks}


# how long a process waits for the others' searches: longer than any search, shorter than forever
SEARCH_WAIT = datetime.timedelta(days=7)


def outcome_exchange():
    """The all-gather of :func:`search_distributed`: a gloo group of the launch's processes with its own timeout
    (:data:`SEARCH_WAIT`), made now, while every process is at the same point of the pipeline."""
    group = torch.distributed.new_group(backend="gloo", timeout=SEARCH_WAIT)

    def exchange(outcome: dict) -> list[dict]:
        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, outcome, group=group)
        torch.distributed.destroy_process_group(group)
        return gathered

    return exchange


SEARCH_DONE = "search.json"


def _search_one_task(out: Path, task: str) -> None:
    """The child of :func:`search_distributed`: one task's search, as the single-process pipeline runs it."""
    config = load_config(out / "config.yaml")  # the config the parent process checked and saved
    data = load_task_data(config)
    set_seed(config.train.seed)
    template = build_model(one_network(config), data)
    rewind = warm_up(config, data, template, out / "warmup")
    records = search_masks(config, data[task], template, rewind, out / "search" / task)
    write_json_atomically(out / "search" / task / SEARCH_DONE, records)


def _search_builder(template: MultiTaskTagger, task: str, rewind: dict, mask: dict):
    """A one-task sparse model with the template's vocabulary, the rewind point's weights and ``mask``."""
    def build(cfg, task_data):
        model = _model_like(template, cfg.model, [task], rewind)
        model.sharing.set_masks({task: mask})
        return model

    return build


def one_network(config: Config) -> Config:
    """``config`` with one embedder shared by all tasks: the network of the warm-up and the search, whose stages do
    not depend on ``model.private_embedder`` (a search stage trains one task)."""
    return dataclasses.replace(config, model=dataclasses.replace(config.model, private_embedder="none",
                                                                 private_embedder_tasks=None))


def with_strategy(model: ModelConfig, sharing: str) -> ModelConfig:
    """``model`` with ``model.sharing`` set to ``sharing``, and the options of its former strategy that the new one does
    not read back at their defaults (the warm-up's hard sharing reads no sparse-sharing option)."""
    if sharing == model.sharing:
        return model
    defaults = ModelConfig()
    return dataclasses.replace(model, sharing=sharing,
                               strategy_options={k: v for k, v in model.strategy_options.items() if k != model.sharing},
                               **{key: getattr(defaults, key) for key in STRATEGIES[model.sharing].shared_options
                                  if key not in STRATEGIES[sharing].shared_options})


def _model_like(template: MultiTaskTagger, model_config, tasks: list[str], state: dict) -> MultiTaskTagger:
    """A model for ``tasks`` (possibly with another sharing strategy) with the template's vocabularies and
    labels, holding the weights of ``state`` that it has."""
    lookup = template.featurizer.lookup
    model = MultiTaskTagger(model_config, [template.tasks[t] for t in tasks], template.labels, lookup.vocab,
                            template.featurizer.chars, lookup.lowercase, lookup.normalize_digits)
    wanted = model.state_dict().keys()
    given = {k: v for k, v in state.items() if k in wanted}
    model.load_state_dict({**given, **model.sharing.missing_state(given, "sharing.")}, strict=True)
    return model


# ----------------------------------------------------------------------------------------------
# 3. Selection (dev only)
# ----------------------------------------------------------------------------------------------
def select_mask(config: Config, records: list[dict], folder: Path) -> dict[str, torch.Tensor]:
    s = config.sparse
    if s.select == "density":
        chosen = min(records, key=lambda rec: (abs(rec["density"] - s.density), rec["density"]))
        why = f"closest to density {s.density}"
    else:
        best = max(rec["dev"] for rec in records)
        ties = [rec for rec in records if rec["dev"] >= best - s.select_tolerance]
        chosen = min(ties, key=lambda rec: rec["density"])
        why = f"best dev {best:.2f}" + (f" (within {s.select_tolerance} counts as a tie; sparsest wins)"
                                         if s.select_tolerance else "")
    task = folder.name
    logger.info(f"[{task}] selected round {chosen['round']}: density {chosen['density'] * 100:.1f}%, dev {chosen['dev']:.2f}; {why}")
    return load_masks(folder / f"round_{chosen['round']:02d}" / "mask.safetensors")[task]


def _given_masks(config: Config, template: MultiTaskTagger) -> dict:
    """The masks of ``sparse.masks`` for the run's tasks, checked against the model. The file may hold masks of
    more tasks than the run trains, so ``SparseSharing.load_files`` (a model folder's own masks.safetensors: exactly
    the model's tasks) does not apply, and the joint stage's ``prepare_training`` takes what the file has: a task
    without a mask is refused here, naming the file, before the first stage."""
    masks = load_masks(config.sparse.masks)
    tasks = list(template.tasks)  # by name (a task file's name:), as masks are saved
    missing = [t for t in tasks if t not in masks]
    if missing:
        raise MaskError(f"{config.sparse.masks}: no mask for task(s) {missing}")
    masks = {t: masks[t] for t in tasks}
    check_masks(masks, template.sharing.prunable(), where=config.sparse.masks)
    return masks


# ----------------------------------------------------------------------------------------------
# 5. Report
# ----------------------------------------------------------------------------------------------
def write_report(config: Config, out: Path, joint: dict, search: dict, costs: dict, write: bool = True) -> dict:
    model = MultiTaskTagger.from_pretrained(out / "joint" / "model")
    stats = model_statistics(model)
    tasks = list(model.tasks)
    report = {"tasks": tasks, "seed": config.train.seed, "dev": _scores(joint["dev"]),
              "test": _scores(joint["test"]), "selected_epoch": joint["selected_epoch"], **stats,
              "search": search, "cost_s": costs,
              "random_masks": config.sparse.random_masks,
              "search_budget": {"search": config.sparse.search, "criterion": config.sparse.criterion,
                                "rounds": config.sparse.rounds,
                                "epochs_per_round": config.sparse.search_epochs,
                                "prune_fraction": config.sparse.prune_fraction,
                                "train_sentences": config.sparse.search_max_train_sentences}}
    if write:
        draw_overlap(model.sharing.masks, out / "overlap.png")
    text = [f"sparse sharing: {', '.join(tasks)} (seed {config.train.seed})",
            "dev:  " + ", ".join(f"{t} {v:.2f}" for t, v in report["dev"].items()),
            "test: " + ", ".join(f"{t} {v:.2f}" for t, v in report["test"].items()),
            format_report(model.sharing.masks, stats["parameters"]),
            "cost (s): " + ", ".join(f"{k} {v}" for k, v in costs.items())]
    for task, records in search.items():
        text.append(f"search {task}: " + "; ".join(f"r{rec['round']} {rec['density'] * 100:.1f}% dev {rec['dev']:.2f}"
                                                   for rec in records))
    if write:
        (out / "report.md").write_text("\n".join(text) + "\n")
        write_json_atomically(out / "report.json", report)  # last: report.json marks the pipeline as finished
    logger.info("\n".join(text))
    logger.info(f"report: {out / 'report.json'}, {out / 'report.md'}, {out / 'overlap.png'}")
    return report


def _scores(results: dict) -> dict[str, float]:
    return {task: r["score"] for task, r in results.items()}


# ----------------------------------------------------------------------------------------------
# Stages share one way of running
# ----------------------------------------------------------------------------------------------
def task_entry(config: Config, name: str) -> str:
    """The entry of ``config.tasks`` (a built-in task's name or a task file's path) of the task named ``name``: a
    stage's config lists its tasks as the pipeline's config does, so that it loads them the same way."""
    return dict(zip(task_names(config), config.tasks))[name]


def _stage_config(config: Config, folder: Path, sharing: str | None = None, tasks: list[str] | None = None,
                  epochs: int | None = None) -> Config:
    """The config of a warm-up or search stage (one network: see :func:`one_network`)."""
    model = with_strategy(one_network(config).model, sharing or config.model.sharing)
    if model.sharing == "sparse" and config.sparse.criterion == "learned":  # a search round learns its mask scores
        model = dataclasses.replace(model, strategy_options={
            **model.strategy_options, "sparse": dataclasses.replace(model.sparse, mask_scores=True)})
    # a stage's own budget: no early stopping inside a few epochs, selection on dev as always; distillation
    # (train.distill_from, sparse.distill) is the joint training's; a search round trains one task, which no
    # sampling weight concerns
    train = dataclasses.replace(config.train, epochs=epochs or config.train.epochs, patience=0, distill_from={},
                                distill_weight=None, task_weights={} if tasks else config.train.task_weights,
                                epoch_length="batches" if tasks else config.train.epoch_length)
    data = config.data
    if tasks:  # the corpus folders of a one-task stage's task only (config.validate refuses entries of other tasks)
        names = config_task_names(tasks)
        data = dataclasses.replace(data, task_dirs={t: d for t, d in data.task_dirs.items() if t in names},
                                   hub_paths={t: d for t, d in data.hub_paths.items() if t in names})
    return dataclasses.replace(config, output_dir=str(folder), model=model, tasks=tasks or config.tasks, train=train,
                               data=data)


STAGE_TIME = "stage_time.json"


def _run_stage(config: Config, data: dict[str, TaskData], build, evaluate_test: bool,
               command: str | None = None) -> dict:
    """One training run of the pipeline; skipped when finished, resumed from its checkpoints when not.
    Its wall time, summed over resumptions, goes to ``stage_time.json``."""
    folder = Path(config.output_dir)
    if (folder / "results.json").is_file():
        return json.loads((folder / "results.json").read_text())
    started = time.perf_counter()
    # resume=True: the folder only ever holds this stage's own run, continued from its newest checkpoint (or
    # started again when an interruption came before the first one)
    results = run_training(config, resume=True, data=data, build=build, evaluate_test=evaluate_test,
                           command=command)
    if PartialState().is_main_process:
        write_json_atomically(folder / STAGE_TIME, {"seconds": round(_stage_seconds(folder) + time.perf_counter() - started, 1)})
    return results


def _stage_seconds(folder: Path) -> float:
    path = folder / STAGE_TIME
    return json.loads(path.read_text())["seconds"] if path.is_file() else 0.0


def stage_costs(out: Path, tasks: list[str], search: dict[str, list[dict]]) -> dict[str, float]:
    """Wall seconds of the training stages (summed over resumptions; data loading not included)."""
    costs = {"warmup_s": _stage_seconds(out / "warmup")}
    costs.update({f"search_{task}_s": round(sum(rec["wall_s"] for rec in search.get(task, [])), 1) for task in tasks})
    costs["joint_s"] = _stage_seconds(out / "joint")
    costs["total_s"] = round(sum(costs.values()), 1)
    return costs


if __name__ == "__main__":  # python -m sparseshare.recipes.train_sparse search OUTPUT_DIR TASK (see search_distributed)
    if len(sys.argv) != 4 or sys.argv[1] != "search":
        raise SystemExit("usage: python -m sparseshare.recipes.train_sparse search OUTPUT_DIR TASK")
    _search_one_task(Path(sys.argv[2]), sys.argv[3])
