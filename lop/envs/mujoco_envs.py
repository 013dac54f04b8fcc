"""MuJoCo environments of docs/protocols/ppo.md with run-seeded episodes and slippery Ant's friction schedule.

`LopMujocoEnv` is a Gymnasium env around the unwrapped Gymnasium ``*-v5`` simulator (no wrapper
stack). It owns everything a run's environment needs besides the physics:

* seeded resets: episode ``e`` of run seed ``s`` resets the simulator with
  ``torch_seed(s, "reset", e)``, so the same seed and actions give the same trajectory;
  ``reset(seed=s)`` starts run ``s`` afresh (episode 0, friction 0), ``reset()`` starts the next episode;
* the time limit (``max_episode_steps``, truncation);
* slippery Ant: the sliding friction ``model.geom_friction[:, 0]`` of every geom (``friction_mix:
  all``, the reference's edit of ant.xml's default geom) or of the floor only (``floor``, ``max``) is
  set in memory to friction number ``k`` of the run (`lop.envs.friction`), and ``k`` advances at the
  first episode end (reset) once ``change_every`` steps have passed since the last change;
* an exact state (`get_state` / `set_state`) so a restored env continues bit-identically;
* for Ant, a lean step (`AntStep`) used by the batched hot path `advance`: the same MuJoCo calls and
  the same numpy arithmetic as Gymnasium's ``AntEnv.step`` (checked bit for bit in the tests), without
  its per-step name lookups, repeated contact-force clipping and info dictionary.
"""

from __future__ import annotations

import inspect
from typing import Any

import gymnasium as gym
import numpy as np

from lop.envs.config import EnvConfig
from lop.envs.friction import friction_value
from lop.errors import CheckpointError, ConfigError
from lop.rng import torch_seed

RESET_STREAM = "reset"
# Ant reward terms pinned to docs/protocols/ppo.md (also Gymnasium's Ant-v5 defaults today).
ANT_KWARGS: dict[str, Any] = {
    "ctrl_cost_weight": 0.5,
    "contact_cost_weight": 5e-4,
    "healthy_reward": 1.0,
    "terminate_when_unhealthy": True,
    "healthy_z_range": (0.2, 1.0),
    "contact_force_range": (-1.0, 1.0),
    "reset_noise_scale": 0.1,
}
STATE_KEYS: tuple[str, ...] = (
    "mj_state",
    "xpos",
    "obs",
    "run_seed",
    "episode",
    "elapsed",
    "total_steps",
    "friction_index",
    "steps_since_change",
    "episode_return",
)


def reset_seed(run_seed: int, episode: int) -> int:
    """Simulator seed of episode ``episode`` of run ``run_seed`` (stream ``"reset"``)."""
    return torch_seed(run_seed, RESET_STREAM, episode)


def _sim_class(name: str) -> type:
    """The Gymnasium v5 class simulating ``name`` (imported lazily: needs ``gymnasium[mujoco]``)."""
    try:
        if name in ("ant", "slippery_ant"):
            from gymnasium.envs.mujoco.ant_v5 import AntEnv as cls
        elif name == "hopper":
            from gymnasium.envs.mujoco.hopper_v5 import HopperEnv as cls
        else:
            from gymnasium.envs.mujoco.walker2d_v5 import Walker2dEnv as cls
    except ImportError as e:
        raise ConfigError(
            "env.name", f"{name!r} needs gymnasium[mujoco] (mujoco, imageio): pip install -e '.[rl]' ({e})"
        ) from e
    return cls


