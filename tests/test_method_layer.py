"""The method layer (issue 9): every (experiment, method key) pair either changes the run or is
rejected before training; L2-Init works through the layer alone; hooks keep runs batch-independent."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from lop.algos.method_layer import POINTS, MethodStack, registry, supported_keys
from lop.config import MethodConfig, from_dict, to_dict
from lop.errors import ConfigError
from lop.experiments.base import RunSpec, check_supported, experiments, get_experiment
from lop.rng import RunStreams
from lop.runner import run_group
from tests.test_golden_metrics import (
    CIFAR,
    CL_CIFAR,
    CL_PERMUTED,
    CL_SPLIT,
    DIGITS,
    IMAGENET,
    PPO,
    SCR,
    metrics_digest,
)

CPU = torch.device("cpu")
SGD: dict[str, Any] = {"optimizer": "sgd", "lr": 0.01}
ADAM: dict[str, Any] = {"optimizer": "adam", "lr": 1e-3}
# one non-default value per MethodConfig key, applied to a baseline of the optimiser the key belongs to
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "optimizer": (SGD, {"optimizer": "adam"}),
    "lr": (SGD, {"lr": 0.02}),
    "momentum": (SGD, {"momentum": 0.5}),
    "betas": (ADAM, {"betas": [0.5, 0.6]}),
    "eps": (ADAM, {"eps": 1e-2}),
    "weight_decay": (SGD, {"weight_decay": 1e-2}),
    "noise_std": (SGD, {"noise_std": 1e-2}),
    "cbp": (SGD, {"cbp": {"replacement_rate": 0.05, "maturity": 1}}),
    "redo": (SGD, {"redo": {"threshold": 0.5, "every": 1}}),
    "arch": (SGD, {"arch": "linear"}),
    "head_reset": (SGD, {"head_reset": True}),
    "retrain": (SGD, {"retrain": True}),
    "extra": (SGD, {"extra": {"anything": 1}}),
    "l2_init": (SGD, {"l2_init": {"strength": 0.5}}),
    "moe_adapters": (SGD, {"moe_adapters": {"top_k": 1}}),
    "si": (ADAM, {"si": {"c": 0.5, "xi": 0.1}}),
    "ewc": (ADAM, {"ewc": {"lam": 100.0, "fisher": "exact", "fisher_samples": 16}}),
    "replay": (SGD, {"replay": {"buffer": 64, "policy": "reservoir", "batch": 8}}),
    "lwf": (SGD, {"lwf": {"alpha": 1.0, "temperature": 2.0}}),
    "sampler": (SGD, {"sampler": {"kind": "fifo"}}),
    "distill": (SGD, {"distill": {"loss": "kl"}}),
    "fc_correction": (SGD, {"fc_correction": {"kind": "wa"}}),
    "joint": (SGD, {"joint": True}),
    "den": (ADAM, {"den": {"expand_units": 2, "phase_steps": 5}}),
}
# the CLIP experiments' smoke problem: the tiny random CLIP on the stand-in CIFAR-100
MOE = {
    "n_steps": 2,
    "n_classes": 4,
    "backbone": "tiny",
    "tokenizer": "bytes",
    "train_per_class": 8,
    "val_per_class": 2,
    "test_per_class": 4,
    "batch_size": 8,
    "eval_batch": 16,
}
# budgeted_cl on the embedded digits, pretrained in the process; stored logits so that `distill` can run
BUDGETED: dict[str, Any] = {
    "dataset": "digits", "n_classes": 6, "n_steps": 3, "iterations": 4, "batch_size": 8, "train_per_class": 20,
    "test_per_class": 10, "width": 16, "pretrain_epochs": 2, "pretrain_batch": 16, "probe_examples": 10,
    "eval_batch": 64, "store_logits": True,
}
PROBLEMS: dict[str, tuple[dict[str, Any], str | None]] = {
    "scr": (SCR, None),
    "permuted_mnist": (DIGITS, None),
    "continual_imagenet": (IMAGENET, "imagenet32"),
    "incremental_cifar": (CIFAR, "cifar100"),
    "ppo_ant": (PPO, None),
    "moe_cifar": (MOE, "cifar100"),
    "budgeted_cl": (BUDGETED, None),
    "cl_permuted_mnist": (CL_PERMUTED, None),
    "cl_split_mnist": (CL_SPLIT, None),
    "cl_split_cifar100": (CL_CIFAR, "cifar100"),
}
PPO_FAMILY = ("ppo_ant", "ppo_mujoco", "ppo_slippery_ant")


def test_every_method_config_key_has_a_variant():
    assert set(VARIANTS) == {f.name for f in dataclasses.fields(MethodConfig)}


def test_ppo_experiments_share_their_support():
    assert len({get_experiment(e).supports for e in PPO_FAMILY}) == 1


@pytest.mark.parametrize("experiment", sorted(experiments()))
@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_unsupported_keys_are_rejected_naming_the_key(experiment, key):
    spec = get_experiment(experiment)
    base, change = VARIANTS[key]
    config = from_dict(MethodConfig, {**base, **change}, "m")
    if key in spec.supports:
        check_supported(spec, config, "f.yaml:methods.m")  # no error
        return
    with pytest.raises(ConfigError) as e:
        check_supported(spec, config, "f.yaml:methods.m")
    text = str(e.value)
    assert f"f.yaml:methods.m.{key}" in text and experiment in text


def test_run_file_with_unsupported_key_stops_with_one_error_line(tmp_path):
    from lop.cli import main

    rf = tmp_path / "run.yaml"
    rf.write_text(
        "experiment: scr\nproblem: {n_examples: 200, flip_every: 50, bin_size: 100, chunk: 100}\n"
        "config: {optimizer: sgd, head_reset: true}\n"
    )
    assert main(["run", "--run-file", str(rf), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("run.json"))


def test_params_file_with_unsupported_key_is_rejected(tmp_path):
    import yaml

    from lop.params import load_params

    raw = yaml.safe_load(Path("params/scr.yaml").read_text())
    raw["methods"]["bp"]["base"]["redo"] = {"threshold": 0.1}
    p = tmp_path / "scr.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"scr\.yaml:methods\.bp\.redo: not supported by experiment scr"):
        load_params(p)


def test_mismatched_optimizer_settings_are_rejected():
    with pytest.raises(ConfigError, match="momentum"):
        from_dict(MethodConfig, {"optimizer": "adam", "momentum": 0.9})
    with pytest.raises(ConfigError, match="betas"):
        from_dict(MethodConfig, {"optimizer": "sgd", "betas": [0.9, 0.9]})


@pytest.fixture(scope="module")
def prepared(prepared_standins) -> dict[str, Path]:
    return prepared_standins


def _digest(experiment: str, method: dict[str, Any], tmp: Path, prepared: dict[str, Path], seeds=(0,)) -> str:
    spec = get_experiment(experiment)
    problem, data = PROBLEMS[experiment]
    prob = dict(problem)
    if data is not None:
        prob["data_dir"] = str(prepared[data])
    problem_obj = from_dict(spec.problem_cls, prob, "problem")
    config = from_dict(MethodConfig, method, "method")
    runs = [RunSpec("m", "default", {}, config, s) for s in seeds]
    return metrics_digest(run_group(spec, problem_obj, runs, tmp, scale="smoke", device=CPU, progress=False))


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(PROBLEMS))
def test_every_supported_key_changes_the_run(experiment, tmp_path, prepared):
    """Each supported key, set to a non-default value, changes the metrics (so it is not ignored)."""
    spec = get_experiment(experiment)
    baselines: dict[str, str] = {}
    unchanged = []
    for key in sorted(spec.supports):
        base, change = VARIANTS[key]
        name = base["optimizer"]
        if name not in baselines:
            baselines[name] = _digest(experiment, base, tmp_path / f"base-{name}", prepared)
        got = _digest(experiment, {**base, **change}, tmp_path / key, prepared)
        if got == baselines[name]:
            unchanged.append(key)
    assert not unchanged, f"{experiment}: these supported keys did not change the run: {unchanged}"


# ---- L2-Init through the layer alone ---------------------------------------------------------------
def test_l2_init_gradient_is_two_lambda_times_drift():
    streams = RunStreams([0, 1], CPU)
    p = torch.zeros(2, 3, 4)
    cfgs = [from_dict(MethodConfig, {"l2_init": {"strength": lam}}) for lam in (0.1, 0.5)]
    stack = MethodStack(cfgs, streams, params=[p])
    hook = stack.get("l2_init")
    assert hook is not None and set(stack.hooks) == {"l2_init"}
    with torch.no_grad():
        p.add_(torch.arange(24.0).view(2, 3, 4))
    grads = [torch.ones_like(p)]
    hook.edit_grads(0, grads)
    drift = torch.arange(24.0).view(2, 3, 4)
    expected = torch.ones_like(p) + torch.tensor([0.2, 1.0]).view(2, 1, 1) * drift
    torch.testing.assert_close(grads[0], expected)


def test_l2_init_with_zero_strength_equals_plain_sgd(tmp_path, prepared):
    a = _digest("scr", SGD, tmp_path / "a", prepared)
    b = _digest("scr", {**SGD, "l2_init": {"strength": 0.0}}, tmp_path / "b", prepared)
    c = _digest("scr", {**SGD, "l2_init": {"strength": 0.1}}, tmp_path / "c", prepared)
    assert a == b != c


def test_l2_init_keeps_weights_nearer_their_initialisation():
    """With a strong L2-Init penalty the weights drift less from θ₀ than with plain SGD."""
    from lop.experiments.scr import SCRProblem, SCRTrainer

    problem = from_dict(SCRProblem, {**SCR, "n_examples": 1000, "bin_size": 500, "chunk": 500})
    drift = {}
    for lam in (None, 1.0):
        cfg = from_dict(MethodConfig, {**SGD, "lr": 0.05, **({"l2_init": {"strength": lam}} if lam else {})})
        trainer = SCRTrainer(problem, [RunSpec("m", "d", {}, cfg, 0)], CPU)
        w0 = [w.clone() for w in trainer.net.parameters()]
        for u in range(trainer.n_units):
            trainer.train_unit(u)
        drift[lam] = sum(float((w - w_0).square().sum()) for w, w_0 in zip(trainer.net.parameters(), w0))
    assert drift[1.0] < 0.5 * drift[None]


def test_l2_init_run_does_not_depend_on_its_batch(tmp_path, prepared):
    m = {**SGD, "l2_init": {"strength": 0.1}, "noise_std": 1e-3}
    alone = _digest("permuted_mnist", m, tmp_path / "alone", prepared, seeds=(3,))
    run_group_dirs = tmp_path / "batch"
    _digest("permuted_mnist", m, run_group_dirs, prepared, seeds=(0, 3))
    in_batch = metrics_digest([next(run_group_dirs.rglob("seed-3"))])
    assert alone == in_batch


def test_l2_init_state_resumes_identically():
    """θ₀ is resume state: a trainer restored from a state dict continues exactly like the original."""
    from lop.experiments.scr import SCRProblem, SCRTrainer

    problem = from_dict(SCRProblem, {**SCR, "n_examples": 1000, "bin_size": 500, "chunk": 500})
    cfg = from_dict(MethodConfig, {**SGD, "l2_init": {"strength": 0.3}})
    runs = [RunSpec("m", "d", {}, cfg, s) for s in (0, 1)]
    a = SCRTrainer(problem, runs, CPU)
    a.train_unit(0)
    state = a.state_dict()
    b = SCRTrainer(problem, runs, CPU)
    b.load_state_dict(state)
    assert torch.equal(a.train_unit(1)[0].values, b.train_unit(1)[0].values)


def test_l2_init_serialises_only_when_set():
    assert "l2_init" not in to_dict(from_dict(MethodConfig, {}))
    assert to_dict(from_dict(MethodConfig, {"l2_init": {"strength": 0.2}}))["l2_init"] == {"strength": 0.2}


# ---- the layer itself ------------------------------------------------------------------------------
def test_registry_points_are_known_and_learners_declare_theirs():
    from lop.algos.online import OnlineMLPLearner
    from lop.problems.image_tasks import MinibatchLearner
    from lop.rl.ppo import PPOLearner

    for entry in registry().values():
        assert entry.points <= set(POINTS)
    assert "redo" not in supported_keys(OnlineMLPLearner.HOOK_POINTS)
    assert "redo" in supported_keys(PPOLearner.HOOK_POINTS)
    assert {"l2_init", "noise_std", "cbp"} <= supported_keys(MinibatchLearner.HOOK_POINTS)


def test_stack_rejects_a_method_the_learner_cannot_run():
    streams = RunStreams([0], CPU)
    cfg = from_dict(MethodConfig, {"redo": {}})
    with pytest.raises(ConfigError, match="redo"):
        MethodStack([cfg], streams, params=[torch.zeros(1, 2)], learner_points=frozenset({"after_step"}))


def test_stack_rejects_mixed_batches():
    streams = RunStreams([0, 1], CPU)
    cfgs = [from_dict(MethodConfig, {"l2_init": {}}), from_dict(MethodConfig, {})]
    with pytest.raises(ConfigError, match="all runs of one batch"):
        MethodStack(cfgs, streams, params=[torch.zeros(2, 2)])
