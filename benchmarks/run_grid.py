"""Train a grid of benchmark runs over seeds: single-task, hard and sparse sharing on CoNLL-2003, on mixed
corpora (EWT xpos + CoNLL-2000 chunk + CoNLL-2003 NER) and on NER + PP attachment.

    python benchmarks/run_grid.py --seeds 1 2 3 --runs pos chunk ner hard sparse --epochs 8 --parallel 2

Resumable: a finished run (results.json, or report.json for sparse runs) is skipped, an interrupted run
continues from its last checkpoint. Several drivers may work through the same grid at once: each run's
``running.lock`` is held by the driver training it (a ``filelock`` lock: the operating system frees it when the
driver ends, however it ends), and the training holds the run folder's own ``.lock``: a second driver leaves a
run alone while a training that outlived its killed driver holds that lock (it says so, naming the holder). Each run's
wall time (summed over resumptions, and kept up to date every minute, so a killed driver loses at most a minute
of it) is stored in <run>/wall_time.json. Summarise with
``python benchmarks/summarize.py benchmarks/runs/conll03``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sparseshare.run_folder import RunFolderError, RunLock, raise_if_in_use

ROOT = Path(__file__).resolve().parents[1]
# run name -> (config in recipes/configs, overrides). The other corpora reuse the CoNLL-2003 configs'
# model and optimiser and change only the tasks.
MIXED, NER_PP = "tasks=[xpos,chunk2000,ner]", "tasks=[ner,pp]"
ADAM = ["train.optimizer=adamw", "train.lr=0.002", "train.lr_schedule=constant", "model.bilstm.word_dropout=0.05",
        "train.epochs=12", "train.patience=4"]
# Runs on conll03_hard / conll03_sparse take those configs' private embedders (since 202764d / 9309d8b): the
# issue-23 screens below ran before that with one embedder, as their recorded config.yaml say; to compare with
# them, add model.private_embedder=none. Routing and roaming take no private embedders.
SHARED_EMBEDDER = ["model.private_embedder=none"]
# conll03_sparse trains with NER's steps added (since 2026-12-05); the sparse runs recorded before ran round-robin
ROUND_ROBIN = ["train.schedule=round_robin", "train.task_weights={}", "train.epoch_length=batches"]
# bf16 autocast: 1.5x the sentences/s of fp32 at 2 threads on this CPU (avx512_bf16), 1.5x again with two
# one-thread runs side by side (benchmarks/RESULTS.md, "MiniLM training speed"); weights and optimiser stay fp32
MINILM_CONVERGED = ["train.epochs=10", "train.patience=2", "train.mixed_precision=bf16"]
# densities 100%, 70%, ..., 11.8%, scored without retraining; 0.1 dev points count as a tie (the sparser wins)
MINILM_ONESHOT = ["sparse.search=oneshot", "sparse.rounds=6", "sparse.dense_models={pos: <out>/minilm_pos_conv_seed<seed>/model, "
                  "chunk: <out>/minilm_chunk_conv_seed<seed>/model, ner: <out>/minilm_ner_conv_seed<seed>/model}"]
RUNS = {
    "pos": ("conll03_pos", []), "chunk": ("conll03_chunk", []), "ner": ("conll03_ner", []),
    "hard": ("conll03_hard", []), "sparse": ("conll03_sparse", []), "sparse_quick": ("conll03_sparse_quick", []),
    "minilm_ner": ("conll03_minilm_ner", []), "minilm_hard": ("conll03_minilm_hard", []),
    "minilm_sparse": ("conll03_minilm_sparse", []),
    # a softmax head can be exported to transformers (a CRF cannot): the export benchmark's model
    "minilm_ner_softmax": ("conll03_minilm_ner", ["model.head=softmax"]),
    # issue 24: does bf16 autocast cost accuracy? One epoch of single-task NER each way, same seed
    "minilm_ner_1epoch": ("conll03_minilm_ner", ["train.epochs=1"]),
    "minilm_ner_1epoch_bf16": ("conll03_minilm_ner", ["train.epochs=1", "train.mixed_precision=bf16"]),
    "xpos": ("conll03_pos", ["tasks=[xpos]"]), "chunk2000": ("conll03_chunk", ["tasks=[chunk2000]"]),
    "pp": ("conll03_pos", ["tasks=[pp]"]),
    "mixed_hard": ("conll03_hard", [MIXED]), "mixed_sparse": ("conll03_sparse", [MIXED]),
    "nerpp_hard": ("conll03_hard", [NER_PP]), "nerpp_sparse": ("conll03_sparse", [NER_PP]),
    # the other strategies on the hard-sharing model, optimiser and budget (issue 4's comparison). Roaming: 8
    # epochs are ~10.5k steps and each task needs (1 - p) x 400 = 200 updates to visit every unit of a layer, so
    # delta = 40 completes the roaming at ~8k steps and trains the last ~2 epochs on the final masks.
    "hierarchical": ("conll03_hard", ["model.sharing=hierarchical", "model.hierarchical.task_layers={pos: 1}"]),
    "bottom": ("conll03_hard", ["model.sharing=bottom"]),
    "cross_stitch": ("conll03_hard", ["model.sharing=cross_stitch"]),
    # (model.roaming.masked_steps and model.roaming.cut_recurrence, true by default since they exist: a task's steps
    # move only its active units' weights, and its switched-off units take no part in its pass; the recorded roaming
    # runs ran before both)
    "roaming": ("conll03_hard", [*SHARED_EMBEDDER, "model.sharing=roaming", "model.roaming.delta=40"]),
    "roaming_fixed": ("conll03_hard", [*SHARED_EMBEDDER, "model.sharing=roaming", "model.roaming.fixed=true"]),
    "routing": ("conll03_hard", [*SHARED_EMBEDDER, "model.sharing=routing"]),
    # the collaboration reward over the last 8 batches (256 sentences, the official code's window of 256 decisions)
    # instead of all of training
    "routing_window": ("conll03_hard", [*SHARED_EMBEDDER, "model.sharing=routing", "model.routing.history=8"]),
    # issue 25: the collaboration reward counted over the task's own routes (not the others'), a negative one (a
    # diversity bonus: less-used blocks pay), none; on CoNLL-2003 and on NER + PP (where task-dependent routes should
    # pay most)
    **{f"{prefix}routing{suffix}": ("conll03_hard", [*SHARED_EMBEDDER, *tasks, "model.sharing=routing", *change])
       for prefix, tasks in (("", []), ("nerpp_", [NER_PP]))
       for suffix, change in (("_per_task", ["model.routing.collaboration=per_task"]),
                              ("_diverse", ["model.routing.rho=-0.3"]), ("_no_reward", ["model.routing.rho=0"]),
                              # blocks trained one per task for ~1,000 steps (about 2/3 of an epoch of CoNLL-2003's
                              # three tasks) before the router learns; an exploration floor of 0.2 falling to 0 over
                              # the first ~3 epochs
                              ("_warmup", ["model.routing.warmup_steps=1000"]),
                              ("_explore", ["model.routing.exploration=0.2", "model.routing.exploration_steps=4000"]))},
    "nerpp_routing": ("conll03_hard", [*SHARED_EMBEDDER, NER_PP, "model.sharing=routing"]),
    # the paper's other routers: one REINFORCE agent (an MLP over the representation and the task), and a REINFORCE
    # dispatcher over one WPL agent per task; and a differentiable one (per-task logits, straight-through draws)
    **{f"{prefix}routing_{router}": ("conll03_hard", [*SHARED_EMBEDDER, *tasks, "model.sharing=routing",
                                                      f"model.routing.router={router}"])
       for router in ("reinforce", "dispatched", "gumbel", "gumbel_mix") for prefix, tasks in (("", []), ("nerpp_", [NER_PP]))},
    # the per-task warm-up with a collaboration reward that no longer pays for following the other task (none, or
    # a diversity bonus); and the fixed-route baseline the issue asks routing to beat: every task on its own block
    # for the whole run (the warm-up's set routes never end; evaluation follows them since ad767c5,
    # before which it ran along the untrained router's greedy routes: dev PP 0-13% at 1134a8e), the embedder shared
    **{f"{prefix}routing_warmup{suffix}": ("conll03_hard", [*SHARED_EMBEDDER, *tasks, "model.sharing=routing",
                                                            "model.routing.warmup_steps=1000", *change])
       for prefix, tasks in (("", []), ("nerpp_", [NER_PP]))
       for suffix, change in (("_no_reward", ["model.routing.rho=0"]), ("_diverse", ["model.routing.rho=-0.3"]))},
    **{f"{prefix}routing_fixed_per_task": ("conll03_hard", [*SHARED_EMBEDDER, *tasks, "model.sharing=routing",
                                                            f"model.routing.blocks={blocks}",
                                                            "model.routing.warmup_steps=1000000000"])
       for prefix, tasks, blocks in (("", [], 3), ("nerpp_", [NER_PP], 2))},
    # the differentiable router choosing among blocks that first trained one per task (~1,000 steps)
    **{f"{prefix}routing_gumbel_mix_warmup": ("conll03_hard", [*SHARED_EMBEDDER, *tasks, "model.sharing=routing",
                                                              "model.routing.router=gumbel_mix",
                                                              "model.routing.warmup_steps=1000"])
       for prefix, tasks in (("", []), ("nerpp_", [NER_PP]))},
    # the same with the route logits at 10x the model's learning rate: at train.lr they leaned by task (I 0.24 bits)
    # without choosing (entropy 0.87 after 8 epochs)
    **{f"{prefix}routing_gumbel_mix_warmup_logit_lr": ("conll03_hard", [
        *SHARED_EMBEDDER, *tasks, "model.sharing=routing", "model.routing.router=gumbel_mix",
        "model.routing.warmup_steps=1000", "model.routing.logit_lr=0.03"])
       for prefix, tasks in (("", []), ("nerpp_", [NER_PP]))},
    # time-to-accuracy of the single-task BiLSTM-CNN-CRF (issue 13): AdamW at a constant rate with word dropout
    # (Reimers & Gurevych 2017: Adam-family optimisers converge in ~9 epochs where SGD needs ~40), early stopping
    # with patience 4 under a 12-epoch cap; variants change one thing each
    **{f"{task}_adam": (f"conll03_{task}", ADAM) for task in ("pos", "chunk", "ner")},
    "ner_adam_b64": ("conll03_ner", [*ADAM, "train.batch_size=64", "train.lr=0.003"]),
    "ner_adam_linear": ("conll03_ner", [*ADAM, "train.lr=0.003", "train.lr_schedule=linear", "train.patience=0",
                                        "train.epochs=10"]),
    "ner_adam_frozen": ("conll03_ner", [*ADAM, "model.bilstm.freeze_embeddings=true"]),
    # the control of issue 13: the sparse run's selected masks replaced by random masks keeping as many weights
    # per tensor, trained jointly from the same rewind point with the same budget
    "sparse_random": ("conll03_sparse", ["sparse.random_masks=true"]),
    # issue 23 (why multi-task training costs NER): hard sharing with one change each, against "hard"
    "hard_per_task": ("conll03_hard", ["train.optimizer_state=per_task"]),
    "hard_token_loss": ("conll03_hard", ["train.loss_normalization=token"]),
    "hard_frozen_embeddings": ("conll03_hard", ["model.bilstm.freeze_embeddings=true"]),
    "ner_frozen_embeddings": ("conll03_ner", ["model.bilstm.freeze_embeddings=true"]),
    # the embedding tables at lr / 3: with three tasks they then move about as far as in a single-task run
    "hard_embedding_lr": ("conll03_hard", ["train.embedding_lr=0.001"]),
    # NER-weighted task sampling: half of the steps are NER's (POS and chunk a quarter each; an epoch keeps its
    # number of steps). The sparse run's warm-up follows the schedule too, so it searches its own masks
    **{f"{strategy}_ner_weighted": (f"conll03_{strategy}", ["train.schedule=proportional", "train.task_weights={ner: 2}",
                                                            "train.epoch_length=batches"])
       for strategy in ("hard", "sparse")},
    # one optimiser step on the summed losses of a batch of every task (train.schedule=joint), as Maximum Roaming's
    # official code trains: a third of the steps of round-robin, each on every task's gradient
    **{f"{strategy}_joint": (f"conll03_{strategy}", [*ROUND_ROBIN, "train.schedule=joint"])
       for strategy in ("hard", "sparse")},
    # ... and roaming (with its mask moves every 13 joint steps, about as many per epoch as roaming's every 40
    # round-robin steps) and its fixed partition
    "roaming_joint": ("conll03_hard", [*SHARED_EMBEDDER, "model.sharing=roaming", "model.roaming.delta=13",
                                       "train.schedule=joint"]),
    "roaming_fixed_joint": ("conll03_hard", [*SHARED_EMBEDDER, "model.sharing=roaming", "model.roaming.fixed=true",
                                             "train.schedule=joint"]),
    # ... roaming whose moves keep every unit covered (roaming_joint left 12% of the units to no task)
    "roaming_joint_covered": ("conll03_hard", [*SHARED_EMBEDDER, "model.sharing=roaming", "model.roaming.delta=13",
                                               "model.roaming.keep_coverage=true", "train.schedule=joint"]),
    # ... with NER's extra steps added to the epoch, not taken from POS and chunk (each keeps its whole epoch): the
    # default of conll03_sparse since 2026-12-05 (sparse_ner_added is then its "sparse"; sparse_round_robin the
    # default before)
    **{f"{strategy}_ner_added": (f"conll03_{strategy}", ["train.schedule=proportional", "train.task_weights={ner: 2}",
                                                         "train.epoch_length=weighted"])
       for strategy in ("hard", "sparse")},
    "sparse_round_robin": ("conll03_sparse", ROUND_ROBIN),
    # is NER's loss a matter of capacity? The shared BiLSTM 1.5x as wide (2 x 300 per layer) for three tasks, each
    # task's embedder its own as in the shipped hard config
    "hard_hidden300": ("conll03_hard", ["model.bilstm.hidden=300"]),
    # ... or of over-fitting the training sentences, which the shared encoder reads once per task and epoch (three
    # times as often as a single-task encoder)? Multi-task rows gain on dev more than on test, whose names are
    # newer: more word dropout (a training word read as UNK 3x as often) and more dropout between the layers
    "hard_word_dropout15": ("conll03_hard", ["model.bilstm.word_dropout=0.15"]),
    "hard_dropout65": ("conll03_hard", ["model.bilstm.dropout=0.65"]),
    # each task with its own word embeddings and char-CNN (or one of them), the BiLSTM layers shared: is the loss in
    # the shared word representations or in the shared layers above them? (hard_private_embedder ran at a8ddd5e as
    # model.private_embedder=true, which is "all" since)
    "hard_private_embedder": ("conll03_hard", ["model.private_embedder=all"]),
    "hard_private_words": ("conll03_hard", ["model.private_embedder=words"]),
    "hard_private_chars": ("conll03_hard", ["model.private_embedder=chars"]),
    # sparse sharing with a private word table per task (the char-CNN is split by the masks already); its warm-up
    # and search are those of "sparse"
    "sparse_private_words": ("conll03_sparse", ["model.private_embedder=words"]),
    # ... and with a smaller tie tolerance in the dev selection of each task's mask (0.5 keeps NER at 34% where
    # the search's 70% round scored 0.4 dev higher): denser masks for the tasks whose pruning costs dev
    "sparse_private_words_tol25": ("conll03_sparse", ["model.private_embedder=words", "sparse.select_tolerance=0.25"]),
    # hard / sparse sharing with private embedders for NER only: POS and chunk keep sharing theirs (chunk lost
    # 0.3 dev with a word table and char-CNN of its own)
    "hard_private_ner": ("conll03_hard", ["model.private_embedder=all", "model.private_embedder_tasks=[ner]"]),
    "sparse_private_ner": ("conll03_sparse", ["model.private_embedder=words", "model.private_embedder_tasks=[ner]"]),
    # (today's conll03_sparse sets both of those; its recorded runs trained round-robin, the default then: add
    # ROUND_ROBIN's overrides to reproduce them)
    # ... and with its own char-CNN per task too: the masks then cover the BiLSTM only (own warm-up and search)
    # (model.private_embedder_tasks=null: conll03_sparse has given NER alone its own copies since 82a4091)
    "sparse_private_all": ("conll03_sparse", ["model.private_embedder=all", "model.private_embedder_tasks=null",
                                              "model.sparse.prunable=[layers.*.lstm.weight_*]"]),
    # at today's default (NER's steps added): NER owns its word table and its char-CNN, POS and chunk share theirs
    # (the masks cover the BiLSTM only; own warm-up and search). At the default, what NER still loses is on new names
    # made of known words and on names with an UNK word, which the shared char-CNN reads (RESULTS, "Where NER loses")
    "sparse_private_ner_chars": ("conll03_sparse", ["model.private_embedder=all",
                                                    "model.sparse.prunable=[layers.*.lstm.weight_*]"]),
    # distillation (BAM!, teacher annealing): sparse sharing from its own searched dense networks; hard sharing
    # from the single-task runs of the same seed in the same --out folder (run "pos", "chunk", "ner" first)
    "sparse_distill": ("conll03_sparse", ["sparse.distill=true"]),
    "hard_distill": ("conll03_hard", ["train.distill_from={pos: <out>/pos_seed<seed>/model, "
                                      "chunk: <out>/chunk_seed<seed>/model, ner: <out>/ner_seed<seed>/model}"]),
    # issue 24: MiniLM trained until dev stops improving, one stopping rule for all (at most 10 epochs, patience 2):
    # single task, hard sharing, and sparse sharing whose one-shot masks come from the single-task runs of the same
    # seed in the same --out folder (no search training), by each pruning criterion and each reading of the weights
    # outside a task's mask; the random-mask control of change/rewind (LT-SFT's combination)
    **{f"minilm_{task}_conv": ("conll03_minilm_ner", [f"tasks=[{task}]", *MINILM_CONVERGED])
       for task in ("pos", "chunk", "ner")},
    "minilm_hard_conv": ("conll03_minilm_hard", MINILM_CONVERGED),
    **{f"minilm_sparse_{criterion}_{outside}{suffix}": (
        "conll03_minilm_sparse", [*MINILM_CONVERGED, *MINILM_ONESHOT, f"sparse.criterion={criterion}",
                                  f"model.sparse.outside_mask={outside}", *control])
       for criterion in ("magnitude", "change") for outside in ("zero", "rewind")
       for suffix, control in (("", []), ("_random", ["sparse.random_masks=true"]))
       if not control or (criterion, outside) == ("change", "rewind")},
    # ... and by scores learned in the config's own iterative search (3 rounds of 30% on 3,000 sentences per task)
    "minilm_sparse_learned_rewind": ("conll03_minilm_sparse", [*MINILM_CONVERGED, "sparse.criterion=learned",
                                                               "model.sparse.outside_mask=rewind"]),
}
# runs whose warm-up and search are those of another run of the same seed (same config up to the joint
# stage, so recomputing them would give the same files): copied from it when it has finished its search
SHARES_SEARCH = {"sparse_random": "sparse", "sparse_distill": "sparse", "sparse_private_words": "sparse",
                 "sparse_private_words_tol25": "sparse", "sparse_private_ner": "sparse"}
# runs that read other runs of the same seed (distillation teachers): not started before those have finished
NEEDS = {"hard_distill": ("pos", "chunk", "ner"),
         **{name: ("minilm_pos_conv", "minilm_chunk_conv", "minilm_ner_conv") for name in RUNS
            if name.startswith("minilm_sparse_") and "sparse.dense_models" in " ".join(RUNS[name][1])}}
SPARSE = {name for name, (config, _) in RUNS.items() if "sparse" in config}  # recipes/train_sparse.py runs


DRIVER_LOCK = "running.lock"  # the training itself locks <run>/.lock


def run_one(name: str, seed: int, args) -> str:
    out = Path(args.out) / f"{name}_seed{seed}"
    sparse = name in SPARSE
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out, DRIVER_LOCK)  # several drivers may share one queue: one of them trains a run
    try:
        lock.acquire()
    except RunFolderError as err:
        return f"{out}: running in another driver: {err}"
    try:
        return _run_locked(name, seed, out, sparse, args)
    finally:
        lock.release()


def _run_locked(name: str, seed: int, out: Path, sparse: bool, args) -> str:
    try:  # a training whose driver was killed goes on holding the run folder's own lock: leave it alone
        raise_if_in_use(out)
    except RunFolderError as err:
        return f"{out}: still training without its driver: {err}"
    # looked at under the lock: a driver that finished the run a moment ago has written its results
    if (out / ("report.json" if sparse else "results.json")).is_file():
        import yaml

        ran = yaml.safe_load((out / "config.yaml").read_text())["train"]["epochs"]
        if args.epochs and ran != args.epochs:
            return f"{out}: ERROR results.json is from a {ran}-epoch run, not {args.epochs}; move it away first"
        return f"{out}: done already"
    unfinished = [f"{need}_seed{seed}" for need in NEEDS.get(name, ())
                  if not (Path(args.out) / f"{need}_seed{seed}" / "results.json").is_file()]
    if unfinished:
        return f"{out}: WAITING for {', '.join(unfinished)} to finish in {args.out} (its teachers); run them first"
    if name in SHARES_SEARCH and not (out / "config.yaml").exists():
        refused = copy_search(Path(args.out) / f"{SHARES_SEARCH[name]}_seed{seed}", out, name, seed, args)
        if refused:
            return refused
    return _train(name, seed, out, sparse, args)


def copy_search(source: Path, out: Path, name: str, seed: int, args) -> str | None:
    """Copy the warm-up and search of ``source`` into ``out`` when ``source`` has selected its masks and ran with
    this run's settings up to the joint stage (else the run computes its own); a message when they differ."""
    import shutil

    import yaml

    from sparseshare.config import load_config, upgrade_saved_model_config

    if not (source / "masks.safetensors").is_file():
        return None
    theirs = yaml.safe_load((source / "config.yaml").read_text())
    theirs["model"] = upgrade_saved_model_config(theirs["model"])  # in today's spelling (strategy sections)
    config_file, *overrides = _config_args(name, seed, out, args)
    ours = load_config(config_file, overrides).to_dict()
    # what may differ: where it runs, the selection of the masks (made after the search, from its records) and
    # the joint stage's switches
    for config in (theirs, ours):
        config.pop("output_dir")
        config["sparse"].pop("select_tolerance", None)
        config["model"].pop("private_embedder", None)
        config["model"].pop("private_embedder_tasks", None)
        config["sparse"].pop("random_masks", None)
        config["sparse"].pop("distill", None)
    if theirs != ours:
        return f"{out}: ERROR {source} ran with other settings; not copying its search (move one of them away)"
    for stage in ("warmup", "search"):
        shutil.copytree(source / stage, out / stage, dirs_exist_ok=True)
    (out / "search_copied_from.txt").write_text(f"{source}\n")  # its search costs were spent there, not here
    return None


