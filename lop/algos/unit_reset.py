"""Reset of selected hidden units, shared by continual backprop (`lop.algos.cbp`) and ReDo (`lop.algos.redo`).

For every selected unit i of a `UnitLayer` (all runs of the batch at once, in place):

* incoming weights  w_in[i, :]  ← the caller's fresh draw from the layer's initial distribution;
* incoming bias     b_in[i]     ← 0;
* outgoing weights  w_out[:, i] ← 0 (so the unit's new output does not change the network's output);
* BatchNorm of channel i: weight ← 1, bias ← 0, running mean ← 0, running variance ← 1;
* optimiser state of w_in[i, :], b_in[i], w_out[:, i] and the BatchNorm weight/bias of channel i ← 0
  (optional: `optimizer=None` keeps it).

The caller draws the new weights (from its own `lop.rng` stream, so each method keeps its draws) and
says which units to reset in one of two ways, both branch-free (no Python loop over runs or units,
no host-device synchronisation):

* a mask ``[S, n]`` of booleans, with weights ``[S, n, *fan_in]`` (one row per unit; rows of units
  not selected are ignored) — ReDo;
* `UnitIndex` (indices ``[S, k]`` and a validity mask ``[S, k]``), with weights ``[S, k, *fan_in]``
  for the k indexed units; invalid entries are left untouched — CBP, which replaces at most k units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lop.nets.units import UnitLayer
from lop.optim import BatchedOptimizer

BN_RESET: tuple[tuple[str, float], ...] = (
    ("weight", 1.0),
    ("bias", 0.0),
    ("running_mean", 0.0),
    ("running_var", 1.0),
)


@dataclass(frozen=True)
class UnitIndex:
    """Units ``idx[s, j]`` of run s, for the j with ``valid[s, j]`` (both ``[S, k]``)."""

    idx: torch.Tensor
    valid: torch.Tensor


Selection = torch.Tensor | UnitIndex


def expand_idx(idx: torch.Tensor, like: torch.Tensor, dim: int) -> torch.Tensor:
    """Index ``[S, k]`` expanded to gather/scatter along `dim` of `like` (``[S, ...]``)."""
    shape = [1] * like.dim()
    shape[0], shape[dim] = idx.shape[0], idx.shape[1]
    size = list(like.shape)
    size[dim] = idx.shape[1]
    return idx.view(shape).expand(size)


def _unit_view(m: torch.Tensor, like: torch.Tensor, dim: int) -> torch.Tensor:
    """``[S, n]`` per-unit tensor reshaped to broadcast over `like` with the unit axis at `dim`."""
    shape = [1] * like.dim()
    shape[0], shape[dim] = m.shape
    return m.view(shape)


def write_units(t: torch.Tensor, dim: int, sel: Selection, value: torch.Tensor | float) -> None:
    """``t[s, ..., i, ...] = value`` (unit axis `dim`) for the selected units i of each run, in place.

    `value` is a number or a tensor shaped like `t` with the unit axis replaced by the selection's
    (n for a mask, k for `UnitIndex`).
    """
    if isinstance(sel, UnitIndex):
        ie = expand_idx(sel.idx, t, dim)
        cur = t.gather(dim, ie)
        new = value if isinstance(value, torch.Tensor) else torch.full_like(cur, value)
        t.scatter_(dim, ie, torch.where(_unit_view(sel.valid, t, dim), new.to(t.dtype), cur))
    elif isinstance(value, torch.Tensor):
        t.copy_(torch.where(_unit_view(sel, t, dim), value, t))
    else:
        t.masked_fill_(_unit_view(sel, t, dim), value)


@torch.no_grad()
def reset_units(
    layer: UnitLayer,
    new_in_weight: torch.Tensor,
    sel: Selection,
    optimizer: BatchedOptimizer | None = None,
) -> None:
    """Reset the selected units of `layer` as the module docstring says (in place, no return value)."""
    write_units(layer.in_weight, 1, sel, new_in_weight)
    if layer.in_bias is not None:
        write_units(layer.in_bias, 1, sel, 0.0)
    write_units(layer.out_weight, 2, sel, 0.0)
    for name, value in BN_RESET:
        if name in layer.bn:
            write_units(layer.bn[name], 1, sel, value)
    if optimizer is None:
        return
    targets = [(layer.in_weight, 1), (layer.in_bias, 1), (layer.out_weight, 2)]
    targets += [(layer.bn[n], 1) for n in ("weight", "bias") if n in layer.bn]
    for view, dim in targets:
        if view is None:
            continue
        for st in optimizer.state_views(view):
            write_units(st, dim, sel, 0.0)
