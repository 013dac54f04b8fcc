"""RL environments of docs/protocols/ppo.md: MuJoCo Ant, slippery Ant, Hopper, Walker2d, batched over runs."""

from lop.envs.batched import BatchedEnvs, EpisodeRecord, StepResult
from lop.envs.config import ENV_NAMES, EnvConfig
from lop.envs.friction import friction_value, friction_values
from lop.envs.mujoco_envs import LopMujocoEnv, env_config, make_env, reset_seed

__all__ = [
    "ENV_NAMES",
    "BatchedEnvs",
    "EnvConfig",
    "EpisodeRecord",
    "LopMujocoEnv",
    "StepResult",
    "env_config",
    "friction_value",
    "friction_values",
    "make_env",
    "reset_seed",
]