def _config_args(name: str, seed: int, out: Path, args) -> list[str]:
    """The config file and overrides of run ``name``."""
    extra = [f"train.epochs={args.epochs}"] if args.epochs else []
    # <out> and <seed> in a run's overrides: other runs of the grid it reads (e.g. distillation teachers)
    own = [o.replace("<out>", str(Path(args.out).resolve())).replace("<seed>", str(seed)) for o in RUNS[name][1]]
    return [str(ROOT / "recipes" / "configs" / f"{RUNS[name][0]}.yaml"), f"output_dir={out}", f"train.seed={seed}",
            "train.progress_bar=false", f"data.root={args.data_root}", *own, *extra, *args.overrides]


def _train(name: str, seed: int, out: Path, sparse: bool, args) -> str:
    recipe = "train_sparse.py" if sparse else "train.py"
    config, *overrides = _config_args(name, seed, out, args)
    cmd = [sys.executable, str(ROOT / "recipes" / recipe), "--config", config, *overrides]
    # started before (or given a copied search): continue it (from scratch if cut before a checkpoint)
    if (out / "config.yaml").is_file() or (out / "search").is_dir():
        cmd.append("--resume")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    timing = out / "wall_time.json"
    earlier = json.loads(timing.read_text()) if timing.is_file() else None
    previous = earlier["seconds"] if earlier else 0.0
    # a run started before without a time record (its driver kept none) has lost that part: summarize.py says so
    complete = earlier.get("complete", True) if earlier else not (out / "config.yaml").is_file()
    started = time.time()

    def record(finished: bool) -> None:
        # rewritten every minute while the run trains: a driver killed with it (a session's end) loses at most a
        # minute of the count, and the resumed run adds to it
        partial = timing.with_suffix(".json.partial")  # then renamed: a kill mid-write leaves the old record whole
        partial.write_text(json.dumps({"seconds": previous + time.time() - started, "threads": args.threads,
                                       "command": " ".join(cmd), "finished": finished, "complete": complete}))
        os.replace(partial, timing)

    with open(out / "train.log", "a") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            while True:
                try:
                    code = process.wait(timeout=60)
                    break
                except subprocess.TimeoutExpired:
                    record(finished=False)
        except BaseException:  # Ctrl-C or an error here: stop the training with its driver
            process.kill()
            process.wait()
            raise
    record(finished=code == 0)
    return f"{out}: {'ok' if code == 0 else f'FAILED with exit code {code}, see train.log'}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["pos", "chunk", "ner", "hard"], choices=sorted(RUNS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, help="override train.epochs of the configs")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (each gets --threads threads)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "runs" / "conll03"))
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides for every run")
    args = parser.parse_args()
    jobs = [(name, seed) for seed in args.seeds for name in args.runs]
    with ThreadPoolExecutor(args.parallel) as pool:
        for line in pool.map(lambda job: run_one(*job, args), jobs):
            print(line, flush=True)


if __name__ == "__main__":
    main()
