"""The multi-task training options of issue 23: one optimiser state per task, and the loss per word."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import quiet, tiny_config, train_interrupted_and_resumed
from sparseshare.optim import (MaskedAdamW, MaskedSGD, PerTaskAdamW, PerTaskMaskedAdamW, PerTaskMaskedSGD, PerTaskSGD,
                               PerTaskState, build_optimizer)
from sparseshare.recipes.train import loss_weight, run_training

TASKS = ["a", "b", "a", "a", "b", "b", "a", "b"]


def _toy(seed=0):
    """A shared matrix and one head per task, as plain tensors."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.nn.Parameter(torch.randn(4, 3, generator=g))
    heads = {t: torch.nn.Parameter(torch.randn(2, 4, generator=g)) for t in ("a", "b")}
    return shared, heads


def _grads(shared, heads, task, step):
    # task b's gradients are 100x task a's: the situation where a shared state lets b dominate
    g = torch.Generator().manual_seed(1000 * step + (task == "b"))
    x = torch.randn(5, 3, generator=g)
    loss = (heads[task] @ torch.tanh(shared @ x.T)).pow(2).sum() * (100.0 if task == "b" else 1.0)
    loss.backward()


def _train(optimizers_for, shared, heads, tasks, masks=None, start=0):
    for step, task in enumerate(tasks, start):
        optimizer = optimizers_for(task)
        _grads(shared, heads, task, step)
        if masks is not None:
            optimizer.set_masks({shared: masks[task]})
        if isinstance(optimizer, PerTaskState):
            optimizer.set_task(task)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


