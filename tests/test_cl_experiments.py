"""The task-sequence benchmarks (cl_permuted_mnist, cl_split_mnist, cl_split_cifar100): the accuracy matrix
with its random-init row, the summaries, the scenario masks, joint training, batch independence and the
scenario errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_lop

from lop import cl_metrics
from lop.config import MethodConfig, from_dict
from lop.errors import ConfigError
from lop.experiments.base import RunSpec, get_experiment
from lop.params import load_params
from lop.runner import run_group
from tests.test_golden_metrics import CL_PERMUTED, CL_SPLIT

CPU = torch.device("cpu")
ADAM = {"optimizer": "adam", "lr": 1e-3}


def _runs(method: dict[str, Any], seeds=(0, 1)) -> list[RunSpec]:
    config = from_dict(MethodConfig, method, "method")
    return [RunSpec("m", "default", {}, config, s) for s in seeds]


def _train(experiment: str, problem: dict[str, Any], method: dict[str, Any], tmp: Path, seeds=(0, 1)):
    spec = get_experiment(experiment)
    prob = from_dict(spec.problem_cls, problem, "problem")
    dirs = run_group(spec, prob, _runs(method, seeds), tmp, scale="smoke", device=CPU, progress=False)
    return {int(d.name.split("-")[1]): pd.read_parquet(d / "metrics.parquet") for d in dirs}


def _matrix(df: pd.DataFrame) -> np.ndarray:
    return cl_metrics.accuracy_matrix(df[["step", "metric", "value"]].itertuples(index=False))


def _trainer(experiment: str, problem: dict[str, Any], method: dict[str, Any] = ADAM, seeds=(0, 1)):
    spec = get_experiment(experiment)
    return spec.build(from_dict(spec.problem_cls, problem, "problem"), _runs(method, seeds), CPU)


@pytest.mark.slow
def test_smoke_run_writes_the_full_matrix_and_its_summaries(tmp_path):
    out = tmp_path / "runs"
    r = run_lop("run", "--params", "params/cl_permuted_mnist.yaml", "--scale", "smoke", "--method", "finetune",
                "--out", str(out))
    assert r.returncode == 0, r.stderr
    df = pd.read_parquet(out / "finetune" / "default" / "seed-0" / "metrics.parquet")
    r_mat = _matrix(df)
    assert r_mat.shape == (4, 3) and not np.isnan(r_mat).any()  # rows 0 (random init) .. 3, every task
    for j in (1, 2, 3):
        assert sorted(df.loc[df.metric == cl_metrics.task_metric(j), "step"]) == [0, 1, 2, 3]
    final = df[df.step == 3].set_index("metric")["value"]
    for name, value in cl_metrics.summaries(r_mat).items():
        assert final[name] == pytest.approx(value, abs=1e-12)
    for probe in ("dead_units/layer1", "dormant_units/layer2", "effective_rank/layer1", "stable_rank/layer2",
                  "weight_magnitude"):
        assert sorted(df.loc[df.metric == probe, "step"]) == [0, 1, 2, 3]


def test_permuted_tasks_use_one_permutation_per_run_and_task_one_unpermuted():
    tr = _trainer("cl_permuted_mnist", CL_PERMUTED)
    perms = tr.data.perms  # [S, T, D]
    assert torch.equal(perms[:, 0], torch.arange(64).expand(2, 64))
    assert not torch.equal(perms[0, 1], perms[1, 1]) and not torch.equal(perms[0, 1], perms[0, 2])
    rows = torch.tensor([[5, 6], [5, 6]])
    x, y = tr.gather(tr.data.train, rows, torch.full_like(rows, 1))
    assert torch.equal(x[0, 0], tr.data.train.x[5][perms[0, 1]]) and torch.equal(y[0], tr.data.train.local[[5, 6]])


@pytest.mark.parametrize(("scenario", "n_out"), [("task", 6), ("domain", 2), ("class", 6)])
def test_scenario_heads_labels_and_masks(scenario, n_out):
    tr = _trainer("cl_split_mnist", {**CL_SPLIT, "scenario": scenario})
    assert tr.net.sizes[-1] == n_out
    task = 2  # digits 4 and 5
    rows = tr.data.test.rows[task].expand(2, -1)
    x, y = tr.gather(tr.data.test, rows, torch.full_like(rows, task))
    digits = tr.data.test.local[rows] + 2 * task
    assert torch.equal(y, digits if scenario != "domain" else digits - 4)
    if scenario == "task":  # predictions stay inside the example's own task
        pred = tr.learner.predict(x, y)
        assert set(pred.unique().tolist()) <= {4, 5}
    if scenario == "class":  # after one task only the first two outputs can win
        assert tr.n_logits(1) == 2 and tr.n_logits(3) == 6
        pred = tr.learner.predict(x, None, tr.n_logits(1))
        assert set(pred.unique().tolist()) <= {0, 1}


def test_joint_equals_finetune_on_the_first_task_and_then_trains_on_the_union(tmp_path):
    fine = _train("cl_split_mnist", CL_SPLIT, ADAM, tmp_path / "f", seeds=(0,))[0]
    joint = _train("cl_split_mnist", CL_SPLIT, {**ADAM, "joint": True}, tmp_path / "j", seeds=(0,))[0]
    rf, rj = _matrix(fine), _matrix(joint)
    np.testing.assert_array_equal(rf[:2], rj[:2])  # task 1: the same pool in the same order
    assert not np.array_equal(rf[2:], rj[2:])
    # the union keeps the old tasks: joint forgets less than finetuning on the same stream
    assert cl_metrics.forgetting(rj) < cl_metrics.forgetting(rf)


def test_a_run_does_not_depend_on_its_batch(tmp_path):
    both = _train("cl_split_mnist", {**CL_SPLIT, "scenario": "class"}, ADAM, tmp_path / "b", seeds=(0, 1))
    alone = _train("cl_split_mnist", {**CL_SPLIT, "scenario": "class"}, ADAM, tmp_path / "a", seeds=(1,))
    pd.testing.assert_frame_equal(both[1], alone[1], check_exact=True)


def test_bad_scenario_settings_stop_with_one_error(tmp_path):
    spec = get_experiment("cl_split_mnist")
    with pytest.raises(ConfigError, match="scenario"):
        from_dict(spec.problem_cls, {**CL_SPLIT, "scenario": "instance"}, "problem")
    with pytest.raises(ConfigError, match="n_tasks"):
        from_dict(spec.problem_cls, {**CL_SPLIT, "n_tasks": 6}, "problem")
    params = tmp_path / "p.yaml"
    params.write_text(
        "experiment: permuted_mnist\nmethods:\n  joint: {base: {joint: true}}\n"
        "scales:\n  smoke: {problem: {dataset: digits, n_tasks: 1}}\n"
    )
    with pytest.raises(ConfigError, match=r"methods\.joint\.joint: not supported by experiment permuted_mnist"):
        load_params(params)


def test_a_method_that_does_not_list_the_scenario_is_rejected(monkeypatch):
    from lop.config import SIConfig

    monkeypatch.setattr(SIConfig, "SCENARIOS", frozenset({"task"}))
    si = {**ADAM, "si": {"c": 0.1, "xi": 0.1}}
    _trainer("cl_split_mnist", {**CL_SPLIT, "scenario": "task"}, si)  # listed: fine
    with pytest.raises(ConfigError, match=r"methods\.m\.si: .*scenario: class"):
        _trainer("cl_split_mnist", {**CL_SPLIT, "scenario": "class"}, si)
