"""Reinforcement learning (PROTOCOLS §5): PPO arithmetic batched over runs."""

from lop.rl.ppo_math import gae, gaussian_log_prob, ppo_clip_loss, standardize, value_loss

__all__ = ["gae", "gaussian_log_prob", "ppo_clip_loss", "standardize", "value_loss"]
