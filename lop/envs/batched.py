"""S environments for S runs stepped together (docs/protocols/ppo.md), with auto-reset and episode returns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from lop.envs.config import EnvConfig
from lop.envs.mujoco_envs import LopMujocoEnv, env_config
from lop.errors import CheckpointError

_INT_KEYS: tuple[str, ...] = (
    "run_seed",
    "episode",
    "elapsed",
    "total_steps",
    "friction_index",
    "steps_since_change",
)


class EpisodeRecord(NamedTuple):
    """A completed episode: batch row, the run's env steps when it ended, undiscounted return."""

    run: int
    step: int
    ret: float


class StepResult(NamedTuple):
    """One batched step, float32 CPU tensors with leading axis S.

    ``obs`` is the observation to act on next (the first observation of a new episode where one
    ended); ``final_obs`` is the observation the step produced (equal to ``obs`` where no episode
    ended), to bootstrap truncated episodes.
    """

    obs: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    final_obs: torch.Tensor


class BatchedEnvs:
    """One `LopMujocoEnv` per run seed; ``step(actions [S, act_dim])`` steps all of them.

    A row's trajectory depends only on its seed, its actions and the config, never on the batch.
    Completed episodes are buffered as `EpisodeRecord` until `pop_episodes`.
    """

    def __init__(self, config: EnvConfig | str, seeds: Sequence[int], **settings: Any) -> None:
        if isinstance(config, str):
            config = env_config(config, **settings)
        elif settings:
            raise TypeError("pass settings either in the EnvConfig or as keywords, not both")
        self.config = config
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ValueError("BatchedEnvs needs at least one seed")
        self.envs = [LopMujocoEnv(config, s) for s in self.seeds]
        self.obs_dim = int(self.envs[0].observation_space.shape[0])
        self.act_dim = int(self.envs[0].action_space.shape[0])
        self.action_low = torch.as_tensor(self.envs[0].action_space.low, dtype=torch.float32)
        self.action_high = torch.as_tensor(self.envs[0].action_space.high, dtype=torch.float32)
        self._next_obs = torch.zeros(self.n, self.obs_dim)
        self._episodes: list[EpisodeRecord] = []
        self._started = False

    @property
    def n(self) -> int:
        return len(self.seeds)

    # ---- stepping ------------------------------------------------------------------------------
    def reset(self) -> torch.Tensor:
        """Start every run (episode 0, friction 0); ``[S, obs_dim]`` float32 first observations."""
        obs = np.stack([env.reset(seed=s)[0] for env, s in zip(self.envs, self.seeds)])
        self._next_obs = torch.from_numpy(obs.astype(np.float32))
        self._episodes.clear()
        self._started = True
        return self._next_obs

    def step(self, actions: torch.Tensor) -> StepResult:
        """Step all runs with ``actions [S, act_dim]``; ended episodes are recorded and auto-reset."""
        if tuple(actions.shape) != (self.n, self.act_dim):
            raise ValueError(f"actions must be [{self.n}, {self.act_dim}], got {list(actions.shape)}")
        final = np.empty((self.n, self.obs_dim), dtype=np.float32)
        nxt = np.empty((self.n, self.obs_dim), dtype=np.float32)
        reward = np.empty(self.n, dtype=np.float32)
        term = np.empty(self.n, dtype=np.float32)
        trunc = np.empty(self.n, dtype=np.float32)
        self.step_into(actions.detach().to("cpu", torch.float32).numpy(), final, reward, term, trunc, nxt)
        return StepResult(
            torch.from_numpy(nxt),
            torch.from_numpy(reward),
            torch.from_numpy(term),
            torch.from_numpy(trunc),
            torch.from_numpy(final),
        )

    def step_into(
        self,
        actions: np.ndarray,
        final_obs: np.ndarray,
        reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        next_obs: np.ndarray,
    ) -> None:
        """`step` writing into caller-owned float32 arrays (``[S, ...]`` rows; the rollout's buffers).

        ``next_obs`` gets the observation to act on next, ``final_obs`` the one the step produced.
        """
        if not self._started:
            raise RuntimeError("call reset() (or load_state_dict) before step()")
        ended: list[int] = []
        for k, env in enumerate(self.envs):
            o, r, te, tr, _ = env.advance(actions[k])
            final_obs[k] = o
            reward[k] = r
            terminated[k] = te
            truncated[k] = tr
            if te or tr:
                ended.append(k)
        next_obs[:] = final_obs
        for k in ended:
            env = self.envs[k]
            self._episodes.append(EpisodeRecord(k, env.total_steps, env.episode_return))
            next_obs[k] = env.reset()[0]
        self._next_obs = torch.from_numpy(next_obs.copy())

    @property
    def obs(self) -> torch.Tensor:
        """``[S, obs_dim]`` float32 observation to act on next (a copy)."""
        return self._next_obs.clone()

    def pop_episodes(self) -> list[EpisodeRecord]:
        """Episodes completed since the last call (in completion order), and forget them."""
        out, self._episodes = self._episodes, []
        return out

    @property
    def frictions(self) -> torch.Tensor:
        """``[S]`` float64 current floor sliding friction of each run (fixed unless slippery Ant)."""
        return torch.tensor([env.friction for env in self.envs], dtype=torch.float64)

    @property
    def total_steps(self) -> torch.Tensor:
        """``[S]`` int64 env steps taken by each run."""
        return torch.tensor([env.total_steps for env in self.envs], dtype=torch.int64)

    def close(self) -> None:
        for env in self.envs:
            env.close()

    # ---- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Exact state of all runs: stacked tensors plus the list of unread episodes (no pickle needed)."""
        if not self._started:
            raise RuntimeError("call reset() before state_dict()")
        states = [env.get_state() for env in self.envs]
        out: dict[str, Any] = {
            "env_name": self.config.name,
            "mj_state": torch.from_numpy(np.stack([s["mj_state"] for s in states])),
            "xpos": torch.from_numpy(np.stack([s["xpos"] for s in states])),
            "obs": torch.from_numpy(np.stack([s["obs"] for s in states])),
            "episode_return": torch.tensor([s["episode_return"] for s in states], dtype=torch.float64),
            "episodes": [[e.run, e.step, e.ret] for e in self._episodes],
        }
        for key in _INT_KEYS:
            out[key] = torch.tensor([s[key] for s in states], dtype=torch.int64)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict` output; the batch must hold the same env and seeds."""
        if state.get("env_name") != self.config.name:
            raise CheckpointError(
                f"environment checkpoint is for {state.get('env_name')!r}, this batch runs {self.config.name!r}"
            )
        seeds = [int(s) for s in state["run_seed"].tolist()]
        if seeds != self.seeds:
            raise CheckpointError(f"environment checkpoint holds seeds {seeds}, this batch has {self.seeds}")
        ints = {key: state[key].tolist() for key in _INT_KEYS}
        returns = state["episode_return"].tolist()
        for k, env in enumerate(self.envs):
            env.set_state(
                {
                    "mj_state": state["mj_state"][k].numpy(),
                    "xpos": state["xpos"][k].numpy(),
                    "obs": state["obs"][k].numpy(),
                    "episode_return": returns[k],
                    **{key: ints[key][k] for key in _INT_KEYS},
                }
            )
        self._next_obs = torch.from_numpy(np.stack([env.obs for env in self.envs]).astype(np.float32))
        self._episodes = [EpisodeRecord(int(r), int(s), float(v)) for r, s, v in state["episodes"]]
        self._started = True
