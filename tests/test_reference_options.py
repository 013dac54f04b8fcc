"""Options that restore the reference code's behaviour (issue 19; docs/protocols/reference-differences.md)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lop.config import MethodConfig, from_dict, to_dict


# ---- PPO: time-limit truncation in GAE -------------------------------------------------------------------
def _ppo_after_update(truncation_as_terminal: bool, treat_ends_as_terminated: bool = False) -> torch.Tensor:
    pytest.importorskip("gymnasium.envs.mujoco", reason="needs gymnasium[mujoco] (the rl extra)")
    from lop.envs import BatchedEnvs
    from lop.rl.agent import GaussianAgent
    from lop.rl.ppo import PPOLearner, PPOSettings, collect_rollout
    from lop.rng import RunStreams

    seeds = [0, 1]
    envs = BatchedEnvs("ant", seeds, max_episode_steps=20)  # several time-limit ends per rollout
    envs.reset()
    streams = RunStreams(seeds)
    agent = GaussianAgent(envs.obs_dim, envs.act_dim, (16, 16), streams)
    settings = PPOSettings(rollout=128, epochs=2, minibatch=32, truncation_as_terminal=truncation_as_terminal)
    method = MethodConfig(optimizer="adam", lr=1e-3)
    learner = PPOLearner(agent, [method] * 2, streams, settings)
    ro = collect_rollout(agent, envs, streams, 0, 128)
    truncated = ro.ends - ro.terminated
    assert float(truncated.sum()) >= 4  # the rollout holds truncations the option acts on
    if treat_ends_as_terminated:
        ro = ro._replace(terminated=ro.ends)
    learner.update(ro, 0)
    return agent.flat.clone()


def test_truncation_as_terminal_drops_the_bootstrap_at_time_limits() -> None:
    """True: every episode end is terminal in GAE (δ = r − V(s) at a time-limit end), exactly as if the
    simulator had reported termination there; False: truncated steps bootstrap from V(final obs)."""
    terminal = _ppo_after_update(True)
    assert torch.equal(terminal, _ppo_after_update(False, treat_ends_as_terminated=True))
    assert not torch.equal(terminal, _ppo_after_update(False))


def test_truncation_option_reaches_the_learner_and_leaves_default_configs_alone() -> None:
    from lop.experiments.ppo import AntProblem

    assert "truncation_as_terminal" not in to_dict(AntProblem())
    p = from_dict(AntProblem, {"truncation_as_terminal": True})
    assert p.ppo_settings().truncation_as_terminal is True
    assert to_dict(p)["truncation_as_terminal"] is True
    assert dataclasses.replace(p, truncation_as_terminal=False) == AntProblem()


# ---- CIFAR: test accuracy on augmented test images, beside the clean one ----------------------------------
@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    from lop.data.cifar100 import prepare_cifar100
    from lop.data.standins import write_standin

    root = tmp_path_factory.mktemp("cifar")
    write_standin("cifar100", root / "raw", size="small")
    return prepare_cifar100(root / "raw", root / "prepared")


def _cifar_metrics(cifar_dir, augmented_test: bool):
    from lop.experiments.base import RunSpec
    from lop.experiments.incremental_cifar import IncrementalCifarProblem, IncrementalCifarTrainer

    problem = IncrementalCifarProblem(
        data_dir=str(cifar_dir), n_classes=6, classes_start=2, classes_per_increment=2, n_increments=2,
        epochs_per_increment=3, lr_milestones=(1, 2), lr_factors=(0.2, 0.04), batch_size=6,
        train_per_class=3, val_per_class=2, test_per_class=5, image_size=8, width=4, probe_images=8,
        eval_batch=7, augmented_test=augmented_test,
    )  # fmt: skip
    cfg = MethodConfig(lr=0.1, momentum=0.9, weight_decay=5e-4)
    runs = [RunSpec("m", "d", {}, cfg, s) for s in (0, 1)]
    trainer = IncrementalCifarTrainer(problem, runs, torch.device("cpu"))
    out: dict[str, list[torch.Tensor]] = {}
    recomputed = []
    for unit in range(problem.n_epochs):
        for block in trainer.train_unit(unit):
            out.setdefault(block.name, []).append(block.values[:, 0].clone())
        if augmented_test and unit == 1:  # not an increment end: the parameters that were evaluated
            recomputed.append(trainer.evaluate(trainer.data.test, 2, augment_epoch=unit))
    return out, recomputed, trainer


def test_augmented_test_accuracy_is_recorded_beside_the_clean_one(cifar_dir) -> None:
    plain, _, _ = _cifar_metrics(cifar_dir, False)
    aug, recomputed, trainer = _cifar_metrics(cifar_dir, True)
    new = {"test_accuracy_augmented", "test_accuracy_augmented/max", "test_accuracy_augmented/final"}
    assert set(aug) - set(plain) == new
    assert not any(name.startswith("test_accuracy_augmented") for name in plain)
    # evaluation on augmented images changes nothing else: every other metric is bit-identical
    for name, values in plain.items():
        assert all(torch.equal(a, b) for a, b in zip(values, aug[name], strict=True)), name
    per_epoch = torch.stack(aug["test_accuracy_augmented"])  # [epochs, S]
    assert torch.equal(per_epoch[1], recomputed[0])  # deterministic draws, logged as evaluated
    maxes = torch.stack(aug["test_accuracy_augmented/max"])  # [increments, S]
    assert torch.equal(maxes, per_epoch.view(2, 3, 2).amax(1))
    # the augmented images really differ from the clean ones (flip, crop, rotation)
    x = trainer.data.test[:2, :3].flatten(0, 1).unsqueeze(0).expand(2, -1, -1, -1, -1)
    assert not torch.equal(trainer._augmented_test_images(x, 5), trainer._clean_images(x))
    assert torch.equal(trainer._augmented_test_images(x, 5), trainer._augmented_test_images(x, 5))
    assert "augmented_test" not in to_dict(type(trainer.p)())


# ---- permuted MNIST: internals as the reference plotted them ----------------------------------------------
def _digits_trainer(**kw):
    from lop.experiments.base import RunSpec
    from lop.experiments.permuted_mnist import PermutedMNISTProblem, PermutedMNISTTrainer

    problem = PermutedMNISTProblem(
        dataset="digits", n_tasks=2, examples_per_task=120, unit_examples=60, chunk=30, width=24,
        depth=2, probe_examples=100, **kw,
    )  # fmt: skip
    cfg = MethodConfig(optimizer="sgd", lr=0.05)
    runs = [RunSpec("m", "d", {}, cfg, s) for s in (0, 1)]
    return PermutedMNISTTrainer(problem, runs, torch.device("cpu"))


def _collect(trainer) -> dict[str, torch.Tensor]:
    out: dict[str, list[torch.Tensor]] = {}
    for unit in range(trainer.n_units):
        for block in trainer.train_unit(unit):
            out.setdefault(block.name, []).append(block.values[:, 0])
    return {k: torch.stack(v, 1) for k, v in out.items()}  # [S, K]


def test_task_mean_weight_magnitude_averages_dense_samples() -> None:
    """k = 1: the mean over the task's steps of mean |w| after each update, recomputed by wrapping the
    learner's step; k = steps per task: one sample, the weights the next task's probe sees."""
    from lop import metrics

    trainer = _digits_trainer(weight_magnitude_every=1)
    seen: list[torch.Tensor] = []
    step = trainer.learner.step

    def recording_step(*args, **kwargs):
        out = step(*args, **kwargs)
        seen.append(metrics.weight_magnitude(trainer.net.weights))
        return out

    trainer.learner.step = recording_step  # type: ignore[method-assign]
    got = _collect(trainer)["weight_magnitude_task_mean"]  # [S, 2 tasks]
    per_step = torch.stack(seen, 1)  # [S, 240]
    expected = per_step.view(2, 2, 120).mean(-1)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    assert not torch.equal(got[:, 0], per_step[:, 0])  # a true average, not one snapshot

    sparse = _collect(_digits_trainer(weight_magnitude_every=120))
    assert torch.equal(sparse["weight_magnitude_task_mean"][:, 0], sparse["weight_magnitude"][:, 1])
    assert "weight_magnitude_task_mean" not in _collect(_digits_trainer())


def test_reference_internals_fraction_of_width_and_pooled_dead_units() -> None:
    m = _collect(_digits_trainer(reference_internals=True))
    for layer in (1, 2):
        torch.testing.assert_close(
            m[f"effective_rank_fraction/layer{layer}"], m[f"effective_rank/layer{layer}"].double() / 24
        )
    pooled = (m["dead_units/layer1"] * 24 + m["dead_units/layer2"] * 24) / 48
    torch.testing.assert_close(m["dead_units_pooled"], pooled.double())
    plain = _collect(_digits_trainer())
    new = {"effective_rank_fraction/layer1", "effective_rank_fraction/layer2", "dead_units_pooled"}
    assert set(m) - set(plain) == new
    for name, v in plain.items():  # nothing else changes
        assert torch.equal(v, m[name]), name


# ---- the new running state survives a checkpoint -----------------------------------------------------------
def _resumed_equals_straight(make, split: int) -> None:
    straight = make()
    want = [[(b.name, b.values.clone()) for b in straight.train_unit(u)] for u in range(straight.n_units)]
    first = make()
    for u in range(split):
        first.train_unit(u)
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    for u in range(split, resumed.n_units):
        got = [(b.name, b.values) for b in resumed.train_unit(u)]
        assert [n for n, _ in got] == [n for n, _ in want[u]]
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, want[u], strict=True))


def test_task_mean_weight_magnitude_resumes_mid_task() -> None:
    _resumed_equals_straight(lambda: _digits_trainer(weight_magnitude_every=7), split=1)  # unit 1: mid-task


def test_augmented_test_trackers_resume_mid_increment(cifar_dir) -> None:
    from lop.experiments.base import RunSpec
    from lop.experiments.incremental_cifar import IncrementalCifarProblem, IncrementalCifarTrainer

    problem = IncrementalCifarProblem(
        data_dir=str(cifar_dir), n_classes=4, classes_start=2, classes_per_increment=2, n_increments=2,
        epochs_per_increment=2, lr_milestones=(1,), lr_factors=(0.2,), batch_size=6, train_per_class=3,
        val_per_class=2, test_per_class=5, image_size=8, width=4, probe_images=8, eval_batch=7,
        augmented_test=True,
    )  # fmt: skip
    runs = [RunSpec("m", "d", {}, MethodConfig(lr=0.1, momentum=0.9), s) for s in (0, 1)]
    _resumed_equals_straight(lambda: IncrementalCifarTrainer(problem, runs, torch.device("cpu")), split=1)


# ---- Continual ImageNet: the reference's repeated class order ---------------------------------------------
def test_repeated_class_order_reuses_the_first_permutation() -> None:
    from lop.experiments.continual_imagenet import ContinualImageNetProblem
    from lop.problems.image_tasks import ClassGroupSequence
    from lop.rng import RunStreams

    fresh = ClassGroupSequence(RunStreams([0, 3]), n_classes=10, per_task=2).sequence(15)
    repeat = ClassGroupSequence(RunStreams([0, 3]), n_classes=10, per_task=2, repeat=True).sequence(15)
    assert torch.equal(repeat[:, :5], fresh[:, :5])  # block 0 is the same either way
    assert torch.equal(repeat[:, 5:10], repeat[:, :5]) and torch.equal(repeat[:, 10:], repeat[:, :5])
    assert not torch.equal(fresh[:, 5:10], fresh[:, :5])  # the default draws a fresh permutation
    assert "class_order" not in to_dict(ContinualImageNetProblem())
    assert to_dict(from_dict(ContinualImageNetProblem, {"class_order": "repeat"}))["class_order"] == "repeat"


def test_repeated_class_order_reaches_the_trainer(tmp_path) -> None:
    from lop.data.imagenet32 import prepare_imagenet32
    from lop.data.standins import write_standin
    from lop.experiments.base import RunSpec
    from lop.experiments.continual_imagenet import ContinualImageNetProblem, ContinualImageNetTrainer

    write_standin("imagenet32", tmp_path / "raw", size="small")
    data = prepare_imagenet32(tmp_path / "raw", tmp_path / "prepared")
    runs = [RunSpec("m", "d", {}, MethodConfig(lr=0.01, momentum=0.9), 0)]
    seqs = {}
    for order in ("fresh", "repeat"):
        problem = ContinualImageNetProblem(
            data_dir=str(data),
            class_order=order,
            n_classes=6,
            n_tasks=7,
            train_per_class=20,
            test_per_class=10,
        )
        tasks = ContinualImageNetTrainer(problem, runs, torch.device("cpu")).tasks
        seqs[order] = tasks.sequence(6)  # 2 blocks of 3 tasks
    assert torch.equal(seqs["repeat"][:, 3:], seqs["repeat"][:, :3])
    assert not torch.equal(seqs["fresh"][:, 3:], seqs["fresh"][:, :3])


# ---- CIFAR: the reference's first-50 validation split -----------------------------------------------------
def test_first_validation_split_holds_out_the_first_images_of_each_class() -> None:
    import numpy as np

    from lop.problems.image_tasks import first_validation_split

    labels = np.array([2, 0, 1, 0, 2, 1, 0, 1, 2, 0, 2, 1, 0, 2])
    train, val = _split_last(labels, 2)
    ftrain, fval = first_validation_split(labels, train, val)
    assert sorted([*ftrain, *fval]) == list(range(labels.size))  # the same images, re-split
    for c in range(3):
        members = np.flatnonzero(labels == c)  # file order
        assert fval[labels[fval] == c].tolist() == members[:2].tolist()  # the first two: validation
        assert val[labels[val] == c].tolist() == members[-2:].tolist()  # the artifact: the last two


def _split_last(labels, n_val):
    """The prepared artifact's split (last ``n_val`` of each class), for any label count."""
    import numpy as np

    is_val = np.zeros(labels.size, dtype=bool)
    for c in np.unique(labels):
        is_val[np.flatnonzero(labels == c)[-n_val:]] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def test_validation_split_option_changes_the_validation_images(cifar_dir) -> None:
    from lop.problems.image_tasks import load_cifar_tensors

    kw = dict(train_per_class=3, val_per_class=2, test_per_class=5, n_classes=6)
    last = load_cifar_tensors(cifar_dir, torch.device("cpu"), **kw)
    first = load_cifar_tensors(cifar_dir, torch.device("cpu"), validation_split="first", **kw)
    assert torch.equal(first.test, last.test)
    assert not torch.equal(first.val, last.val)
    # first: validation = the class's first images, so the default's first training images move to it
    assert torch.equal(first.val, last.train[:, :2])


