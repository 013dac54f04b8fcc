"""The PPO experiments on the run contract: params validation, metrics, divergence, resume, learning."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

pytest.importorskip("gymnasium.envs.mujoco", reason="needs gymnasium[mujoco] (the rl extra)")

from conftest import REPO, run_lop

from lop.config import MethodConfig
from lop.errors import ConfigError
from lop.experiments.base import RunSpec, get_experiment
from lop.params import load_params, select_runs
from lop.runner import run_group

PARAMS = ["ppo_slippery_ant", "ppo_ant", "ppo_mujoco"]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # as the pipeline runs jobs
SMOKE_PROBLEM = {
    "total_steps": 512,
    "rollout": 256,
    "epochs": 2,
    "minibatch": 64,
    "hidden": [32, 32],
    "probe_steps": 128,
}


@pytest.fixture
def one_thread():
    """In-process training on one intra-op thread (as the pipeline's jobs run); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _metrics(out: Path) -> dict[str, pd.DataFrame]:
    return {
        str(p.parent.relative_to(out)): pd.read_parquet(p)
        .sort_values(["metric", "step"])
        .reset_index(drop=True)
        for p in sorted(out.rglob("metrics.parquet"))
    }


@pytest.mark.parametrize("name", PARAMS)
def test_params_files_validate_and_follow_the_protocol(name: str) -> None:
    params = load_params(REPO / "params" / f"{name}.yaml")
    paper = params.problems["paper"]
    assert (paper.rollout, paper.epochs, paper.minibatch) == (2048, 10, 128)
    assert (paper.gamma, paper.lam, paper.clip, paper.value_coef, paper.hidden) == (
        0.99,
        0.95,
        0.2,
        1.0,
        (256, 256),
    )
    assert len(params.seeds("paper")) == (100 if name == "ppo_slippery_ant" else 30)
    settings = params.settings["paper"]
    assert settings["standard"][0].config.betas == (0.9, 0.999)
    cbp = settings["cbp_l2"][0].config
    assert cbp.weight_decay == 1e-4 and cbp.betas == (0.99, 0.99) and cbp.cbp is not None
    assert (cbp.cbp.replacement_rate, cbp.cbp.maturity, cbp.cbp.decay, cbp.cbp.utility) == (
        1e-4,
        10000,
        0.99,
        "contribution",
    )
    assert settings["l2"][0].config.weight_decay == 1e-3
    if name == "ppo_slippery_ant":
        assert (
            paper.env == "slippery_ant"
            and paper.total_steps == 20_000_000
            and paper.change_every == 2_000_000
        )
    if name == "ppo_ant":
        assert paper.total_steps == 50_000_000
        redo = settings["redo"][0].config
        assert redo.redo is not None and (redo.redo.threshold, redo.redo.every, redo.weight_decay) == (
            0.1,
            100,
            1e-4,
        )
        assert settings["cbp_l2_instant"][0].config.cbp.decay == 0.0  # type: ignore[union-attr]
    if name == "ppo_mujoco":
        assert sorted(s.problem.env for s in settings["standard"]) == ["hopper", "walker2d"]


@pytest.mark.parametrize(
    ("problem", "key"),
    [
        ({"env": "half_cheetah"}, "problem.env"),
        ({"friction_low": 0.0}, "problem.friction_low"),
        ({"friction_low": -0.5}, "problem.friction_low"),
        ({"friction_low": 3.0, "friction_high": 2.0}, "problem.friction_low"),
        ({"friction_high": float("inf")}, "problem.friction_high"),
        ({"minibatch": 100}, "problem.minibatch"),
        ({"rollout": 0}, "problem.rollout"),
        ({"rollout": -2048}, "problem.rollout"),
        ({"total_steps": 0}, "problem.total_steps"),
        ({"probe_steps": 4096}, "problem.probe_steps"),
        ({"friction_mix": "min"}, "problem.friction_mix"),
        ({"sim_kwargs": {"no_such_setting": 1}}, "problem.sim_kwargs"),
        ({"bogus": 1}, "problem.bogus"),
    ],
)
def test_bad_problem_settings_are_config_errors(tmp_path: Path, problem: dict, key: str) -> None:
    data = yaml.safe_load((REPO / "params" / "ppo_slippery_ant.yaml").read_text())
    data["scales"]["demo"]["problem"] = problem
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    shutil.copytree(REPO / "params" / "presets", tmp_path / "presets")  # the shared PPO presets
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert f"scales.demo.{key}" in str(err.value) and str(path) in str(err.value)


def test_cli_validate_reports_a_bad_minibatch_in_one_line(tmp_path: Path) -> None:
    data = yaml.safe_load((REPO / "params" / "ppo_ant.yaml").read_text())
    data["scales"]["paper"]["problem"] = {"minibatch": 100}
    path = tmp_path / "ppo_ant.yaml"
    path.write_text(yaml.safe_dump(data))
    shutil.copytree(REPO / "params" / "presets", tmp_path / "presets")
    r = run_lop("params", "validate", str(path))
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "scales.paper.problem.minibatch" in last and "divide" in last


def test_smoke_run_writes_the_contract_metrics(tmp_path: Path, one_thread: None) -> None:
    params = load_params(REPO / "params" / "ppo_slippery_ant.yaml")
    problem, runs = select_runs(params, "smoke", "cbp_l2", None, [0, 1])
    dirs = run_group(
        get_experiment("ppo_slippery_ant"),
        problem,
        runs,
        tmp_path,
        scale="smoke",
        device=torch.device("cpu"),
        progress=False,
    )
    for d in dirs:
        info = json.loads((d / "run.json").read_text())
        assert info["status"] == "complete" and info["diverged_at"] is None
        df = pd.read_parquet(d / "metrics.parquet")
        assert list(df.columns) == ["step", "metric", "value"]
        names = set(df.metric)
        assert {
            "episode_return",
            "episodes",
            "friction",
            "dormant_units/policy",
            "abs_approximate_rank/policy",
            "weight_magnitude/policy",
            "weight_magnitude/value",
            "weight_change/policy",
            "cbp_replaced",
        } <= names
        assert sorted(set(df.step)) == [256, 512]
        fr = df[df.metric == "friction"].value.tolist()
        assert len(set(fr)) == 2 and all(0.02 <= f <= 2.0 for f in fr)  # changed after 200 steps
        dormant = df[df.metric == "dormant_units/policy"].value
        assert bool(((dormant >= 0) & (dormant <= 1)).all())
        rank = df[df.metric == "abs_approximate_rank/policy"].value
        assert bool(((rank >= 1) & (rank <= 32)).all())
        assert df[df.metric == "cbp_replaced"].value.iloc[-1] > 0


def test_diverging_run_is_recorded_not_crashed(tmp_path: Path, one_thread: None) -> None:
    spec = get_experiment("ppo_ant")
    problem = spec.problem_cls(**{**SMOKE_PROBLEM, "hidden": (32, 32), "max_episode_steps": 100})
    runs = [
        RunSpec("adam", "lr=1000000.0", {"lr": 1e6}, MethodConfig(optimizer="adam", lr=1e6), 0),
        RunSpec("adam", "lr=0.0001", {"lr": 1e-4}, MethodConfig(optimizer="adam", lr=1e-4), 0),
    ]
    bad, good = run_group(
        spec, problem, runs, tmp_path, scale="test", device=torch.device("cpu"), progress=False
    )
    info = json.loads((bad / "run.json").read_text())
    assert info["status"] == "diverged" and info["diverged_at"] == 256
    df = pd.read_parquet(bad / "metrics.parquet")
    assert math.isnan(df[(df.metric == "episode_return") & (df.step == 512)].value.iloc[0])
    assert json.loads((good / "run.json").read_text())["status"] == "complete"  # the batch carried on
    df = pd.read_parquet(good / "metrics.parquet")
    assert bool(df[df.metric == "loss/value"].value.notna().all())


@pytest.mark.parametrize(
    ("params", "method"),
    [
        ("ppo_slippery_ant", "cbp_l2"),
        pytest.param("ppo_ant", "redo", marks=pytest.mark.slow),
        pytest.param("ppo_mujoco", "cbp_l2", marks=pytest.mark.slow),  # with --setting-id: one env per job
    ],
)
def test_resume_after_sigkill_is_bit_identical(tmp_path: Path, params: str, method: str) -> None:
    args = ["run", "--params", f"params/{params}.yaml", "--scale", "smoke", "--method", method]
    if params == "ppo_mujoco":
        args += ["--setting-id", "problem.env=hopper"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    r = run_lop(*args, "--out", str(full), "--checkpoint-every", "1", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    r = run_lop(
        *args,
        "--out",
        str(killed),
        "--checkpoint-every",
        "1",
        env={**ONE_THREAD, "LOP_CRASH_AFTER_UNIT": "1"},
    )
    assert r.returncode == -9, r.stderr  # SIGKILLed right after the first checkpoint
    assert list((killed / ".checkpoints").glob("*.pt")) and not list(killed.rglob("run.json"))
    r = run_lop(*args, "--out", str(killed), "--checkpoint-every", "1", env=ONE_THREAD)
    assert r.returncode == 0 and "resumed" in r.stderr, r.stderr
    ma, mb = _metrics(full), _metrics(killed)
    assert ma.keys() == mb.keys() and len(ma) == 2
    for k in ma:
        pd.testing.assert_frame_equal(ma[k], mb[k], check_exact=True)
