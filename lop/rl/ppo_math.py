"""PPO arithmetic batched over a leading run axis S (docs/protocols/ppo.md).

PPO: Schulman, Wolski, Dhariwal, Radford, Klimov (2017), "Proximal Policy Optimization Algorithms",
clipped surrogate objective (their eq. 7). GAE: Schulman, Moritz, Levine, Jordan, Abbeel (2016),
"High-Dimensional Continuous Control Using Generalized Advantage Estimation" (their eqs. 11-16).

Every function takes ``[S, ...]`` tensors and treats each row as an independent run; scalar
hyperparameters may be Python floats or ``[S]`` tensors (per-run settings).
"""

from __future__ import annotations

import math

import torch

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _per_run(x: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """A float, or an ``[S]`` tensor reshaped to broadcast against ``like`` ``[S, ...]``."""
    if isinstance(x, torch.Tensor):
        return x.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))
    return float(x)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    ends: torch.Tensor,
    gamma: float | torch.Tensor,
    lam: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and value targets, all ``[S, T]``.

    δ_t = r_t + γ (1 − term_t) V(s'_t) − V(s_t)      (s'_t: the state step t led to, so on a
                                                     truncated step V(s'_t) bootstraps from the
                                                     final observation; zero on termination)
    Â_t = δ_t + γ λ (1 − end_t) Â_{t+1},  Â_T = 0    (``ends``: episode ended at t, either way)
    returns_t = Â_t + V(s_t)                          (the λ-return, the value-loss target)

    ``next_values[:, t]`` = V(s'_t); ``terminated``/``ends`` are 0/1 or bool. The last step of the
    rollout bootstraps through ``next_values`` only (no advantage beyond the rollout).
    """
    if not (rewards.shape == values.shape == next_values.shape == terminated.shape == ends.shape):
        raise ValueError(
            "gae needs equal [S, T] shapes, got "
            f"{[list(t.shape) for t in (rewards, values, next_values, terminated, ends)]}"
        )
    dtype = values.dtype
    g = _per_run(gamma, values)  # float or [S, 1]
    gl = g * _per_run(lam, values)
    not_term = 1.0 - terminated.to(dtype)
    deltas = rewards.to(dtype) + g * not_term * next_values - values
    carry = gl * (1.0 - ends.to(dtype))  # [S, T]: how much of Â_{t+1} flows into Â_t
    adv = torch.empty_like(deltas)
    running = torch.zeros_like(deltas[:, 0])
    for t in range(deltas.shape[1] - 1, -1, -1):  # the recursion runs over time, vectorised over runs
        running = deltas[:, t] + carry[:, t] * running
        adv[:, t] = running
    return adv, adv + values


def standardize(adv: torch.Tensor) -> torch.Tensor:
    """Per-run standardised advantages (Â − mean) / std over all non-run axes.

    std is the unbiased (n − 1) sample standard deviation; a run whose std is 0 or undefined is
    only centred (as in the reference implementation).
    """
    flat = adv.reshape(adv.shape[0], -1)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, keepdim=True)
    std = torch.where(torch.isfinite(std) & (std > 0), std, torch.ones_like(std))
    return ((flat - mean) / std).reshape(adv.shape)


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """log π(a|s) of a diagonal Gaussian policy with state-independent log-std.

    log π = Σ_i [ −(a_i − μ_i)² / (2 σ_i²) − log σ_i − ½ log 2π ],  σ = exp(log_std).
    ``mean``, ``action``: ``[S, ..., A]``; ``log_std``: ``[S, A]``. Returns ``[S, ...]``.
    """
    ls = log_std.reshape(log_std.shape[0], *([1] * (mean.dim() - 2)), log_std.shape[-1])
    z = (action - mean) * torch.exp(-ls)
    return (-0.5 * z.square() - ls - _HALF_LOG_2PI).sum(dim=-1)


def ppo_clip_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    adv: torch.Tensor,
    clip: float | torch.Tensor,
) -> torch.Tensor:
    """Per-run clipped surrogate loss ``[S]`` (PPO eq. 7, negated to be minimised).

    r_t = exp(log π_new − log π_old),
    L = −mean_t min( r_t Â_t, clip(r_t, 1 − ε, 1 + ε) Â_t ),  mean over all non-run axes.
    """
    ratio = torch.exp(logp_new - logp_old)
    eps = _per_run(clip, ratio)
    clipped = torch.clamp(ratio, 1.0 - eps, 1.0 + eps)
    surrogate = torch.minimum(ratio * adv, clipped * adv)
    return -surrogate.reshape(surrogate.shape[0], -1).mean(dim=1)


def value_loss(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """Per-run value loss ``[S]``: mean_t (V(s_t) − R_t)² (no ½ factor; the reference's form)."""
    err = (values - returns).square()
    return err.reshape(err.shape[0], -1).mean(dim=1)
