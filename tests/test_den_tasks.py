"""DEN on the task-sequence benchmarks (lop.problems.den_tasks): it replaces the plain learner when `den`
is set, records its metrics, resumes per task bit-identically, does not depend on its batch, and is
rejected where it cannot run."""

from __future__ import annotations

import pytest
import torch

from lop.config import MethodConfig, from_dict
from lop.errors import ConfigError
from lop.experiments.base import RunSpec, get_experiment
from lop.runner import run_group
from tests.test_golden_metrics import metrics_digest

CPU = torch.device("cpu")
DEN = {"optimizer": "adam", "lr": 1e-2, "weight_decay": 1e-4, "den": {"loss_threshold": 0.0}}
PROBLEMS = {
    "cl_split_mnist": {
        "dataset": "digits",
        "n_train": 600,
        "n_test": 200,
        "n_tasks": 3,
        "width": 16,
        "epochs_per_task": 1,
        "batch_size": 32,
    },
    "cl_permuted_mnist": {
        "dataset": "digits",
        "n_train": 300,
        "n_test": 100,
        "n_tasks": 3,
        "width": 16,
        "epochs_per_task": 1,
        "batch_size": 32,
    },
}


def trainer(experiment: str, method=DEN, seeds=(0,), **problem):
    spec = get_experiment(experiment)
    p = from_dict(spec.problem_cls, {**PROBLEMS[experiment], **problem}, "problem")
    cfg = from_dict(MethodConfig, method, "m")
    return spec.build(p, [RunSpec("m", "d", {}, cfg, s) for s in seeds], CPU)


def run_all(tr) -> dict[str, dict[int, list[float]]]:
    out: dict[str, dict[int, list[float]]] = {}
    for u in range(tr.n_units):
        for b in tr.train_unit(u):
            out.setdefault(b.name, {})[int(b.steps[0])] = b.values[:, 0].tolist()
    return out


@pytest.mark.parametrize("experiment", sorted(PROBLEMS))
def test_den_replaces_the_learner_and_records_its_metrics(experiment):
    from lop.algos.den import DENLearner

    tr = trainer(experiment)
    assert isinstance(tr.learner, DENLearner)
    m = run_all(tr)
    for name in (
        "acc",
        "bwt",
        "forgetting",
        "auroc",
        "params_in_use",
        "live_units/layer1",
        "live_units/layer2",
    ):
        assert name in m, name
    assert set(m["test_accuracy/task_3"]) == {0, 1, 2, 3} and set(m["test_auroc/task_1"]) == {0, 1, 2, 3}
    # loss threshold 0: every later task expands by 10 units per layer (minus pruned ones)
    assert m["den_expanded"][2] == [1.0] and m["den_expanded"][1] == [0.0]
    assert m["live_units/layer1"][1] == [16.0] and 16.0 < m["live_units/layer1"][3][0] <= 16.0 + 2 * 20
    assert m["params_in_use"][3][0] > m["params_in_use"][1][0]
    chance = sum(m[f"test_accuracy/task_{j}"][0][0] for j in (1, 2, 3)) / 3  # untrained heads: constant
    assert chance + 0.15 < m["acc"][3][0] <= 1.0


def test_plain_runs_keep_the_plain_learner():
    from lop.problems.task_sequence import TaskSequenceLearner

    assert isinstance(
        trainer("cl_split_mnist", {"optimizer": "adam", "lr": 1e-3}).learner, TaskSequenceLearner
    )


@pytest.mark.parametrize("experiment", sorted(PROBLEMS))
def test_den_resumes_per_task_bit_identically(experiment):
    a = trainer(experiment, seeds=(0, 1))
    a.train_unit(0)
    a.train_unit(1)
    b = trainer(experiment, seeds=(0, 1))
    b.load_state_dict({k: v for k, v in a.state_dict().items()})
    for u in (2,):
        ba, bb = a.train_unit(u), b.train_unit(u)
        assert [x.name for x in ba] == [x.name for x in bb]
        assert all(torch.equal(x.values, y.values) for x, y in zip(ba, bb))


def test_den_run_does_not_depend_on_its_batch(tmp_path):
    spec = get_experiment("cl_split_mnist")
    p = from_dict(spec.problem_cls, PROBLEMS["cl_split_mnist"], "problem")
    cfg = from_dict(MethodConfig, {**DEN, "den": {}}, "m")
    other = from_dict(MethodConfig, {**DEN, "lr": 3e-3, "den": {"loss_threshold": 1e3}}, "m")
    alone = run_group(
        spec, p, [RunSpec("m", "d", {}, cfg, 3)], tmp_path / "a", scale="smoke", device=CPU, progress=False
    )
    run_group(
        spec,
        p,
        [RunSpec("m", "o", {}, other, 0), RunSpec("m", "d", {}, cfg, 3)],
        tmp_path / "b",
        scale="smoke",
        device=CPU,
        progress=False,
    )
    assert metrics_digest(alone) == metrics_digest([next((tmp_path / "b").rglob("d/seed-3"))])


def test_den_is_rejected_without_task_identity_and_with_joint_training():
    with pytest.raises(ConfigError, match=r"den: works in the domain/task-incremental scenario\(s\) only"):
        trainer("cl_split_mnist", scenario="class")
    with pytest.raises(ConfigError, match="joint"):
        trainer("cl_split_mnist", {**DEN, "joint": True})
    with pytest.raises(ConfigError, match=r"problem\.activation"):
        trainer("cl_split_mnist", activation="tanh")
    with pytest.raises(ConfigError, match=r"den\.capacity"):
        trainer("cl_split_mnist", {**DEN, "den": {"capacity": 8}})


@pytest.mark.slow
def test_den_smoke_resumes_after_sigkill_bit_identically(tmp_path):
    """The pipeline's job for `den` at smoke scale, killed after its first task and resumed, writes the
    same metrics as an uninterrupted run."""
    import pandas as pd
    from conftest import run_lop

    args = [
        "run",
        "--params",
        "params/cl_split_mnist.yaml",
        "--scale",
        "smoke",
        "--method",
        "den",
        "--setting-id",
        "problem.scenario=task",
        "--checkpoint-every",
        "1",
    ]
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert run_lop(*args, "--out", str(full)).returncode == 0
    r = run_lop(*args, "--out", str(killed), env={"LOP_CRASH_AFTER_UNIT": "1"})
    assert r.returncode == -9, r.stderr
    r = run_lop(*args, "--out", str(killed))
    assert r.returncode == 0 and "resumed" in r.stderr, r.stderr
    a = sorted(full.rglob("metrics.parquet"))
    b = sorted(killed.rglob("metrics.parquet"))
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        dx = pd.read_parquet(x)
        pd.testing.assert_frame_equal(dx, pd.read_parquet(y), check_exact=True)
        assert {"acc", "auroc", "params_in_use", "live_units/layer1"} <= set(dx["metric"])
