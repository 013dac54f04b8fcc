"""Reinforcement learning (docs/protocols/ppo.md): PPO arithmetic batched over runs."""

from lop.rl.ppo_math import gae, gaussian_log_prob, ppo_clip_loss, standardize, value_loss

__all__ = ["gae", "gaussian_log_prob", "ppo_clip_loss", "standardize", "value_loss"]
