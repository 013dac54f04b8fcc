"""BatchedEnvs: batch independence, auto-reset, episode records, exact checkpoint round trip."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium.envs.mujoco", reason="needs gymnasium[mujoco] (the rl extra)")

from lop.envs import BatchedEnvs, EnvConfig, EpisodeRecord, friction_value, make_env
from lop.errors import CheckpointError
from lop.rng import RunStreams

SLIPPERY = {"change_every": 40, "max_episode_steps": 25}


def _actions(seeds: list[int], t: int, dim: int) -> torch.Tensor:
    """[S, dim] reproducible per-seed random actions in [-1, 1) (row k depends on seeds[k] only)."""
    return RunStreams(seeds).uniform("test/actions", t, (dim,), -1.0, 1.0)


def _roll(envs: BatchedEnvs, t0: int, steps: int) -> list[tuple[torch.Tensor, ...]]:
    out = []
    for t in range(t0, t0 + steps):
        r = envs.step(_actions(envs.seeds, t, envs.act_dim))
        out.append((r.obs, r.reward, r.terminated, r.truncated, r.final_obs, envs.frictions.clone()))
    return out


def test_shapes_and_dtypes() -> None:
    envs = BatchedEnvs("hopper", [0, 1, 2])
    obs = envs.reset()
    assert obs.shape == (3, 11) and obs.dtype == torch.float32
    r = envs.step(torch.zeros(3, 3))
    for x in (r.obs, r.final_obs):
        assert x.shape == (3, 11) and x.dtype == torch.float32 and x.device.type == "cpu"
    for x in (r.reward, r.terminated, r.truncated):
        assert x.shape == (3,) and x.dtype == torch.float32
    with pytest.raises(ValueError, match="actions must be"):
        envs.step(torch.zeros(2, 3))


def test_batch_member_equals_the_same_seed_alone() -> None:
    seeds = [3, 7, 11]
    batch = BatchedEnvs("slippery_ant", seeds, **SLIPPERY)
    alone = BatchedEnvs("slippery_ant", [7], **SLIPPERY)
    assert torch.equal(batch.reset()[1], alone.reset()[0])
    rb, ra = _roll(batch, 0, 150), _roll(alone, 0, 150)
    for xb, xa in zip(rb, ra):
        for b, a in zip(xb, xa):
            assert torch.equal(b[1], a[0])
    eb = [(e.step, e.ret) for e in batch.pop_episodes() if e.run == 1]
    ea = [(e.step, e.ret) for e in alone.pop_episodes()]
    assert eb == ea and len(ea) >= 5
    assert alone.envs[0].friction_index >= 2  # the friction changed along the way


def test_batch_equals_a_manually_stepped_single_env() -> None:
    seed = 5
    batch = BatchedEnvs("slippery_ant", [seed], **SLIPPERY)
    obs = batch.reset()
    env = make_env("slippery_ant", seed, **SLIPPERY)
    o = env.reset()[0]
    assert torch.equal(obs[0], torch.from_numpy(o).float())
    returns, ret = [], 0.0
    for t in range(120):
        act = _actions([seed], t, 8)
        r = batch.step(act)
        o, rew, term, trunc, _ = env.step(act[0].numpy())
        ret += rew
        assert torch.equal(r.final_obs[0], torch.from_numpy(o).float())
        assert r.reward[0].item() == np.float32(rew)
        assert (bool(r.terminated[0]), bool(r.truncated[0])) == (term, trunc)
        if term or trunc:
            returns.append((env.total_steps, ret))
            ret = 0.0
            o = env.reset()[0]
        assert torch.equal(r.obs[0], torch.from_numpy(o).float())
    assert [(e.step, e.ret) for e in batch.pop_episodes()] == returns
    assert batch.pop_episodes() == []


def test_truncation_returns_the_final_observation_and_resets() -> None:
    envs = BatchedEnvs("ant", [0, 1], max_episode_steps=10)
    envs.reset()
    for t in range(1, 21):
        r = envs.step(torch.zeros(2, 8))  # standing still stays healthy: only truncations
        assert not r.terminated.any()
        if t % 10 == 0:
            assert r.truncated.all()
            assert not torch.equal(r.obs, r.final_obs)
        else:
            assert not r.truncated.any() and torch.equal(r.obs, r.final_obs)
    episodes = envs.pop_episodes()
    assert [(e.run, e.step) for e in episodes] == [(0, 10), (1, 10), (0, 20), (1, 20)]
    assert all(isinstance(e, EpisodeRecord) for e in episodes)


@pytest.mark.parametrize("name", ["slippery_ant", "walker2d"])
def test_state_dict_round_trip_continues_bit_identically(name: str) -> None:
    seeds = [2, 9]
    cfg = EnvConfig(name=name, **SLIPPERY)
    ref = BatchedEnvs(cfg, seeds)
    ref.reset()
    _roll(ref, 0, 37)  # mid-episode, before the first friction change
    buf = io.BytesIO()
    torch.save(ref.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    restored = BatchedEnvs(cfg, seeds)
    restored.load_state_dict(state)
    assert torch.equal(restored.obs, ref.obs)
    a, b = _roll(ref, 37, 120), _roll(restored, 37, 120)
    for xa, xb in zip(a, b):
        for ta, tb in zip(xa, xb):
            assert torch.equal(ta, tb)
    assert ref.pop_episodes() == restored.pop_episodes()
    assert torch.equal(ref.total_steps, restored.total_steps)
    if name == "slippery_ant":
        assert [e.friction_index for e in restored.envs] == [e.friction_index for e in ref.envs]
        assert all(e.friction_index >= 2 for e in restored.envs)
        assert restored.frictions.tolist() == [
            friction_value(s, e.friction_index, 0.02, 2.0) for s, e in zip(seeds, restored.envs)
        ]


def test_load_state_dict_rejects_another_batch() -> None:
    envs = BatchedEnvs("ant", [0, 1])
    envs.reset()
    state = envs.state_dict()
    with pytest.raises(CheckpointError, match="seeds"):
        BatchedEnvs("ant", [0, 2]).load_state_dict(state)
    with pytest.raises(CheckpointError, match="hopper"):
        BatchedEnvs("hopper", [0, 1]).load_state_dict(state)


def test_step_before_reset_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="reset"):
        BatchedEnvs("ant", [0]).step(torch.zeros(1, 8))
