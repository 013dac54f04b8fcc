"""Representation and weight metrics of docs/protocols/metrics.md, batched over a leading run axis S.

Every function takes tensors whose first axis is the run axis S and returns one value per run
(``[S]``, float64) or one row per run, on the input's device, with no host-device sync and no
Python loop over runs, units or examples. Row ``k`` of a batched result depends only on row ``k``
of the input. A run whose input contains a non-finite value (a diverged run) gets NaN for the
representation metrics instead of failing the whole batch.

Names follow docs/protocols/metrics.md exactly, because the field uses one word for several things:

* ``effective_rank``       exp(H(p)), p_k = σ_k / Σσ (Roy & Vetterli 2007);
* ``approximate_rank``     smallest k with Σ_{j≤k} σ_j² ≥ threshold · Σσ²;
* ``abs_approximate_rank`` smallest k with Σ_{j≤k} σ_j ≥ threshold · Σσ
  (what the reference code calls "stable rank");
* ``stable_rank``          the textbook ‖Φ‖_F² / ‖Φ‖_2²;
* dead / dormant / ReDo-dormant units and weight magnitude / change.

Singular values are computed in float64 by default (``dtype`` argument): the cumulative-sum
thresholds of the approximate ranks compare nearly equal numbers, and on CPU the float64 SVD of
a 1000×512 feature matrix was no slower than the float32 one (float32 changed the effective rank
of such features by ~4e-4 and no approximate rank). Rank metrics are meant for measurement points
(once per task / increment / a few updates), not every training step: on CUDA, ``svdvals`` may
synchronise once per call (cuSOLVER status check).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

__all__ = [
    "abs_approximate_rank",
    "abs_approximate_rank_from_sv",
    "approximate_rank",
    "approximate_rank_from_sv",
    "dead_unit_mask",
    "dead_units",
    "dormant_unit_mask",
    "dormant_units",
    "effective_rank",
    "effective_rank_from_sv",
    "macro_auroc",
    "rank_metrics",
    "redo_dormant_fraction",
    "redo_dormant_mask",
    "redo_scores",
    "singular_values",
    "stable_rank",
    "stable_rank_from_sv",
    "weight_change",
    "weight_magnitude",
]

ConvActive = Literal["any", "mean"]


# ---- singular-value based ranks ---------------------------------------------------------------
def _check_phi(phi: torch.Tensor) -> None:
    if phi.dim() != 3:
        raise ValueError(f"expected a representation batch [S, n, d], got shape {tuple(phi.shape)}")
    if phi.shape[1] == 0 or phi.shape[2] == 0:
        raise ValueError(f"representation matrix is empty: shape {tuple(phi.shape)}")


def _check_threshold(threshold: float) -> None:
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")


def singular_values(phi: torch.Tensor, dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    """Singular values ``[S, min(n, d)]`` (descending) of each run's matrix Φ ``[S, n, d]``.

    ``dtype`` is the precision of the SVD (default float64; ``None`` keeps the input dtype).
    Runs whose Φ holds a non-finite value get a row of NaN (the others are unaffected).
    """
    _check_phi(phi)
    if dtype is not None:
        phi = phi.to(dtype)
    finite = torch.isfinite(phi).all(dim=2).all(dim=1)  # [S]
    safe = torch.where(finite[:, None, None], phi, torch.zeros((), dtype=phi.dtype, device=phi.device))
    sv = torch.linalg.svdvals(safe)
    return torch.where(finite[:, None], sv, torch.full((), float("nan"), dtype=sv.dtype, device=sv.device))


def effective_rank_from_sv(sv: torch.Tensor) -> torch.Tensor:
    """Effective rank exp(H(p)), p_k = σ_k / Σσ, from singular values ``[S, k]`` → ``[S]``.

    0·log 0 = 0, so zero singular values contribute nothing; an all-zero matrix (Σσ = 0) has
    effective rank 0 by convention (the entropy of its undefined p is taken as −∞).
    """
    sv = sv.to(torch.float64)
    total = sv.sum(dim=-1)
    p = sv / torch.where(total > 0, total, 1.0).unsqueeze(-1)
    entropy = -torch.xlogy(p, p).sum(dim=-1)
    return torch.where(total > 0, torch.exp(entropy), torch.where(torch.isnan(total), total, 0.0))


def _threshold_rank(values: torch.Tensor, threshold: float) -> torch.Tensor:
    """Smallest k with Σ_{j≤k} v_j ≥ threshold · Σv for descending v ``[S, m]``; 0 when Σv = 0."""
    _check_threshold(threshold)
    csum = torch.cumsum(values.to(torch.float64), dim=-1)
    total = csum[..., -1:]  # the cumsum's own total, so threshold 1 reaches it exactly
    below = (csum < threshold * total).sum(dim=-1).to(torch.float64)
    k = torch.clamp(below + 1.0, max=values.shape[-1])
    total = total.squeeze(-1)
    return torch.where(total > 0, k, torch.where(torch.isnan(total), total, 0.0))


def approximate_rank_from_sv(sv: torch.Tensor, threshold: float = 0.99) -> torch.Tensor:
    """Approximate rank: smallest k with Σ_{j≤k} σ_j² ≥ threshold·Σσ² (0 for a zero matrix)."""
    return _threshold_rank(sv.to(torch.float64).square(), threshold)


def abs_approximate_rank_from_sv(sv: torch.Tensor, threshold: float = 0.99) -> torch.Tensor:
    """The reference code's "stable rank": smallest k with Σ_{j≤k} σ_j ≥ threshold·Σσ (0 for zero)."""
    return _threshold_rank(sv, threshold)


