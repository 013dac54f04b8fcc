"""A short PPO run on a stationary task (Hopper) learns: returns grow well above the first update's."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

pytest.importorskip("gymnasium.envs.mujoco", reason="needs gymnasium[mujoco] (the rl extra)")

from lop.config import MethodConfig
from lop.experiments.base import RunSpec, get_experiment
from lop.experiments.ppo import MujocoProblem
from lop.runner import run_group


@pytest.fixture
def one_thread():
    """Train on one intra-op thread (as the pipeline's jobs run); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_training_improves_the_return_on_hopper(tmp_path: Path, one_thread: None) -> None:
    """Stationary task, the paper's PPO with a smaller net: returns grow well above the first update's."""
    problem = MujocoProblem(
        env="hopper",
        total_steps=6 * 1024,
        rollout=1024,
        minibatch=64,
        hidden=(64, 64),
        internals_every=6,
        probe_steps=512,
    )
    method = MethodConfig(optimizer="adam", lr=1e-4, betas=(0.9, 0.999))
    runs = [RunSpec("standard", "default", {}, method, seed) for seed in (0, 1)]
    dirs = run_group(
        get_experiment("ppo_mujoco"),
        problem,
        runs,
        tmp_path,
        scale="test",
        device=torch.device("cpu"),
        progress=False,
    )
    for d in dirs:
        df = pd.read_parquet(d / "metrics.parquet")
        ret = df[df.metric == "episode_return"].sort_values("step").value.to_numpy()
        assert len(ret) == 6
        assert ret[-2:].mean() > 3.0 * ret[0], ret
