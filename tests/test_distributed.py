"""A 2-process CPU run (gloo, ``accelerate launch --multi_gpu``) trains the same model as 1 process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, TINY_SCRATCH, tiny_bert_overrides, tiny_config, tiny_model, tiny_overrides

pytestmark = pytest.mark.slow  # every test here starts processes


def _launch(args: list[str], overrides: list[str], script: Path = ROOT / "recipes" / "train.py"):
    # PYTHONPATH: the launched processes import this checkout, whatever is installed
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *args, str(script), *overrides]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_two_processes_match_one_process(tiny_corpus, tmp_path):
    # The global batch (8) is split 4 + 4 across the two processes; dropout is off so that the only
    # difference between the runs is the arithmetic order of the gradient reduction.
    one, two = tmp_path / "one", tmp_path / "two"
    _launch(["--cpu", "--num_processes", "1"], tiny_overrides(tiny_corpus, one))
    _launch(["--multi_gpu", "--num_processes", "2"], tiny_overrides(tiny_corpus, two))

    a, b = load_file(str(one / "model" / "model.safetensors")), load_file(str(two / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-4, msg=name)
    # A tiny drift in weights must not change a single prediction on this data.
    ra, rb = json.loads((one / "results.json").read_text()), json.loads((two / "results.json").read_text())
    assert [h["dev"] for h in ra["history"]] == [h["dev"] for h in rb["history"]]
    assert ra["test"] == rb["test"]
    assert (ra["num_processes"], rb["num_processes"]) == (1, 2)
    # And the weights did move: the runs are not trivially equal.
    assert len(ra["history"]) == 2


def test_sparse_sharing_two_processes_match_one_process(tiny_corpus, tmp_path):
    from sparseshare.config import load_config
    from sparseshare.sharing.masks import save_masks
    from sparseshare.training.data import build_model, load_task_data

    overrides = tiny_overrides(tiny_corpus, tmp_path / "masks", **{"model.sharing": "sparse"})
    config = load_config(None, overrides)
    model = build_model(config, load_task_data(config))
    g = torch.Generator().manual_seed(0)
    save_masks({t: {n: torch.rand(p.shape, generator=g) < 0.6 for n, p in model.sharing.prunable().items()}
                for t in model.tasks}, tmp_path / "masks.safetensors")

    one, two = tmp_path / "one", tmp_path / "two"
    extra = {"model.sharing": "sparse", "sparse.masks": str(tmp_path / "masks.safetensors")}
    _launch(["--cpu", "--num_processes", "1"], tiny_overrides(tiny_corpus, one, **extra))
    _launch(["--multi_gpu", "--num_processes", "2"], tiny_overrides(tiny_corpus, two, **extra))
    a, b = load_file(str(one / "model" / "model.safetensors")), load_file(str(two / "model" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-4, msg=name)
    ra, rb = json.loads((one / "results.json").read_text()), json.loads((two / "results.json").read_text())
    assert ra["test"] == rb["test"] and rb["num_processes"] == 2
    # the saved masks are the given ones, on both
    assert (two / "model" / "masks.safetensors").read_bytes() == (one / "model" / "masks.safetensors").read_bytes()


def test_distributed_sparse_pipeline_searches_tasks_on_different_processes(tiny_corpus, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    extra = {"model.sharing": "sparse", "sparse.rounds": 1, "train.epochs": 1}

    def launch(args, out):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", *args, str(ROOT / "recipes" / "train_sparse.py"),
               *tiny_overrides(tiny_corpus, out, **extra)]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout + done.stderr

    launch(["--cpu", "--num_processes", "1"], tmp_path / "one")
    log = launch(["--multi_gpu", "--num_processes", "2"], tmp_path / "two")
    assert "[pos] mask search in process 0" in log and "[chunk] mask search in process 1" in log
    assert "[ner] mask search in process 0" in log
    # each task's search ran in a single process either way: the very same masks
    for task in ("pos", "chunk", "ner"):
        for name in ("search.json",):
            a = json.loads((tmp_path / "one" / "search" / task / name).read_text())
            b = json.loads((tmp_path / "two" / "search" / task / name).read_text())
            assert [(r["density"], r["dev"]) for r in a] == [(r["density"], r["dev"]) for r in b]
    assert (tmp_path / "one" / "masks.safetensors").read_bytes() == (tmp_path / "two" / "masks.safetensors").read_bytes()
    assert json.loads((tmp_path / "two" / "report.json").read_text())["test"]


STRATEGY_OPTIONS = {
    "hierarchical": {"model.hierarchical.task_layers": "{pos: 1}"},
    "bottom": {},
    "cross_stitch": {},
    "roaming": {"model.roaming.delta": 2},  # the masks move several times during the run
    # on a Hugging Face Transformer, through the stand-ins for its layers (sparseshare/sharing/hf_layers.py)
    "cross_stitch on a tiny BERT": {"model.sharing": "cross_stitch"},
    "roaming on a tiny BERT": {"model.sharing": "roaming", "model.roaming.delta": 2},
    "bottom on a tiny BERT": {"model.sharing": "bottom"},
    "roaming on the scratch Transformer": {"model.sharing": "roaming", "model.roaming.delta": 2, **TINY_SCRATCH},
    # every task's batch in each step, one step on the summed losses (the masked steps move the masks' union)
    "hard, joint schedule": {"model.sharing": "hard", "train.schedule": "joint"},
    "roaming, joint schedule": {"model.sharing": "roaming", "model.roaming.delta": 2, "train.schedule": "joint"},
}


@pytest.mark.parametrize("strategy", sorted(STRATEGY_OPTIONS))
def test_other_strategies_two_processes_match_one_process(tiny_corpus, tmp_path, strategy, request):
    extra = {"model.sharing": strategy, "train.epochs": 1, **STRATEGY_OPTIONS[strategy]}

    def overrides(out):
        if strategy.endswith("BERT"):
            return tiny_bert_overrides(tiny_corpus, out, request.getfixturevalue("tiny_bert"), **extra)
        return tiny_overrides(tiny_corpus, out, **extra)

    one, two = tmp_path / "one", tmp_path / "two"
    _launch(["--cpu", "--num_processes", "1"], overrides(one))
    _launch(["--multi_gpu", "--num_processes", "2"], overrides(two))
    a, b = load_file(str(one / "model" / "model.safetensors")), load_file(str(two / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name].float(), b[name].float(), rtol=1e-4, atol=1e-4, msg=name)
    ra, rb = json.loads((one / "results.json").read_text()), json.loads((two / "results.json").read_text())
    assert ra["test"] == rb["test"] and rb["num_processes"] == 2


# Run by every process: train like recipes/train.py, then write this process's router state (every buffer of the
# sharing strategy, as it is at the end of training, not the dev-selected model that only rank 0 saves).
ROUTER_STATE_SCRIPT = """
import sys
from pathlib import Path