def stable_rank_from_sv(sv: torch.Tensor) -> torch.Tensor:
    """Textbook stable rank ‖Φ‖_F² / ‖Φ‖_2² = Σσ² / σ_max² (0 for a zero matrix)."""
    sq = sv.to(torch.float64).square()
    top = sq.amax(dim=-1)
    ratio = sq.sum(dim=-1) / torch.where(top > 0, top, 1.0)
    return torch.where(top > 0, ratio, torch.where(torch.isnan(top), top, 0.0))


def effective_rank(phi: torch.Tensor) -> torch.Tensor:
    """Effective rank (Roy & Vetterli 2007) of each run's Φ ``[S, n, d]`` → ``[S]``; see docs/protocols/metrics.md."""
    return effective_rank_from_sv(singular_values(phi))


def approximate_rank(phi: torch.Tensor, threshold: float = 0.99) -> torch.Tensor:
    """Approximate rank (σ², threshold 0.99 in the paper) of each run's Φ ``[S, n, d]`` → ``[S]``."""
    return approximate_rank_from_sv(singular_values(phi), threshold)


def abs_approximate_rank(phi: torch.Tensor, threshold: float = 0.99) -> torch.Tensor:
    """The reference's 99% "stable rank" (cumulative σ, not σ²) of each run's Φ → ``[S]``."""
    return abs_approximate_rank_from_sv(singular_values(phi), threshold)


def stable_rank(phi: torch.Tensor) -> torch.Tensor:
    """Textbook stable rank ‖Φ‖_F²/‖Φ‖_2² of each run's Φ ``[S, n, d]`` → ``[S]``."""
    return stable_rank_from_sv(singular_values(phi))


def rank_metrics(phi: torch.Tensor, threshold: float = 0.99) -> dict[str, torch.Tensor]:
    """All four rank measures of Φ ``[S, n, d]`` from one SVD, keyed by their docs/protocols/metrics.md names."""
    sv = singular_values(phi)
    return {
        "effective_rank": effective_rank_from_sv(sv),
        "approximate_rank": approximate_rank_from_sv(sv, threshold),
        "abs_approximate_rank": abs_approximate_rank_from_sv(sv, threshold),
        "stable_rank": stable_rank_from_sv(sv),
    }


# ---- unit activity ----------------------------------------------------------------------------
def _check_h(h: torch.Tensor, positions: int) -> None:
    if positions < 0:
        raise ValueError(f"positions must be >= 0, got {positions}")
    if h.dim() != 3 + positions:
        raise ValueError(
            f"expected activations [S, n, units] plus {positions} position dims, got shape "
            f"{tuple(h.shape)}; pass positions={max(h.dim() - 3, 0)} (e.g. 2 for conv maps [S, n, C, H, W])"
        )
    if h.shape[1] == 0 or h.shape[2] == 0:
        raise ValueError(f"activations have no examples or no units: shape {tuple(h.shape)}")


