"""RL environments of docs/protocols/ppo.md: MuJoCo Ant, slippery Ant, Hopper, Walker2d, batched over runs.

The names below are imported on first use (PEP 562), so that ``lop.envs.config`` (the settings, checked
when a params file is validated) can be imported without torch, Gymnasium or MuJoCo.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "BatchedEnvs": "lop.envs.batched",
    "EpisodeRecord": "lop.envs.batched",
    "StepResult": "lop.envs.batched",
    "ENV_NAMES": "lop.envs.config",
    "EnvConfig": "lop.envs.config",
    "friction_value": "lop.envs.friction",
    "friction_values": "lop.envs.friction",
    "LopMujocoEnv": "lop.envs.mujoco_envs",
    "env_config": "lop.envs.mujoco_envs",
    "make_env": "lop.envs.mujoco_envs",
    "reset_seed": "lop.envs.mujoco_envs",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'lop.envs' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value
