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
