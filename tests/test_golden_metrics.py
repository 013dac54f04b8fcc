"""Golden metrics: short CPU runs of every experiment family with BP, CBP, S&P, L2 and ReDo must give
bit-identical metrics across refactors (issue 9, item 6).

`tests/fixtures/golden_metrics.json` holds, per CPU capability of torch's kernels (AVX512, AVX2, ...: the
vector width changes float32 summation orders, so the bits are per capability) and per case, the SHA-256 of
the runs' tidy metrics (metric, step, value as float64 bytes). A change that is *meant* to change results
regenerates this machine's entries with ``LOP_WRITE_GOLDEN=1 python -m pytest tests/test_golden_metrics.py``,
drops the changed cases' entries of the capabilities it cannot run, and says which cases changed and why in
its commit message. Cases without an entry for the running capability are named in a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from lop.config import MethodConfig, from_dict
from lop.experiments.base import RunSpec, get_experiment
from lop.runner import run_group

FIXTURE = Path(__file__).parent / "fixtures" / "golden_metrics.json"
WRITE = os.environ.get("LOP_WRITE_GOLDEN") == "1"
CPU = torch.device("cpu")

SGD = {"optimizer": "sgd", "lr": 0.01}
CBP_ADAPT = {**SGD, "cbp": {"replacement_rate": 1e-3, "maturity": 20, "utility": "adaptable_contribution"}}
ADAM = {"optimizer": "adam", "lr": 1e-4, "betas": [0.99, 0.99]}

SCR = {"n_examples": 2000, "flip_every": 500, "bin_size": 1000, "chunk": 500}
DIGITS = {
    "dataset": "digits",
    "n_tasks": 3,
    "examples_per_task": 300,
    "unit_examples": 150,
    "chunk": 150,
    "width": 32,
    "depth": 2,
    "probe_examples": 100,
}
IMAGENET = {"n_tasks": 2, "epochs_per_task": 2, "train_per_class": 20, "test_per_class": 10, "batch_size": 20}
CIFAR = {
    "n_classes": 10,
    "classes_start": 2,
    "classes_per_increment": 2,
    "n_increments": 2,
    "epochs_per_increment": 2,
    "lr_milestones": [1],
    "lr_factors": [0.2],
    "batch_size": 6,
    "train_per_class": 3,
    "val_per_class": 2,
    "test_per_class": 5,
    "image_size": 8,
    "probe_images": 20,
    "eval_batch": 100,
}
PPO = {
    "total_steps": 256,
    "rollout": 128,
    "epochs": 2,
    "minibatch": 64,
    "hidden": [16, 16],
    "max_episode_steps": 60,
    "internals_every": 1,
    "probe_steps": 64,
}
CL_PERMUTED = {
    "dataset": "digits",
    "n_train": 300,
    "n_test": 100,
    "n_tasks": 3,
    "width": 32,
    "epochs_per_task": 2,
    "batch_size": 50,
    "probe_examples": 50,
}
CL_SPLIT = {"dataset": "digits", "n_tasks": 3, "width": 32, "epochs_per_task": 2, "batch_size": 32, "probe_examples": 50}
CL_CIFAR = {
    "n_tasks": 2,
    "classes_per_task": 3,
    "train_per_class": 10,
    "test_per_class": 5,
    "epochs_per_task": 2,
    "batch_size": 10,
    "probe_examples": 10,
}
CL_ADAM = {"optimizer": "adam", "lr": 1e-3}
CONV_SGD = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9}
CIFAR_SGD = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}
CONTRIB = {"replacement_rate": 0.01, "maturity": 2, "utility": "contribution"}

# the CLIP experiments: tiny random CLIP, byte tokenizer, 2 tasks of 2 classes on the stand-in CIFAR-100
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
MOE_ADAM = {"optimizer": "adam", "lr": 0.01}
MOE_DDAS = {
    **MOE_ADAM,
    "moe_adapters": {
        "experts": 3,
        "top_k": 2,
        "routers": "per_task",
        "freeze_top": 1,
        "ddas": "per_sample",
        "ddas_steps_first": 5,
        "ddas_steps": 5,
    },
}

# case -> (experiment, problem, method config, data set the problem reads or None)
CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any], str | None]] = {
    "scr/bp": ("scr", SCR, SGD, None),
    "scr/l2": ("scr", SCR, {**SGD, "weight_decay": 1e-3}, None),
    "scr/snp": ("scr", SCR, {**SGD, "weight_decay": 1e-2, "noise_std": 1e-3}, None),
    "scr/cbp": ("scr", SCR, CBP_ADAPT, None),
    "scr/adam": ("scr", SCR, {"optimizer": "adam", "lr": 1e-3}, None),
    "permuted_digits/bp": ("permuted_mnist", DIGITS, SGD, None),
    "permuted_digits/cbp": ("permuted_mnist", DIGITS, {**CBP_ADAPT, "cbp": {**CBP_ADAPT["cbp"], "maturity": 50}}, None),
    "continual_imagenet/bp": ("continual_imagenet", IMAGENET, CONV_SGD, "imagenet32"),
    "continual_imagenet/snp": (
        "continual_imagenet", IMAGENET, {**CONV_SGD, "weight_decay": 1e-3, "noise_std": 1e-3}, "imagenet32"
    ),
    "continual_imagenet/cbp": ("continual_imagenet", IMAGENET, {**CONV_SGD, "cbp": CONTRIB}, "imagenet32"),
    "incremental_cifar/base": ("incremental_cifar", CIFAR, CIFAR_SGD, "cifar100"),
    "incremental_cifar/head_reset": ("incremental_cifar", CIFAR, {**CIFAR_SGD, "head_reset": True}, "cifar100"),
    "incremental_cifar/retrain": ("incremental_cifar", CIFAR, {**CIFAR_SGD, "retrain": True}, "cifar100"),
    "incremental_cifar/cbp": ("incremental_cifar", CIFAR, {**CIFAR_SGD, "cbp": CONTRIB}, "cifar100"),
    "ppo_ant/standard": ("ppo_ant", PPO, ADAM, None),
    "ppo_ant/cbp_l2": (
        "ppo_ant",
        PPO,
        {**ADAM, "weight_decay": 1e-4, "cbp": {"replacement_rate": 0.01, "maturity": 20, "utility": "contribution"}},
        None,
    ),
    "ppo_ant/redo": ("ppo_ant", PPO, {**ADAM, "weight_decay": 1e-4, "redo": {"threshold": 0.1, "every": 1}}, None),
    "ppo_slippery_ant/standard": ("ppo_slippery_ant", {**PPO, "change_every": 128}, ADAM, None),
    "moe_cifar/moe_ddas": ("moe_cifar", MOE, MOE_DDAS, "cifar100"),
    "moe_cifar/full_finetune": ("moe_cifar", MOE, {**MOE_ADAM, "moe_adapters": {"mode": "full_finetune"}}, "cifar100"),
    "cl_permuted_digits/finetune": ("cl_permuted_mnist", CL_PERMUTED, CL_ADAM, None),
    "cl_permuted_digits/cbp": ("cl_permuted_mnist", CL_PERMUTED, {**CL_ADAM, "cbp": CONTRIB}, None),
    "cl_split_digits/task_joint": ("cl_split_mnist", CL_SPLIT, {**CL_ADAM, "joint": True}, None),
    "cl_split_digits/class_finetune": ("cl_split_mnist", {**CL_SPLIT, "scenario": "class"}, CL_ADAM, None),
    "cl_split_digits/domain_l2_init": (
        "cl_split_mnist", {**CL_SPLIT, "scenario": "domain"}, {**CL_ADAM, "l2_init": {"strength": 1e-3}}, None
    ),
    "cl_split_cifar100/finetune": ("cl_split_cifar100", CL_CIFAR, CL_ADAM, "cifar100"),
    "cl_split_digits/task_den": ("cl_split_mnist", CL_SPLIT, {**CL_ADAM, "weight_decay": 1e-4, "den": {}}, None),
    "cl_permuted_digits/den": (
        "cl_permuted_mnist", CL_PERMUTED, {**CL_ADAM, "weight_decay": 1e-4, "den": {"loss_threshold": 0.5}}, None
    ),
}


@pytest.fixture(scope="module")
def prepared(prepared_standins) -> dict[str, Path]:
    return prepared_standins


def metrics_digest(run_dirs: list[Path]) -> str:
    """SHA-256 over every run's metrics in a canonical order (metric, step; values as float64 bytes)."""
    h = hashlib.sha256()
    for d in run_dirs:
        df = pd.read_parquet(d / "metrics.parquet").sort_values(["metric", "step"], kind="stable")
        h.update(d.name.encode())
        for metric, group in df.groupby("metric", sort=True):
            h.update(str(metric).encode())
            h.update(group["step"].to_numpy("int64").tobytes())
            h.update(group["value"].to_numpy("float64").tobytes())
    return h.hexdigest()


