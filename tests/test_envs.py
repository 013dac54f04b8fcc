"""Single-run MuJoCo environments: friction schedule, seeded resets, determinism, check_env, config errors."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium.envs.mujoco", reason="needs gymnasium[mujoco] (the rl extra)")
from gymnasium.utils.env_checker import check_env

from lop.envs import ENV_NAMES, EnvConfig, friction_value, friction_values, make_env, reset_seed
from lop.errors import ConfigError
from lop.rng import RunStreams, torch_seed


def _actions(seed: int, t: int, dim: int) -> np.ndarray:
    """A reproducible random action in [-1, 1) for step t of run `seed`."""
    return RunStreams([seed]).uniform("test/actions", t, (dim,), -1.0, 1.0)[0].numpy()


# ---- friction draws ---------------------------------------------------------------------------------
def test_friction_draws_depend_only_on_seed_and_index() -> None:
    seeds = [0, 5, 9, 123456]
    for index in range(4):
        batch = friction_values(seeds, index, 0.02, 2.0)
        alone = [friction_value(s, index, 0.02, 2.0) for s in seeds]
        assert batch.tolist() == alone
        assert batch.tolist() == friction_values(list(reversed(seeds)), index, 0.02, 2.0).flip(0).tolist()
    # different indices and seeds give different frictions
    row = [friction_value(7, k, 0.02, 2.0) for k in range(10)]
    assert len(set(row)) == 10


def test_friction_draws_are_log_uniform_in_range() -> None:
    low, high = 0.02, 2.0
    f = torch.cat([friction_values(list(range(500)), k, low, high) for k in range(4)]).numpy()
    assert f.min() >= low and f.max() < high
    u = np.sort((np.log(f) - math.log(low)) / (math.log(high) - math.log(low)))
    ks = np.max(np.abs(u - (np.arange(1, u.size + 1) - 0.5) / u.size))
    assert ks < 0.045  # Kolmogorov-Smirnov distance to U[0, 1] of the log-friction (n = 2000)
    assert abs(np.mean(f < math.sqrt(low * high)) - 0.5) < 0.04  # half below the geometric midpoint 0.2


def test_friction_changes_only_at_first_episode_end_after_each_boundary() -> None:
    change_every, seed = 30, 4
    env = make_env("slippery_ant", seed, change_every=change_every, max_episode_steps=13)
    env.reset()
    floor = env._floor
    assert env.friction == friction_value(seed, 0, 0.02, 2.0)
    frictions, episode_ends = [], []
    for t in range(160):
        _, _, term, trunc, info = env.step(_actions(seed, t, 8))
        frictions.append(info["friction"])
        assert env.sim.model.geom_friction[floor, 0] == env.friction
        if term or trunc:
            episode_ends.append(env.total_steps)
            env.reset()
    # expected: friction k+1 from the first episode end at least `change_every` steps after change k
    expected, index, last_change, start = [], 0, 0, 0
    for end in [*episode_ends, 160]:
        expected += [friction_value(seed, index, 0.02, 2.0)] * (end - start)
        if end - last_change >= change_every and end != 160:
            index, last_change = index + 1, end
        start = end
    assert frictions == expected
    assert index >= 3 and env.friction_index == index
    # constant within every episode
    bounds = [0, *episode_ends]
    for a, b in itertools.pairwise(bounds):
        assert len(set(frictions[a:b])) == 1


@pytest.mark.parametrize("mix", ["all", "floor", "max"])
def test_friction_mix_decides_the_contact_friction(mix: str) -> None:
    seed = 1  # a draw below the legs' friction of 1.0
    env = make_env("slippery_ant", seed, friction_mix=mix)
    env.reset()
    f = env.friction
    assert f < 1.0
    seen = 0
    for t in range(60):
        env.step(_actions(seed, t, 8))
        d = env.sim.data
        geoms = np.stack([d.contact.geom1[: d.ncon], d.contact.geom2[: d.ncon]], axis=1)
        on_floor = (geoms == env._floor).any(axis=1)
        mu = d.contact.friction[: d.ncon, 0][on_floor]
        seen += mu.size
        assert np.all(mu == (max(f, 1.0) if mix == "max" else f))
    assert seen > 0


def _active_contact_frictions(env, seed: int, steps: int) -> np.ndarray:
    """Sliding friction of every active contact over `steps` env steps (all contacts, not only the floor's)."""
    out = []
    for t in range(steps):
        env.step(_actions(seed, t, 8))
        d = env.sim.data
        out.append(np.array(d.contact.friction[: d.ncon, 0]))
    return np.concatenate(out)


def test_default_slippery_ant_puts_the_friction_on_every_contact() -> None:
    """Issue 19: a default-built slippery Ant at friction 0.05 has sliding friction 0.05 on every contact,
    as the reference's edit of ant.xml's default geom friction (floor and legs inherit it)."""
    env = make_env("slippery_ant", 2)
    assert env.config.friction_mix == "all"
    env.reset()
    env.apply_friction(0.05)
    mu = _active_contact_frictions(env, 2, 80)
    assert mu.size > 0
    assert np.all(mu == 0.05)
    assert np.all(env.sim.model.geom_friction[:, 0] == 0.05)


def _torso_path(friction: float | None, mix: str = "all", steps: int = 300) -> np.ndarray:
    env = make_env("slippery_ant", 5, friction_mix=mix, max_episode_steps=10_000)
    env.reset()
    if friction is not None:
        env.apply_friction(friction)
    qpos = []
    for t in range(steps):
        env.step(_actions(5, t, 8))
        qpos.append(env.sim.data.qpos.copy())
    return np.array(qpos)


def test_ant_trajectory_depends_on_a_low_friction() -> None:
    """f = 0.05 and f = 1.0 give different trajectories by default (the legs slide); under ``max`` they
    are identical (the legs' 1.0 wins), and ``floor`` reproduces ``all`` exactly."""
    slippery, grippy = _torso_path(0.05), _torso_path(1.0)
    assert np.abs(slippery - grippy).max() > 0.1
    np.testing.assert_array_equal(_torso_path(0.05, "max"), _torso_path(1.0, "max"))
    np.testing.assert_array_equal(_torso_path(0.05, "floor"), slippery)


# ---- seeded resets and determinism ------------------------------------------------------------------
@pytest.mark.parametrize("name", ENV_NAMES)
def test_same_seed_and_actions_give_the_same_trajectory(name: str) -> None:
    a, b = make_env(name, 11, max_episode_steps=40), make_env(name, 11, max_episode_steps=40)
    dim = a.action_space.shape[0]
    oa, ob = a.reset()[0], b.reset()[0]
    assert np.array_equal(oa, ob)
    ends = 0
    for t in range(120):
        act = _actions(11, t, dim)
        ra, rb = a.step(act), b.step(act)
        assert np.array_equal(ra[0], rb[0]) and ra[1:4] == rb[1:4]
        if ra[2] or ra[3]:
            ends += 1
            assert np.array_equal(a.reset()[0], b.reset()[0])
    assert ends >= 2
    assert not np.array_equal(make_env(name, 12).reset()[0], make_env(name, 11).reset()[0])


def test_episode_start_depends_only_on_run_seed_and_episode_index() -> None:
    env = make_env("ant", 3)
    env.reset()
    for t in range(5):
        env.step(_actions(99, t, 8))  # whatever happened in episode 0 ...
    first_of_ep1 = env.reset()[0]
    other = make_env("ant", 3)
    other.reset()
    other.step(np.zeros(8, np.float32))
    assert np.array_equal(other.reset()[0], first_of_ep1)  # ... episode 1 starts the same
    # and it is the simulator reset seeded with torch_seed(s, "reset", e)
    assert reset_seed(3, 1) == torch_seed(3, "reset", 1)
    sim_obs, _ = make_env("ant", 0).sim.reset(seed=reset_seed(3, 1))
    assert np.array_equal(sim_obs, first_of_ep1)


def test_reset_with_seed_starts_the_run_afresh() -> None:
    env = make_env("slippery_ant", 0, change_every=5, max_episode_steps=5)
    env.reset(seed=8)
    for t in range(12):
        if env.step(_actions(8, t, 8))[3]:
            env.reset()
    assert env.friction_index > 0 and env.episode > 0
    obs, info = env.reset(seed=8)
    assert (env.episode, env.total_steps, env.friction_index) == (0, 0, 0)
    assert info["friction"] == friction_value(8, 0, 0.02, 2.0)
    assert np.array_equal(obs, make_env("slippery_ant", 8).reset()[0])


def test_truncation_at_max_episode_steps_and_return_tracking() -> None:
    env = make_env("ant", 2, max_episode_steps=7)
    env.reset()
    total = 0.0
    for t in range(7):
        _, r, term, trunc, _ = env.step(np.zeros(8, np.float32))  # standing still stays healthy
        total += r
        assert not term and trunc == (t == 6)
    assert env.episode_return == total and env.total_steps == 7


def test_ant_reward_terms_are_the_protocol_defaults() -> None:
    sim = make_env("ant").sim
    assert sim._ctrl_cost_weight == 0.5
    assert sim._contact_cost_weight == 5e-4
    assert tuple(sim._healthy_z_range) == (0.2, 1.0)
    assert make_env("ant").observation_space.shape == (105,)


# ---- Gymnasium's checker -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ENV_NAMES)
def test_check_env_passes(name: str) -> None:
    env = make_env(name, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    # the only remarks allowed are about the unbounded observation box (as for Gymnasium's own envs)
    assert all("infinity" in str(w.message) for w in caught), [str(w.message) for w in caught]


# ---- configuration errors -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"name": "humanoid"}, "env.name"),
        ({"friction_low": 0.0}, "env.friction_low"),
        ({"friction_low": -1.0}, "env.friction_low"),
        ({"friction_high": math.inf}, "env.friction_high"),
        ({"friction_low": 2.0, "friction_high": 2.0}, "env.friction_low"),
        ({"friction_low": 3.0, "friction_high": 2.0}, "env.friction_low"),
        ({"change_every": 0}, "env.change_every"),
        ({"change_every": -5}, "env.change_every"),
        ({"change_every": 2.5}, "env.change_every"),
        ({"max_episode_steps": 0}, "env.max_episode_steps"),
        ({"friction_mix": "min"}, "env.friction_mix"),
    ],
)
def test_bad_config_raises_config_error(settings: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        EnvConfig(**{"name": "slippery_ant", **settings})
    assert err.value.where == key


def test_bad_settings_raise_before_any_simulator_is_built() -> None:
    with pytest.raises(ConfigError, match="unknown settings"):
        make_env("ant", friction=0.5)
    with pytest.raises(ConfigError, match=r"env\.sim_kwargs"):
        make_env("hopper", sim_kwargs={"no_such_weight": 1.0})
    with pytest.raises(ConfigError, match=r"env\.name"):
        make_env("Ant-v5")
    with pytest.raises(ConfigError, match="seed"):
        make_env("ant", -1)


def test_sim_kwargs_reach_the_simulator() -> None:
    env = make_env("ant", sim_kwargs={"contact_cost_weight": 0.0, "include_cfrc_ext_in_observation": False})
    assert env.sim._contact_cost_weight == 0.0
    assert env.observation_space.shape == (27,)


def test_clip_actions_option() -> None:
    big, one = np.full(8, 5.0, np.float32), np.ones(8, np.float32)
    raw = [make_env("ant", 0, clip_actions=False) for _ in range(2)]
    clipped = make_env("ant", 0, clip_actions=True)
    for env in (*raw, clipped):
        env.reset()
    o_big, r_big, *_ = raw[0].step(big)
    o_one, r_one, *_ = raw[1].step(one)
    o_clip, r_clip, *_ = clipped.step(big)
    # MuJoCo clamps the torque either way; only the control cost sees the unclipped action
    assert np.array_equal(o_big, o_one) and np.array_equal(o_clip, o_one)
    assert r_clip == r_one
    assert r_big == pytest.approx(r_one - 0.5 * 8 * (25.0 - 1.0), abs=1e-9)


# ---- the lean Ant step of the batched hot path ------------------------------------------------------
@pytest.mark.parametrize("name", ["ant", "slippery_ant"])
def test_lean_ant_step_is_bit_identical_to_gymnasium(name: str) -> None:
    """`advance` (lean `AntStep`) and `step` (Gymnasium's AntEnv.step) give the same bits, terminations
    included: strong random actions make the Ant flip and leave the healthy z range."""
    lean, gym_env = make_env(name, 5, max_episode_steps=60), make_env(name, 5, max_episode_steps=60)
    assert lean._fast_step is not None
    assert np.array_equal(lean.reset()[0], gym_env.reset()[0])
    rng = np.random.default_rng(0)
    terminations = truncations = 0
    for _ in range(400):
        act = rng.uniform(-3.0, 3.0, lean.action_space.shape[0]).astype(np.float32)
        o1, r1, te1, tr1, _ = lean.advance(act)
        o2, r2, te2, tr2, info = gym_env.step(act)
        assert np.array_equal(o1, o2) and o1.dtype == o2.dtype
        assert r1 == r2 and (te1, tr1) == (te2, tr2)
        assert "x_position" in info  # `step` went through Gymnasium's own AntEnv.step
        assert np.array_equal(lean.sim.data.qpos, gym_env.sim.data.qpos)
        if te1 or tr1:
            terminations += te1
            truncations += tr1
            assert np.array_equal(lean.reset()[0], gym_env.reset()[0])
    assert terminations >= 1 and truncations >= 1


def test_lean_step_only_replaces_the_default_ant() -> None:
    assert make_env("hopper", 0)._fast_step is None
    assert make_env("ant", 0, sim_kwargs={"include_cfrc_ext_in_observation": False})._fast_step is None