# ---- CIFAR: probes in training mode (the reference's analysis) --------------------------------------------
def test_probe_bn_train_uses_batch_statistics_and_leaves_training_alone(cifar_dir) -> None:
    from lop.experiments.base import RunSpec
    from lop.experiments.incremental_cifar import IncrementalCifarProblem, IncrementalCifarTrainer

    cfg = MethodConfig(lr=0.1, momentum=0.9, weight_decay=5e-4)
    runs = [RunSpec("m", "d", {}, cfg, s) for s in (0, 1)]
    out = {}
    for mode in ("eval", "train"):
        problem = IncrementalCifarProblem(
            data_dir=str(cifar_dir), n_classes=6, classes_start=2, classes_per_increment=2, n_increments=2,
            epochs_per_increment=2, lr_milestones=(1,), lr_factors=(0.2,), batch_size=6, train_per_class=3,
            val_per_class=2, test_per_class=5, image_size=8, width=4, probe_images=8, eval_batch=8,
            probe_bn=mode,
        )  # fmt: skip
        trainer = IncrementalCifarTrainer(problem, runs, torch.device("cpu"))
        blocks = {}
        for unit in range(problem.n_epochs):
            for b in trainer.train_unit(unit):
                blocks.setdefault(b.name, []).append(b.values.clone())
        before = {k: v.clone() for k, v in trainer.net.buffers.items()}
        idx = torch.arange(8).expand(2, 8)
        probe = trainer.probe(trainer.data.train.flatten(0, 1), idx)
        assert all(torch.equal(before[k], v) for k, v in trainer.net.buffers.items())  # restored
        assert trainer.net.training  # back in training mode for the next step
        out[mode] = (blocks, probe, {k: v.clone() for k, v in trainer.net.params.items()})
    (b_eval, p_eval, w_eval), (b_train, p_train, w_train) = out["eval"], out["train"]
    assert not torch.equal(p_eval[1], p_train[1])  # batch statistics instead of running statistics
    assert all(torch.equal(w_eval[k], w_train[k]) for k in w_eval)  # training itself is unchanged
    probe_metrics = {
        n for n in b_eval if n.startswith(("dormant", "effective_rank", "stable_rank", "approximate", "abs_"))
    }
    assert probe_metrics
    for name in set(b_eval) - probe_metrics:
        assert all(torch.equal(a, b) for a, b in zip(b_eval[name], b_train[name], strict=True)), name
    assert any(
        not torch.equal(a, b) for n in probe_metrics for a, b in zip(b_eval[n], b_train[n], strict=True)
    )