def _finite_runs(h: torch.Tensor) -> torch.Tensor:
    """``[S]`` bool: the run's activations are all finite."""
    return torch.isfinite(h.reshape(h.shape[0], -1)).all(dim=1)


def _fraction(mask: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
    """Fraction of True units per run ``[S]`` (float64), NaN for runs with non-finite input."""
    frac = mask.sum(dim=1, dtype=torch.float64) / mask.shape[1]
    return torch.where(finite, frac, float("nan"))


def _positions_last(h: torch.Tensor, positions: int) -> torch.Tensor:
    """``[S, n, units, P]`` view with every position dim flattened into the last axis."""
    return h.reshape(*h.shape[:3], -1) if positions else h.unsqueeze(-1)


def dead_unit_mask(h: torch.Tensor, positions: int = 0) -> torch.Tensor:
    """``[S, units]`` bool: the unit's activation is exactly 0 on every probe example.

    ``h`` is ``[S, n, units, *pos]`` where the ``positions`` trailing dims (e.g. 2 for a conv
    map's H, W) are reduced like examples: a conv channel is dead when it is 0 at every example
    and every position.
    """
    _check_h(h, positions)
    return (_positions_last(h, positions) == 0).all(dim=-1).all(dim=1)


def dead_units(h: torch.Tensor, positions: int = 0) -> torch.Tensor:
    """Fraction ``[S]`` of dead units (zero on every probe example and position), docs/protocols/metrics.md."""
    return _fraction(dead_unit_mask(h, positions), _finite_runs(h))


def _active(h: torch.Tensor, positions: int, conv_active: ConvActive) -> torch.Tensor:
    """``[S, n, units]`` bool: the unit is active (> 0) on the example."""
    hp = _positions_last(h, positions)
    if conv_active == "any":
        return (hp > 0).any(dim=-1)
    if conv_active == "mean":
        return hp.mean(dim=-1) > 0
    raise ValueError(f"conv_active must be 'any' or 'mean', got {conv_active!r}")


def dormant_unit_mask(
    h: torch.Tensor,
    threshold: float = 0.01,
    positions: int = 0,
    conv_active: ConvActive = "any",
    strict: bool = True,
) -> torch.Tensor:
    """``[S, units]`` bool: the unit is active (h > 0) on fewer than ``threshold`` of the probe inputs.

    CIFAR/RL definition (docs/protocols/incremental_cifar.md, docs/protocols/ppo.md): with ``strict`` the test is fraction_active < threshold (CIFAR,
    "< 1%"); ``strict=False`` gives ≤ (the RL text's "≤ 1%"). With ``positions`` > 0 a unit is
    a channel and "active on an input" is ``conv_active``: "any" = positive at some position,
    "mean" = mean over positions > 0 (the two agree for non-negative activations such as ReLU).
    """
    _check_h(h, positions)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    frac = _active(h, positions, conv_active).sum(dim=1, dtype=torch.float64) / h.shape[1]
    return frac < threshold if strict else frac <= threshold


def dormant_units(
    h: torch.Tensor,
    threshold: float = 0.01,
    positions: int = 0,
    conv_active: ConvActive = "any",
    strict: bool = True,
) -> torch.Tensor:
    """Fraction ``[S]`` of dormant units (see `dormant_unit_mask`); NaN for non-finite runs."""
    return _fraction(dormant_unit_mask(h, threshold, positions, conv_active, strict), _finite_runs(h))


def redo_scores(h: torch.Tensor, positions: int = 0) -> torch.Tensor:
    """ReDo scores ``[S, units]`` (Sokar et al. 2023): s_i = mean|h_i| / (mean over the layer of mean|h|).

    The inner means run over probe examples (and positions); a layer whose activations are all 0
    gets scores 0 (every unit dormant for any τ ≥ 0).
    """
    _check_h(h, positions)
    m = _positions_last(h, positions).abs().mean(dim=-1, dtype=torch.float64).mean(dim=1)  # [S, units]
    layer = m.mean(dim=1, keepdim=True)
    return torch.where(layer > 0, m / torch.where(layer > 0, layer, 1.0), 0.0)


def redo_dormant_mask(h: torch.Tensor, tau: float, positions: int = 0) -> torch.Tensor:
    """``[S, units]`` bool: ReDo-dormant, score s_i ≤ τ (docs/protocols/metrics.md)."""
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    return redo_scores(h, positions) <= tau


def redo_dormant_fraction(h: torch.Tensor, tau: float, positions: int = 0) -> torch.Tensor:
    """Fraction ``[S]`` of ReDo-dormant units; NaN for runs with non-finite activations."""
    return _fraction(redo_dormant_mask(h, tau, positions), _finite_runs(h))


# ---- weights ----------------------------------------------------------------------------------
def _check_tensors(tensors: Sequence[torch.Tensor], what: str) -> int:
    if len(tensors) == 0:
        raise ValueError(f"{what}: no tensors given")
    s = tensors[0].shape[0] if tensors[0].dim() else -1
    for t in tensors:
        if t.dim() == 0 or t.shape[0] != s:
            raise ValueError(
                f"{what}: every tensor needs the same leading run axis S={s}, got {tuple(t.shape)}"
            )
    return s


def _abs_sum(t: torch.Tensor) -> torch.Tensor:
    """Σ|t| per run ``[S]`` in float64."""
    return t.reshape(t.shape[0], -1).abs().sum(dim=1, dtype=torch.float64)


def weight_magnitude(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean |w| ``[S]`` over all elements of the given ``[S, ...]`` parameter tensors (docs/protocols/metrics.md).

    Element-weighted: a tensor with more elements counts more (not a mean of per-tensor means).
    """
    _check_tensors(tensors, "weight_magnitude")
    n = sum(t[0].numel() for t in tensors)
    return sum(_abs_sum(t) for t in tensors) / n


def weight_change(
    before: Sequence[torch.Tensor],
    after: Sequence[torch.Tensor],
    reduction: Literal["mean", "sum"] = "mean",
) -> torch.Tensor:
    """Weight change per run ``[S]`` between two snapshots: mean (or sum) of |after − before|.

    For RL's "total weight change per update" (docs/protocols/ppo.md); ``before``/``after`` are matching lists
    of ``[S, ...]`` tensors (e.g. the policy and value parameters before and after an update).
    """
    _check_tensors(before, "weight_change")
    if len(before) != len(after) or any(a.shape != b.shape for a, b in zip(before, after)):
        raise ValueError("weight_change: before and after must be lists of tensors of identical shapes")
    total = sum(_abs_sum(a - b) for a, b in zip(before, after))
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / sum(t[0].numel() for t in before)
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def macro_auroc(scores: torch.Tensor, y: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
    """Macro one-vs-rest AUROC ``[S]`` (float64): the mean over classes c of AUROC(score_c, y = c).

    ``scores`` ``[S, B, C]`` (e.g. class probabilities), ``y`` ``[S, B]``; ``classes`` bool ``[S, C]``
    restricts the mean to those classes (a task's classes). Per class, with average ranks r of the scores
    (ties share their mean rank), AUROC = (Σ_{y=c} r − n₊(n₊+1)/2) / (n₊ n₋), the Mann–Whitney statistic,
    i.e. P(score of a positive > score of a negative) + ½ P(tie). Classes without positives or negatives
    are left out; a run with no such class gets NaN.
    """
    s = scores.to(torch.float64).transpose(1, 2).contiguous()  # [S, C, B]
    srt = s.sort(dim=2).values
    lo = torch.searchsorted(srt, s, right=False)
    hi = torch.searchsorted(srt, s, right=True)
    rank = (lo + hi + 1).to(torch.float64) / 2  # average 1-based rank
    pos = y.unsqueeze(1) == torch.arange(s.shape[1], device=y.device).view(1, -1, 1)  # [S, C, B]
    n_pos = pos.sum(2).to(torch.float64)
    n_neg = s.shape[2] - n_pos
    auc = ((rank * pos).sum(2) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    ok = (n_pos > 0) & (n_neg > 0)
    if classes is not None:
        ok &= classes
    return torch.where(ok, auc, 0.0).sum(1) / ok.sum(1)