def _sim_kwargs(config: EnvConfig, cls: type) -> dict[str, Any]:
    allowed = {p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")}
    unknown = sorted(set(config.sim_kwargs) - allowed)
    if unknown:
        raise ConfigError(
            "env.sim_kwargs", f"unknown keys {unknown} for {config.name!r}; allowed: {sorted(allowed)}"
        )
    base = dict(ANT_KWARGS) if config.name in ("ant", "slippery_ant") else {}
    return {**base, **config.sim_kwargs}


class AntStep:
    """Gymnasium ``AntEnv.step`` (v5) for the default observation, minus its bookkeeping.

    Same order of MuJoCo calls (``ctrl``, ``mj_step(nstep=frame_skip)``, ``mj_rnePostConstraint``) and
    the same numpy expressions for observation (qpos[2:], qvel, clipped ``cfrc_ext[1:]``), reward
    (forward velocity of the main body + healthy reward − control cost − contact cost) and termination,
    so the result is bit-identical; only the info dictionary is not built.
    """

    def __init__(self, sim: Any) -> None:
        import mujoco

        self._mj_step = mujoco.mj_step
        self._rne_post = mujoco.mj_rnePostConstraint
        self.model, self.data = sim.model, sim.data
        self.frame_skip = int(sim.frame_skip)
        self.dt = sim.dt
        self.body = int(sim.data.body(sim._main_body).id)
        self.forward_weight = sim._forward_reward_weight
        self.ctrl_weight = sim._ctrl_cost_weight
        self.contact_weight = sim._contact_cost_weight
        self.healthy_reward = sim._healthy_reward
        self.z_low, self.z_high = sim._healthy_z_range
        self.f_low, self.f_high = sim._contact_force_range
        self.terminate_when_unhealthy = sim._terminate_when_unhealthy

    @staticmethod
    def applies_to(sim: Any) -> bool:
        """True for a Gymnasium v5 Ant with the default observation (what `AntStep` reproduces)."""
        from gymnasium.envs.mujoco.ant_v5 import AntEnv

        return (
            type(sim) is AntEnv
            and sim._exclude_current_positions_from_observation
            and sim._include_cfrc_ext_in_observation
        )

    def __call__(self, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
        """(observation, reward, terminated) of one env step with `action`."""
        data = self.data
        xy_before = data.xpos[self.body, :2].copy()
        data.ctrl[:] = action
        self._mj_step(self.model, data, nstep=self.frame_skip)
        self._rne_post(self.model, data)
        xy_velocity = (data.xpos[self.body, :2] - xy_before) / self.dt
        x_velocity = xy_velocity[0]
        qpos, qvel = data.qpos.flatten(), data.qvel.flatten()
        contact = np.clip(data.cfrc_ext, self.f_low, self.f_high)
        obs = np.concatenate((qpos[2:], qvel, contact[1:].flatten()))
        state = np.concatenate((qpos, qvel))
        healthy = np.isfinite(state).all() and self.z_low <= state[2] <= self.z_high
        rewards = x_velocity * self.forward_weight + healthy * self.healthy_reward
        costs = self.ctrl_weight * np.sum(np.square(action)) + self.contact_weight * np.sum(
            np.square(contact)
        )
        terminated = (not healthy) and self.terminate_when_unhealthy
        return obs, rewards - costs, terminated


class LopMujocoEnv(gym.Env):
    """One run's MuJoCo environment: seeded episodes, time limit, friction schedule, exact state."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (Gymnasium's class attribute)

    def __init__(self, config: EnvConfig, seed: int = 0) -> None:
        cls = _sim_class(config.name)
        kwargs = _sim_kwargs(config, cls)
        try:
            self.sim = cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError("env.sim_kwargs", f"rejected by {cls.__name__}: {e}") from e
        self.config = config
        self.observation_space = self.sim.observation_space
        self.action_space = self.sim.action_space
        self._low = self.action_space.low
        self._high = self.action_space.high
        import mujoco

        model = self.sim.model
        self._floor = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "floor")
        if config.slippery:
            if self._floor < 0:
                raise ConfigError(
                    "env.sim_kwargs", "slippery_ant: the MuJoCo model has no geom named 'floor'"
                )
            if config.friction_mix == "floor":
                model.geom_priority[self._floor] = int(model.geom_priority.max()) + 1
        # the floor's sliding friction (fixed unless slippery; NaN if the model has no floor)
        self.friction = float(model.geom_friction[self._floor, 0]) if self._floor >= 0 else float("nan")
        self._fast_step = AntStep(self.sim) if AntStep.applies_to(self.sim) else None
        self._obs: np.ndarray | None = None
        self._start_run(seed)

    # ---- run bookkeeping -----------------------------------------------------------------------
    def _start_run(self, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ConfigError("seed", f"run seeds must be non-negative integers, got {seed!r}")
        self.run_seed = int(seed)
        self.episode = -1  # index of the current episode; -1 before the first reset
        self.elapsed = 0  # steps in the current episode
        self.total_steps = 0  # env steps of this run
        self.steps_since_change = 0
        self.episode_return = 0.0
        self._set_friction(0)

    def _set_friction(self, index: int) -> None:
        self.friction_index = index
        if self.config.slippery:
            c = self.config
            self.apply_friction(friction_value(self.run_seed, index, c.friction_low, c.friction_high))

    def apply_friction(self, value: float) -> None:
        """Write sliding friction `value` where ``friction_mix`` says: every geom (``all``) or the floor
        (``floor``, ``max``). The friction schedule calls this; tests may call it directly."""
        if not self.config.slippery:
            raise RuntimeError(f"{self.config.name!r} has a fixed friction; use slippery_ant")
        self.friction = float(value)
        if self.config.friction_mix == "all":
            self.sim.model.geom_friction[:, 0] = self.friction
        else:
            self.sim.model.geom_friction[self._floor, 0] = self.friction

    # ---- Gymnasium API -------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """``reset(seed=s)``: start run ``s`` (episode 0); ``reset()``: the run's next episode.

        An episode end is where slippery Ant's friction changes (once ``change_every`` steps have
        passed since the last change).
        """
        if seed is not None:
            self._start_run(seed)
        elif self.config.slippery and self.steps_since_change >= self.config.change_every:
            self._set_friction(self.friction_index + 1)
            self.steps_since_change = 0
        self.episode += 1
        self.elapsed = 0
        self.episode_return = 0.0
        obs, info = self.sim.reset(seed=reset_seed(self.run_seed, self.episode))
        self._np_random = self.sim.np_random
        self._obs = obs
        return obs, {**info, "episode": self.episode, "friction": self.friction}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """One env step; ``truncated`` once the episode has ``max_episode_steps`` steps."""
        obs, reward, terminated, truncated, info = self._advance(np.asarray(action), lean=False)
        return obs, reward, terminated, truncated, {**info, "friction": self.friction}

    def advance(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """`step` without info entries (the batched hot path; Ant takes the lean `AntStep`)."""
        return self._advance(action, lean=True)

    def _advance(
        self, action: np.ndarray, lean: bool
    ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self.episode < 0:
            raise RuntimeError("call reset() before step()")
        if self.config.clip_actions:
            action = np.clip(action, self._low, self._high)
        if lean and self._fast_step is not None:
            obs, reward, terminated = self._fast_step(action)
            info: dict[str, Any] = {}
        else:
            obs, reward, terminated, _, info = self.sim.step(action)
        reward = float(reward)
        self.elapsed += 1
        self.total_steps += 1
        self.steps_since_change += 1
        self.episode_return += reward
        self._obs = obs
        return obs, reward, bool(terminated), self.elapsed >= self.config.max_episode_steps, info

    def close(self) -> None:
        self.sim.close()

    # ---- exact state -----------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically: MuJoCo integration state (qpos, qvel, act,
        time, warm start, ...), body positions (Ant's reward reads them before stepping), the last
        observation and the run's counters. numpy arrays and Python scalars only."""
        import mujoco

        if self._obs is None:
            raise RuntimeError("call reset() before get_state()")
        model, data = self.sim.model, self.sim.data
        sig = mujoco.mjtState.mjSTATE_INTEGRATION
        mj_state = np.empty(mujoco.mj_stateSize(model, sig), dtype=np.float64)
        mujoco.mj_getState(model, data, mj_state, sig)
        return {
            "mj_state": mj_state,
            "xpos": data.xpos.copy(),
            "obs": np.array(self._obs, dtype=np.float64),
            "run_seed": self.run_seed,
            "episode": self.episode,
            "elapsed": self.elapsed,
            "total_steps": self.total_steps,
            "friction_index": self.friction_index,
            "steps_since_change": self.steps_since_change,
            "episode_return": self.episode_return,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a `get_state` result (raises `CheckpointError` if it does not fit this env)."""
        import mujoco

        missing = [k for k in STATE_KEYS if k not in state]
        if missing:
            raise CheckpointError(f"environment state lacks {missing}: the checkpoint is not from lop.envs")
        model, data = self.sim.model, self.sim.data
        sig = mujoco.mjtState.mjSTATE_INTEGRATION
        mj_state = np.asarray(state["mj_state"], dtype=np.float64)
        xpos = np.asarray(state["xpos"], dtype=np.float64)
        obs = np.asarray(state["obs"], dtype=np.float64)
        if (
            mj_state.shape != (mujoco.mj_stateSize(model, sig),)
            or xpos.shape != data.xpos.shape
            or obs.shape != self.observation_space.shape
        ):
            raise CheckpointError(
                f"environment state shapes {mj_state.shape}, {xpos.shape}, {obs.shape} do not fit "
                f"{self.config.name!r}: the checkpoint belongs to another environment"
            )
        self._start_run(int(state["run_seed"]))
        self._set_friction(int(state["friction_index"]))
        self.episode = int(state["episode"])
        self.elapsed = int(state["elapsed"])
        self.total_steps = int(state["total_steps"])
        self.steps_since_change = int(state["steps_since_change"])
        self.episode_return = float(state["episode_return"])
        mujoco.mj_setState(model, data, mj_state, sig)
        data.xpos[:] = xpos
        self._obs = obs.copy()

    @property
    def obs(self) -> np.ndarray | None:
        """The last observation returned (None before the first reset)."""
        return self._obs


def make_env(name: str, seed: int = 0, **settings: Any) -> LopMujocoEnv:
    """A run's environment: ``name`` in `lop.envs.config.ENV_NAMES`, other `EnvConfig` fields as keywords."""
    return LopMujocoEnv(env_config(name, **settings), seed)


def env_config(name: str, **settings: Any) -> EnvConfig:
    """`EnvConfig` from keywords, unknown keys reported as `ConfigError`."""
    fields = set(EnvConfig.__dataclass_fields__)
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise ConfigError("env", f"unknown settings {unknown}; allowed: {sorted(fields - {'name'})}")
    return EnvConfig(name=name, **settings)