CASES = {
    "adamw": (PerTaskAdamW, torch.optim.AdamW, {"lr": 0.01, "fused": False}),
    "adamw_fused": (PerTaskAdamW, torch.optim.AdamW, {"lr": 0.01, "fused": True}),
    "sgd": (PerTaskSGD, torch.optim.SGD, {"lr": 0.01, "momentum": 0.9}),
    "masked_adamw": (PerTaskMaskedAdamW, MaskedAdamW, {"lr": 0.01, "fused": False}),
    "masked_sgd": (PerTaskMaskedSGD, MaskedSGD, {"lr": 0.01, "momentum": 0.9}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_per_task_state_is_one_optimiser_per_task(case):
    per_task_cls, single_cls, kwargs = CASES[case]
    masked = "masked" in case
    g = torch.Generator().manual_seed(5)
    masks = {t: torch.rand(4, 3, generator=g) < 0.6 for t in ("a", "b")} if masked else None

    shared, heads = _toy()
    one = per_task_cls([shared, *heads.values()], **kwargs)
    _train(lambda task: one, shared, heads, TASKS, masks)

    shared2, heads2 = _toy()
    separate = {t: single_cls([shared2, heads2[t]], **kwargs) for t in ("a", "b")}
    _train(lambda task: separate[task], shared2, heads2, TASKS, masks)

    assert torch.equal(shared, shared2)
    assert all(torch.equal(heads[t], heads2[t]) for t in heads)


def test_a_shared_state_lets_the_larger_gradients_steer_the_small_tasks_steps():
    """What per-task state changes: with one state, task a's steps on the shared matrix follow task b's 100x larger
    gradients (Adam's first moment) and are scaled by b's second moment, so they make little progress along a's own
    gradient; with one state per task they make as much as in single-task training."""
    progress = {}
    for cls in (torch.optim.AdamW, PerTaskAdamW):
        shared, heads = _toy()
        optimizer = cls([shared, *heads.values()], lr=0.01, fused=False)
        along = []
        for step, task in enumerate(TASKS):
            _grads(shared, heads, task, step)
            grad, before = shared.grad.clone(), shared.detach().clone()
            if isinstance(optimizer, PerTaskState):
                optimizer.set_task(task)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if task == "a" and step > 2:
                along.append(float(-(shared.detach() - before).flatten() @ grad.flatten() / grad.norm()))
        progress[cls] = sum(along) / len(along)
    assert progress[PerTaskAdamW] > 3 * abs(progress[torch.optim.AdamW])


@pytest.mark.parametrize("cls,kwargs", [(PerTaskAdamW, {"fused": True}), (PerTaskMaskedAdamW, {}),
                                        (PerTaskSGD, {"momentum": 0.9})])
def test_per_task_state_resumes_exactly_from_a_saved_state_dict(cls, kwargs):
    masks = {t: torch.ones(4, 3, dtype=torch.bool).tril() if t == "a" else torch.ones(4, 3, dtype=torch.bool)
             for t in ("a", "b")} if "Masked" in cls.__name__ else None
    shared, heads = _toy()
    straight = cls([shared, *heads.values()], lr=0.01, **kwargs)
    _train(lambda _: straight, shared, heads, TASKS, masks)

    shared2, heads2 = _toy()
    first = cls([shared2, *heads2.values()], lr=0.01, **kwargs)
    _train(lambda _: first, shared2, heads2, TASKS[:5], masks)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)  # as accelerate's save_state does; loaded with weights_only
    buffer.seek(0)
    resumed = cls([shared2, *heads2.values()], lr=0.01, **kwargs)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    _train(lambda _: resumed, shared2, heads2, TASKS[5:], masks, start=5)
    assert torch.equal(shared, shared2)
    assert all(torch.equal(heads[t], heads2[t]) for t in heads)


def test_a_shared_state_dict_is_refused_by_a_per_task_optimiser():
    shared, heads = _toy()
    plain = torch.optim.AdamW([shared, *heads.values()], lr=0.01)
    _train(lambda _: plain, shared, heads, TASKS[:2])
    with pytest.raises(ValueError, match="optimizer_state=shared"):
        PerTaskAdamW([shared, *heads.values()], lr=0.01).load_state_dict(plain.state_dict())


def test_a_per_task_step_without_a_task_is_refused():
    shared, heads = _toy()
    optimizer = PerTaskAdamW([shared, *heads.values()], lr=0.01)
    _grads(shared, heads, "a", 0)
    with pytest.raises(RuntimeError, match="set_task"):
        optimizer.step()


def test_build_optimizer_picks_the_per_task_classes(tiny_corpus, tmp_path):
    from conftest import tiny_model

    for extra, expected in [({"train.optimizer": "adamw"}, PerTaskAdamW), ({}, PerTaskSGD),
                            ({"train.optimizer": "adamw", "model.sharing": "sparse"}, PerTaskMaskedAdamW)]:
        config = tiny_config(tiny_corpus, tmp_path, **{"train.optimizer_state": "per_task", **extra})
        model, _ = tiny_model(config)
        assert type(build_optimizer(config, model)) is expected
    config = tiny_config(tiny_corpus, tmp_path, **{"train.optimizer": "adamw"})
    assert type(build_optimizer(config, tiny_model(config)[0])) is torch.optim.AdamW


@pytest.mark.parametrize("key,value", [("train.optimizer_state", "per_weight"), ("train.loss_normalization", "word")])
def test_bad_values_name_the_key(tiny_corpus, tmp_path, key, value):
    from sparseshare.config import ConfigError

    with pytest.raises(ConfigError, match=key):
        tiny_config(tiny_corpus, tmp_path, **{key: value})


def test_loss_weight_by_hand():
    sentences = [["a"] * 3, ["b"] * 5, ["c"] * 2]
    assert loss_weight([0, 1], sentences, 1, "sentence") == 1 / 2
    assert loss_weight([0, 1], sentences, 1, "token") == 1 / 8
    # two processes: each scales its half so that DDP's average is the global batch's mean
    assert loss_weight([0, 1, 2], sentences, 2, "token") == 2 / 10
    assert loss_weight([0, 1, 2], sentences, 2, "sentence") == 2 / 3


@pytest.mark.slow
def test_per_task_state_and_word_loss_train_and_resume_mid_epoch_to_the_same_model(tiny_corpus, tmp_path):
    extra = {"train.epochs": 3, "train.checkpoint_every": 4, "train.optimizer": "adamw", "train.lr": 0.01,
             "train.optimizer_state": "per_task", "train.loss_normalization": "token"}
    reference, resumed = train_interrupted_and_resumed(tiny_corpus, tmp_path, extra)
    a = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert resumed["dev"] == reference["dev"] and resumed["history"][-1]["dev"] == reference["history"][-1]["dev"]


def test_one_task_trains_the_same_with_either_state_and_differs_with_word_loss(tiny_corpus, tmp_path):
    runs = {}
    for name, extra in {"shared": {}, "per_task": {"train.optimizer_state": "per_task"},
                        "token": {"train.loss_normalization": "token"}}.items():
        config = tiny_config(tiny_corpus, tmp_path / name, tasks="[ner]", **{"train.optimizer": "adamw",
                                                                            "train.lr": 0.01, **extra})
        run_training(config, log=quiet)
        runs[name] = load_file(str(tmp_path / name / "model" / "model.safetensors"))
    assert all(torch.equal(runs["shared"][n], runs["per_task"][n]) for n in runs["shared"])
    assert not all(torch.equal(runs["shared"][n], runs["token"][n]) for n in runs["shared"])


# -- distillation from single-task teachers ---------------------------------------------------------------------
ADAM = {"train.optimizer": "adamw", "train.lr": 0.02, "train.epochs": 6}
MARY = [["Mary", "visited", "Berlin", "and", "Rome", "."]]


@pytest.fixture
def teacher_and_mislabelled_corpus(tmp_path):
    """A NER teacher trained on the tiny corpus, and a copy of the corpus whose training split calls Rome ``O``."""
    from conftest import write_tiny_corpus

    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir(), bad.mkdir()
    write_tiny_corpus(good)
    for split in ("train", "dev", "test"):
        text = (good / f"{split}.txt").read_text()
        (bad / f"{split}.txt").write_text(text.replace("Rome NNP B-NP B-LOC", "Rome NNP B-NP O") if split == "train"
                                          else text)
    run_training(tiny_config(good, tmp_path / "teacher", tasks="[ner]", **ADAM), log=quiet)
    return tmp_path / "teacher" / "model", bad


@pytest.mark.slow
def test_a_student_learns_what_its_teacher_knows_and_the_gold_labels_do_not_say(teacher_and_mislabelled_corpus,
                                                                              tmp_path):
    from sparseshare.model import MultiTaskTagger

    teacher, corpus = teacher_and_mislabelled_corpus
    assert MultiTaskTagger.from_pretrained(teacher).predict(MARY)["ner"][0][4] == "B-LOC"
    tags = {}
    for name, extra in {"gold": {}, "teacher": {"train.distill_from": f"{{ner: {teacher}}}",
                                                "train.distill_weight": 1.0}}.items():
        run_training(tiny_config(corpus, tmp_path / f"from_{name}", tasks="[ner]", **{**ADAM, **extra}), log=quiet)
        tags[name] = MultiTaskTagger.from_pretrained(tmp_path / f"from_{name}" / "model").predict(MARY)["ner"][0][4]
    assert tags["gold"] == "O" and tags["teacher"] == "B-LOC"


@pytest.mark.slow
def test_no_teacher_weight_trains_exactly_as_without_distillation(teacher_and_mislabelled_corpus, tmp_path):
    teacher, corpus = teacher_and_mislabelled_corpus
    for name, extra in {"plain": {}, "zero": {"train.distill_from": f"{{ner: {teacher}}}", "train.distill_weight": 0.0}}.items():
        run_training(tiny_config(corpus, tmp_path / name, **{**ADAM, "train.epochs": 2, "model.bilstm.dropout": 0.3,
                                                             **extra}), log=quiet)
    a = load_file(str(tmp_path / "plain" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "zero" / "model" / "model.safetensors"))
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.slow
def test_distilled_training_resumes_mid_epoch_to_the_same_model(teacher_and_mislabelled_corpus, tmp_path):
    teacher, corpus = teacher_and_mislabelled_corpus
    extra = {"train.epochs": 3, "train.checkpoint_every": 4, "train.optimizer": "adamw", "train.lr": 0.01,
             "train.distill_from": f"{{ner: {teacher}}}", "model.bilstm.dropout": 0.3}
    reference, resumed = train_interrupted_and_resumed(corpus, tmp_path / "runs", extra)
    a = load_file(str(tmp_path / "runs" / "a" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "runs" / "b" / "model" / "model.safetensors"))
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_gold_weight_anneals_from_teacher_to_gold():
    from sparseshare.training.distillation import gold_weight

    assert [gold_weight(s, 5, None) for s in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert gold_weight(3, 5, 0.3) == pytest.approx(0.7)


def test_teachers_that_do_not_fit_are_refused_by_key(teacher_and_mislabelled_corpus, tmp_path):
    from sparseshare.config import ConfigError

    teacher, corpus = teacher_and_mislabelled_corpus
    with pytest.raises(ConfigError, match="train.distill_from"):  # a task the run does not train
        tiny_config(corpus, tmp_path / "a", tasks="[pos]", **{"train.distill_from": f"{{ner: {teacher}}}"})
    with pytest.raises(ConfigError, match="train.distill_weight"):
        tiny_config(corpus, tmp_path / "a", **{"train.distill_weight": 0.5})
    with pytest.raises(FileNotFoundError, match="train.distill_from.ner"):
        run_training(tiny_config(corpus, tmp_path / "b", **{"train.distill_from": f"{{ner: {tmp_path}}}"}), log=quiet)
    with pytest.raises(ValueError, match="train.distill_from.pos.*no task 'pos'"):
        run_training(tiny_config(corpus, tmp_path / "c", **{"train.distill_from": f"{{pos: {teacher}}}"}), log=quiet)
    with pytest.raises(ValueError, match="same kind of head"):
        run_training(tiny_config(corpus, tmp_path / "d", **{"model.head": "softmax",
                                                             "train.distill_from": f"{{ner: {teacher}}}"}), log=quiet)
    # labels in another scheme (IOB2 instead of the teacher's BIOES) cannot be matched
    (tmp_path / "iob2.yaml").write_text((Path(__file__).parents[1] / "tasks" / "ner.yaml").read_text()
                                        .replace("train_scheme: bioes", "train_scheme: iob2"))
    with pytest.raises(ValueError, match="other 'ner' labels"):
        run_training(tiny_config(corpus, tmp_path / "e", tasks=f"[{tmp_path / 'iob2.yaml'}]",
                                 **{"train.distill_from": f"{{ner: {teacher}}}"}), log=quiet)


def test_overwrite_never_deletes_a_teacher(teacher_and_mislabelled_corpus, tmp_path):
    from sparseshare.run_folder import RunFolderError

    teacher, corpus = teacher_and_mislabelled_corpus  # teacher = tmp_path/teacher/model
    config = tiny_config(corpus, tmp_path / "teacher", tasks="[ner]", **{"train.distill_from": f"{{ner: {teacher}}}"})
    with pytest.raises(RunFolderError, match="which this run reads"):
        run_training(config, overwrite=True, log=quiet)
    assert (teacher / "model.safetensors").is_file()


@pytest.mark.slow
def test_the_sparse_recipe_distils_each_task_from_its_searched_dense_network(tiny_corpus, tmp_path):
    import yaml

    from sparseshare.config import ConfigError, load_config
    from sparseshare.recipes.train_sparse import run_sparse
    from conftest import tiny_overrides

    overrides = tiny_overrides(tiny_corpus, tmp_path / "run", **{
        "model.sharing": "sparse", "sparse.search": "oneshot", "sparse.rounds": 1, "sparse.prune_fraction": 0.5,
        "train.epochs": 1, "sparse.search_epochs": 1, "sparse.distill": "true", "train.optimizer": "adamw",
        "train.lr": 0.01})
    report = run_sparse(load_config(None, overrides), log=quiet)
    joint = yaml.safe_load((tmp_path / "run" / "joint" / "config.yaml").read_text())
    assert joint["train"]["distill_from"] == {t: str(tmp_path / "run" / "search" / t / "round_00" / "model")
                                              for t in ("pos", "chunk", "ner")}
    assert set(report["test"]) == {"pos", "chunk", "ner"}
    with pytest.raises(ConfigError, match="sparse.distill"):
        load_config(None, [*overrides, f"sparse.masks={tmp_path / 'run' / 'masks.safetensors'}"])
    # a fixed teacher weight with sparse.distill; a teacher of the user's own overrides the searched one. Warm-up
    # and search stages train single tasks without distillation
    teacher = tmp_path / "run" / "search" / "ner" / "round_00" / "model"
    again = [o for o in overrides if not o.startswith("output_dir=")]
    run_sparse(load_config(None, [*again, f"output_dir={tmp_path / 'again'}", "train.distill_weight=0.5",
                                  f"train.distill_from={{ner: {teacher}}}"]), log=quiet)
    joint = yaml.safe_load((tmp_path / "again" / "joint" / "config.yaml").read_text())["train"]
    assert joint["distill_weight"] == 0.5 and joint["distill_from"]["ner"] == str(teacher)
    assert joint["distill_from"]["pos"] == str(tmp_path / "again" / "search" / "pos" / "round_00" / "model")
    for stage in ("warmup", "search/pos/round_00"):
        assert yaml.safe_load((tmp_path / "again" / stage / "config.yaml").read_text())["train"]["distill_from"] == {}


def test_embedding_lr_gives_the_word_and_character_tables_their_own_rate(tiny_corpus, tmp_path):
    from conftest import tiny_model

    config = tiny_config(tiny_corpus, tmp_path, **{"train.optimizer": "adamw", "train.lr": 0.01,
                                                   "train.embedding_lr": 0.002, "train.head_lr": 0.05})
    model, _ = tiny_model(config)
    rates = {id(p): group["lr"] for group in build_optimizer(config, model).param_groups for p in group["params"]}
    names = {n: rates[id(p)] for n, p in model.named_parameters()}
    tables = {n for n in names if n.endswith(("words.weight", "chars.embedding.weight", "chars.weight"))}
    assert tables and all(names[n] == 0.002 for n in tables)
    assert all(rate == 0.05 for n, rate in names.items() if n.startswith("heads."))
    assert all(rate == 0.01 for n, rate in names.items() if n not in tables and not n.startswith("heads."))


def test_parameter_groups_follow_roles_not_rates(tiny_corpus, tmp_path):
    """A head rate equal to the base rate still gives the heads their own group: checkpoints written before
    train.embedding_lr existed keep loading."""
    from conftest import tiny_model

    config = tiny_config(tiny_corpus, tmp_path, **{"train.optimizer": "adamw", "train.lr": 0.01, "train.head_lr": 0.01})
    assert len(build_optimizer(config, tiny_model(config)[0]).param_groups) == 2


# -- the joint schedule: every task's batch in each step, one step on the summed losses ------------------------
def test_a_joint_step_is_one_step_on_the_summed_losses_of_every_task(tiny_corpus, tmp_path):
    """With batches of the whole corpus an epoch is one step: the trained model is the initial one moved once by
    plain SGD along the gradient of the three tasks' summed mean sentence losses."""
    import copy

    from sparseshare.training.data import build_model

    initial = {}

    def build(config, data):
        model = build_model(config, data)
        initial["model"], initial["data"] = copy.deepcopy(model), data
        return model

    config = tiny_config(tiny_corpus, tmp_path / "joint", **{
        "train.schedule": "joint", "train.epochs": 1, "train.batch_size": 64, "train.momentum": 0.0,
        "train.clip": 0, "train.lr": 0.1})
    run_training(config, build=build, log=quiet)
    trained = load_file(str(tmp_path / "joint" / "model" / "model.safetensors"))

    model, data = initial["model"], initial["data"]
    model.train()
    loss = 0.0
    for task, d in data.items():
        batch = model.featurizer.collate(d.train_tokens, d.train_labels, d.train_word_ids)
        loss = loss + model(batch, task).sum() / len(d.train_tokens)
    loss.backward()
    by_hand = {name: (p - 0.1 * p.grad if p.grad is not None else p).detach() for name, p in model.named_parameters()}
    moved = [name for name in by_hand if not torch.equal(by_hand[name], dict(model.named_parameters())[name])]
    assert {name.split(".")[1] for name in moved if name.startswith("heads.")} == {"pos", "chunk", "ner"}
    for name, value in by_hand.items():
        torch.testing.assert_close(trained[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_a_joint_step_moves_the_weights_of_any_of_its_tasks_masks():
    from sparseshare.optim import StepMasks

    weight, bias = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))
    masks = {"a": {weight: torch.tensor([[True, False], [False, False]]), bias: torch.tensor([True, False])},
             "b": {weight: torch.tensor([[False, False], [False, True]])}}  # b moves the whole bias
    union = StepMasks(masks.__getitem__)
    joint = union(["a", "b"])
    assert set(joint) == {weight} and joint[weight].tolist() == [[True, False], [False, True]]
    assert union(["a", "b"])[weight] is joint[weight]  # unchanged masks: the same tensor (the optimisers cache it)
    assert union(["a"]) is masks["a"]
    masks["b"][weight][0, 1] = True  # moved in place (Maximum Roaming)
    assert union(["a", "b"])[weight].tolist() == [[True, True], [False, True]]


@pytest.mark.slow
def test_joint_roaming_with_masked_steps_resumes_mid_epoch_to_the_same_model(tiny_corpus, tmp_path):
    extra = {"train.schedule": "joint", "train.epochs": 3, "train.checkpoint_every": 4, "train.optimizer": "adamw",
             "train.lr": 0.01, "model.sharing": "roaming", "model.roaming.delta": 2}
    reference, resumed = train_interrupted_and_resumed(tiny_corpus, tmp_path, extra, crash_step=6 + 3)
    a = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert resumed["dev"] == reference["dev"]


def test_the_joint_schedule_refuses_per_task_optimiser_states(tiny_corpus, tmp_path):
    from sparseshare.config import ConfigError

    with pytest.raises(ConfigError, match=r"'train.optimizer_state': per_task .* train.schedule joint"):
        tiny_config(tiny_corpus, tmp_path, **{"train.schedule": "joint", "train.optimizer_state": "per_task"})