import torch.distributed as dist
from safetensors.torch import save_file

from sparseshare.config import load_config
from sparseshare.training.data import build_model
from sparseshare.recipes.train import run_training

built = []


def build(config, data):
    built.append(build_model(config, data))
    return built[-1]


config = load_config(None, sys.argv[1:])
run_training(config, log=lambda *args: None, build=build)
state = {name: b.detach().cpu().contiguous() for name, b in built[-1].sharing.named_buffers()}
state.update({name: p.detach().cpu().contiguous() for name, p in built[-1].sharing.named_parameters()
              if name == "route_logits"})  # the gumbel router learns by backprop: its logits are parameters
save_file(state, str(Path(config.output_dir) / f"router_state_{dist.get_rank()}.safetensors"))
dist.destroy_process_group()
"""
ROUTER_STATE = {"wpl": ["policy", "q", "q_seen", "usage", "recent", "recent_next", "rng_state"],
                "reinforce": ["routers.0.w1", "routers.0.b1", "routers.0.w2", "routers.0.b2", "routers.1.w1",
                              "routers.1.b1", "routers.1.w2", "routers.1.b2", "baseline", "usage", "rng_state"],
                "dispatched": ["policy", "q", "q_seen", "usage", "dispatcher.w1", "dispatcher.b1", "dispatcher.w2",
                               "dispatcher.b2", "dispatch_baseline", "dispatch_counts", "rng_state"],
                "gumbel": ["route_logits", "usage", "rng_state"], "gumbel_mix": ["route_logits", "usage", "rng_state"]}
ROUTER_OPTIONS = {"wpl": {"model.routing.history": 4}}  # the collaboration reward's window of recent batches too


@pytest.mark.parametrize("router", sorted(ROUTER_STATE))
def test_routing_routers_stay_identical_across_two_processes_and_reload(tiny_corpus, tmp_path, router):
    # Each process samples the routes of its own half of the batch (so this run is not the 1-process run), but the
    # router statistics are all-reduced: both processes must end with bit-identical routers, away from their start.
    # (Without the all_reduce in observe_losses, usage, policy and q, or the router MLPs and baseline, differ.)
    from sparseshare.model import MultiTaskTagger

    extra = {"model.sharing": "routing", "model.routing.router": router, "train.epochs": 1,
             **ROUTER_OPTIONS.get(router, {})}
    out, script = tmp_path / "two", tmp_path / "router_state.py"
    script.write_text(ROUTER_STATE_SCRIPT)
    _launch(["--multi_gpu", "--num_processes", "2"], tiny_overrides(tiny_corpus, out, **extra), script)

    ranks = [load_file(str(out / f"router_state_{rank}.safetensors")) for rank in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and set(ROUTER_STATE[router]) <= ranks[0].keys()
    assert [name for name in ranks[0] if not torch.equal(ranks[0][name], ranks[1][name])] == []
    # the routes were non-trivial: every block of every layer was taken, and the router moved from its start
    config = tiny_config(tiny_corpus, tmp_path / "start", **extra)
    model, _ = tiny_model(config)
    model.sharing.initialize(config.train.seed)  # what run_training starts from
    start = {**dict(model.sharing.named_buffers()), "route_logits": getattr(model.sharing, "route_logits", None)}
    final = ranks[0]
    assert (final["usage"] > 0).all() and final["usage"].sum() == 2 * 3 * 48  # 2 layers x 3 tasks x 48 sentences
    for name in ROUTER_STATE[router]:
        assert not torch.equal(final[name], start[name]), name

    results = json.loads((out / "results.json").read_text())
    assert results["num_processes"] == 2 and set(results["test"]) == {"pos", "chunk", "ner"}
    model = MultiTaskTagger.from_pretrained(out / "model")
    assert len(model.predict([["John", "lives", "in", "Paris", "."]])["ner"][0]) == 5


@pytest.mark.parametrize("router", ["wpl", "reinforce"])
def test_routing_on_a_tiny_bert_trains_under_two_processes_with_identical_routers(tiny_corpus, tmp_path, tiny_bert,
                                                                                  router):
    """The routed stand-ins for a Transformer's layers (blocks a process may not run at a step) under DDP; the
    REINFORCE router reads each sentence's pooled subword states."""
    extra = {"model.sharing": "routing", "model.routing.pass_block": "true", "model.routing.router": router}
    out, script = tmp_path / "two", tmp_path / "router_state.py"
    script.write_text(ROUTER_STATE_SCRIPT)
    _launch(["--multi_gpu", "--num_processes", "2"], tiny_bert_overrides(tiny_corpus, out, tiny_bert, **extra), script)
    ranks = [load_file(str(out / f"router_state_{rank}.safetensors")) for rank in (0, 1)]
    assert [name for name in ranks[0] if not torch.equal(ranks[0][name], ranks[1][name])] == []
    assert ranks[0]["usage"].sum() == 3 * 3 * 48  # 3 layers x 3 tasks x 48 sentences
    if router == "reinforce":  # the MLPs learned (their output layers start at zero)
        assert all(ranks[0][f"routers.{layer}.w2"].any() for layer in range(3))
    assert json.loads((out / "results.json").read_text())["num_processes"] == 2