def run_case(name: str, tmp: Path, prepared: dict[str, Path]) -> str:
    experiment, problem, method, data = CASES[name]
    spec = get_experiment(experiment)
    prob = dict(problem)
    if data is not None:
        prob["data_dir"] = str(prepared[data])
    problem_obj = from_dict(spec.problem_cls, prob, "problem")
    config = from_dict(MethodConfig, method, "method")
    runs = [RunSpec("m", "default", {}, config, seed) for seed in (0, 3)]
    dirs = run_group(spec, problem_obj, runs, tmp, scale="smoke", device=CPU, progress=False)
    return metrics_digest(dirs)


@pytest.mark.slow
def test_golden_metrics_are_bit_identical(tmp_path, prepared):
    got = {name: run_case(name, tmp_path / name.replace("/", "-"), prepared) for name in CASES}
    capability = torch.backends.cpu.get_cpu_capability()
    recorded = json.loads(FIXTURE.read_text()) if FIXTURE.exists() else {}
    if WRITE:
        recorded[capability] = got
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        FIXTURE.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    expected = recorded.get(capability, {})
    if not expected:
        pytest.skip(f"no golden metrics recorded for CPU capability {capability}; LOP_WRITE_GOLDEN=1 records them")
    assert set(expected) <= set(got), f"golden cases without a test case: {sorted(set(expected) - set(got))}"
    changed = sorted(k for k in expected if expected[k] != got[k])
    assert not changed, f"metrics changed for {changed} ({capability})"
    unrecorded = sorted(set(got) - set(expected))
    if unrecorded:
        warnings.warn(f"no golden metrics for {unrecorded} on {capability}: not compared", stacklevel=1)
