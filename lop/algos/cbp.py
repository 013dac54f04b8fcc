"""Continual backpropagation (Dohare et al. 2024, Methods; docs/protocols/cbp.md), seed-batched.

Called after every optimiser step with the hidden activations of that step. For each hidden layer
and unit i (all runs at once):

* age_i += 1;  u_i ← η·u_i + (1−η)·y_i with the instantaneous utility y_i:
  - contribution:            y_i = mean|h_i| · Σ_k |w_out[k, i]|
  - adaptable contribution:  y_i = mean|h_i − f̂_i| · Σ_k |w_out[k, i]| / mean|w_in[i, :]|,
    f̂_i the bias-corrected running mean of h_i;
  (means over the mini-batch and, for channels, spatial positions; Σ_k over every next-layer weight
  fed by the unit)
* `utility="reference_sum"` (what the ResNet-18 reference code ranked by) instead keeps
  A_i ← A_i + mean|h_i| (never decayed, never reset, also not on replacement) and sets
  u_i = A_i · mean_k |w_out[k, i]| (current weights), used without bias correction;
* bias-corrected utility û_i = u_i / (1 − η^age_i); eligible units: age_i > maturity m;
* `count="all"` (Continual ImageNet reference code): #eligible below is replaced by #units as soon
  as at least one unit is eligible (and 0 before);
* accumulate mode: a per-layer accumulator grows by ρ·(#eligible) each step, and ⌊acc⌋ eligible
  units with the lowest û are replaced (acc −= ⌊acc⌋); probabilistic mode replaces
  ⌊ρ·#eligible⌋ units plus one more with probability frac(ρ·#eligible);
* replacing unit i (`lop.algos.unit_reset.reset_units`, shared with ReDo): incoming weights redrawn
  from the layer's initial distribution (stream ``cbp/<layer>/w``), incoming bias 0, outgoing weights
  exactly 0 (after the optimiser step, so they stay 0 until the next update), optimiser state of
  those weights reset (`reset_optimizer_state`; False keeps it, as the reference code did),
  BatchNorm of the channel reset to weight 1, bias 0, running mean 0, running var 1; utility,
  running mean and age 0; optionally the next layer's bias absorbs the removed unit's mean
  contribution (f̂_i · Σ w_out[:, i]).

Replacement is branch-free: at most `k_max` units per layer and step (a static bound from the
largest replacement rate), selected with `topk` and written with gather/scatter, so there is no
host-device synchronisation on accelerators. On CPU, steps without any replacement skip the
scatter work (a free check there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lop.algos.unit_reset import UnitIndex, expand_idx, reset_units, write_units
from lop.config import CBPConfig
from lop.nets.units import UnitLayer
from lop.optim import BatchedOptimizer
from lop.rng import RunStreams


def unit_mean(h: torch.Tensor) -> torch.Tensor:
    """Mean over batch and spatial positions: ``[S, B, n, *spatial]`` -> ``[S, n]``."""
    if h.dim() == 3:
        return h.mean(1)
    return h.mean(dim=(1, *range(3, h.dim())))


# Per-unit reductions of |w| without a fresh full-size |w| temporary every step (issue #20), each
# bit-identical to the plain formula:
# * row means (`in_magnitude`, a reduction over the contiguous inner axis) are computed on slices of
#   UNIT_GROUP·j whole units whose |w| fits in CHUNK_BYTES (cache-resident; CPU only); a row's result
#   does not depend on the slicing;
# * column sums (`out_magnitude`, an outer reduction whose summation order torch picks from the layout,
#   and which slicing the column axis can change) write |w| into a persistent scratch buffer with w's
#   layout and reduce it with the very same `sum` call;
# * `abs_stats` computes both for an MLP weight ``[S, m, n]`` in one read of w (see there).
# tests/test_cbp.py checks bit-equality with the plain formulas.
CHUNK_BYTES = 4 * 2**20
UNIT_GROUP = 64
# `abs_stats`: torch's CPU column sum of a row-major [m, n] block adds the rows of each
# column in blocks of CASCADE (a running sum from 0), block sums in groups of CASCADE, group sums in
# groups of CASCADE again, and finally (((rows after the last whole block) + open group) + open level-2
# sum) + level-3 sum; columns after the last multiple of TAIL_COLUMNS take another route. Chunks of
# CASCADE·2^k ≤ CASCADE² rows of |w| of all runs (within CHUNK_ROWS_BYTES, cache-sized) are reduced in
# exactly that order.
CASCADE = 16
TAIL_COLUMNS = 32
CHUNK_ROWS_BYTES = 4 * 2**20
_ORDER_CHECKED: dict[tuple[int, int, int, torch.dtype, int], bool] = {}


def _unit_slices(t: torch.Tensor, dim: int) -> list[tuple[int, int]]:
    """Slices ``[j0, j1)`` of axis `dim` of `t`, multiples of UNIT_GROUP units (one slice when small)."""
    n = t.shape[dim]
    if not t.is_contiguous() or t.device.type != "cpu":  # accelerators: a caching allocator, and
        return [(0, n)]  # each slice would be a kernel launch
    per_unit = t.numel() // max(n, 1) * t.element_size()
    width = (CHUNK_BYTES // max(per_unit, 1)) // UNIT_GROUP * UNIT_GROUP
    width = max(UNIT_GROUP, width)
    if width >= n:
        return [(0, n)]
    return [(j, min(j + width, n)) for j in range(0, n, width)]


def out_magnitude(out_weight: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_k |w_out[k, i]| of every unit: ``[S, m, n, *rest]`` -> ``[S, n]`` (sum over m and rest).

    With a flat `scratch` buffer of at least ``out_weight.numel()`` elements (same dtype and device)
    and a contiguous `out_weight`, |w_out| is written there instead of into a new tensor.
    """
    dims = [1, *range(3, out_weight.dim())]
    if (
        scratch is None
        or not out_weight.is_contiguous()
        or out_weight.numel() * out_weight.element_size() <= CHUNK_BYTES
    ):
        return out_weight.abs().sum(dim=dims)
    buf = scratch[: out_weight.numel()].view(out_weight.shape)
    return torch.abs(out_weight, out=buf).sum(dim=dims)


def in_magnitude(in_weight: torch.Tensor) -> torch.Tensor:
    """mean_j |w_in[i, j]| of every unit: ``[S, n, *fan_in]`` -> ``[S, n]`` (one read of a large MLP
    weight by chunks of rows, see `abs_stats`)."""
    if single_read(in_weight):
        row = _abs_stats_chunked(in_weight, True, cols=False)[1]
        assert row is not None
        return row
    slices = _unit_slices(in_weight, 1)
    if len(slices) == 1:
        return in_weight.abs().flatten(2).mean(-1)
    out = in_weight.new_empty(in_weight.shape[0], in_weight.shape[1])
    for j0, j1 in slices:
        out[:, j0:j1] = in_weight[:, j0:j1].abs().flatten(2).mean(-1)
    return out


def _chunk_rows(n_runs: int, n: int, element_size: int) -> int:
    """Rows of |w| per chunk in `abs_stats` (all runs at once): CASCADE·2^k ≤ CASCADE² (so chunks tile
    the summation groups), the largest within CHUNK_ROWS_BYTES, at least CASCADE."""
    rows = CASCADE
    while rows < CASCADE * CASCADE and 2 * rows * n_runs * n * element_size <= CHUNK_ROWS_BYTES:
        rows *= 2
    return rows


def _abs_stats_chunked(
    w: torch.Tensor, rows: bool, cols: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`abs_stats` by chunks of rows of all runs (the caller checked that the order reproduces torch's);
    with ``cols=False`` only the row means (the column sums returned are then not computed)."""
    n_runs, m, n = w.shape
    step = min(_chunk_rows(n_runs, n, w.element_size()), m)
    col = w.new_empty(n_runs, n)
    row = w.new_empty(n_runs, m) if rows else None
    buf = w.new_empty(n_runs, step, n)
    blocks = w.new_empty(n_runs, CASCADE, n)  # sums of the whole blocks of CASCADE rows of the open group
    group = w.new_empty(n_runs, n)
    level2, level3 = w.new_zeros(n_runs, n), w.new_zeros(n_runs, n)
    n_blocks = 0
    a = buf[:, :0]
    for r0 in range(0, m, step):
        r1 = min(r0 + step, m)
        a = torch.abs(w[:, r0:r1], out=buf[:, : r1 - r0])
        if row is not None:  # row sums here, means below (torch's CPU mean is this sum, then / n)
            torch.sum(a, 2, out=row[:, r0:r1])
        if not cols:
            continue
        k = (r1 - r0) // CASCADE
        if k:
            torch.sum(
                a[:, : k * CASCADE].view(n_runs, k, CASCADE, n), 2, out=blocks[:, n_blocks : n_blocks + k]
            )
            n_blocks += k
        if n_blocks == CASCADE:  # a whole group (r1 is then a multiple of CASCADE²)
            level2.add_(torch.sum(blocks, 1, out=group))
            n_blocks = 0
            if r1 % CASCADE**3 == 0:
                level3.add_(level2)
                level2.zero_()
    if row is not None:
        row.div_(n)
    if not cols:
        return col, row
    tail = m % CASCADE  # (((rows after the last whole block) + open group) + level 2) + level 3
    if tail:
        torch.sum(a[:, a.shape[1] - tail :], 1, out=col)
    else:
        col.zero_()
    if n_blocks:
        col.add_(torch.sum(blocks[:, :n_blocks], 1, out=group))
    col.add_(level2).add_(level3)
    n0 = n // TAIL_COLUMNS * TAIL_COLUMNS
    if n0 < n:  # columns torch sums another way: the plain formula on that thin slice
        col[:, n0:] = w[:, :, n0:].abs().sum(1)
    return col, row


def _order_matches(shape: tuple[int, int, int], dtype: torch.dtype) -> bool:
    """Whether `_abs_stats_chunked` equals the plain formulas for weights of this shape, dtype and torch
    thread count on this machine and torch (threads split reductions, which can move the column
    boundaries of `TAIL_COLUMNS`). Checked once per key on a fixed, non-random test matrix (each run's
    slice a different rotation of one pattern); False sends `abs_stats` the plain way."""
    n_runs, m, n = shape
    key = (n_runs, m, n, dtype, torch.get_num_threads())
    if key not in _ORDER_CHECKED:
        k = torch.arange(m * n, dtype=torch.float64)
        base = (torch.frac(k * 0.6180339887498949 + torch.frac(k * k * 1e-7)) - 0.5).to(dtype)
        probe = torch.stack([base.roll(7919 * s) for s in range(n_runs)]).view(n_runs, m, n)
        del k, base
        col, row = _abs_stats_chunked(probe, True)
        probe.abs_()  # in place: one probe-sized tensor at a time
        _ORDER_CHECKED[key] = torch.equal(col, probe.sum(1)) and torch.equal(row, probe.flatten(2).mean(-1))
    return _ORDER_CHECKED[key]


def abs_stats(
    w: torch.Tensor, rows: bool, scratch: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(Σ_k |w[k, i]| ``[S, n]``, mean_j |w[i, j]| ``[S, m]`` if `rows`) of a weight ``[S, m, n]`` (or
    ``[S, m, n, *rest]``: column sums over m and rest), bit-identical to `out_magnitude`/`in_magnitude`.

    Large contiguous 3-D weights on a CPU are read once: cache-sized chunks of rows get |w| written
    into a small buffer, row means taken, and their columns summed in the order
    torch's `sum` would use on the whole matrix (`_abs_stats_chunked`, verified per shape by
    `_order_matches`). Otherwise the two plain reductions (`scratch` as in `out_magnitude`).
    """
    if single_read(w):
        return _abs_stats_chunked(w, rows)
    return out_magnitude(w, scratch), in_magnitude(w) if rows else None


def single_read(w: torch.Tensor) -> bool:
    """Whether `abs_stats` reads `w` once (see there) rather than taking the plain reductions."""
    return (
        w.dim() == 3
        and w.device.type == "cpu"
        and w.is_contiguous()
        and w.numel() * w.element_size() > CHUNK_BYTES
        and w.shape[1] <= 2**19  # torch's cascade takes wider steps beyond this
        and _order_matches((w.shape[0], w.shape[1], w.shape[2]), w.dtype)
    )


def abs_unit_mean(h: torch.Tensor, centre: torch.Tensor | None = None) -> torch.Tensor:
    """mean |h_i − c_i| over batch and positions: h ``[S, B, n, *spatial]``, centre ``[S, n]`` or None.

    One activation-sized temporary (|h| or |h − c| computed in place); activations are not sliced
    because conv activations are channels-last views whose reduction order slicing would change.
    """
    if centre is None:
        return unit_mean(h.abs())
    shape = [h.shape[0], 1, h.shape[2]] + [1] * (h.dim() - 3)
    return unit_mean((h - centre.view(shape)).abs_())


class ContinualBackprop:
    """CBP state and update for the hidden layers of a batch of runs."""

    def __init__(
        self,
        layers: Sequence[UnitLayer],
        configs: Sequence[CBPConfig],
        streams: RunStreams,
        optimizer: BatchedOptimizer | None = None,
    ) -> None:
        statics = {(c.utility, c.mode, c.reset_optimizer_state, c.bias_correction, c.count) for c in configs}
        if len(statics) != 1:
            raise ValueError("runs of one batch must share CBP utility, mode, count and flags")
        first = configs[0]
        self.layers = list(layers)
        self.streams = streams
        self.optimizer = optimizer
        self.utility = first.utility
        self.mode = first.mode
        self.reset_optimizer_state = first.reset_optimizer_state
        self.bias_correction = first.bias_correction
        self.count = first.count
        dev = streams.device
        self.rate = torch.tensor([c.replacement_rate for c in configs], dtype=torch.float64, device=dev)
        self.maturity = torch.tensor([c.maturity for c in configs], dtype=torch.int64, device=dev)
        self.decay = torch.tensor([c.decay for c in configs], dtype=torch.float32, device=dev)
        self._one_minus_decay = (1.0 - self.decay).view(-1, 1)  # (1 − η), the same float32 every step
        self.track_mean = self.utility == "adaptable_contribution" or self.bias_correction
        max_rate = max(c.replacement_rate for c in configs)
        self.k_max = [min(layer.n_units, math.floor(max_rate * layer.n_units) + 1) for layer in self.layers]
        s = streams.n
        self.util = [torch.zeros(s, layer.n_units, device=dev) for layer in self.layers]
        self.mean_act = [torch.zeros(s, layer.n_units, device=dev) for layer in self.layers]
        self.age = [torch.zeros(s, layer.n_units, dtype=torch.int64, device=dev) for layer in self.layers]
        self.acc = [torch.zeros(s, dtype=torch.float64, device=dev) for _ in self.layers]
        self.n_replaced = [torch.zeros(s, dtype=torch.int64, device=dev) for _ in self.layers]
        self.act_sum = (
            [torch.zeros(s, layer.n_units, device=dev) for layer in self.layers]
            if self.utility == "reference_sum"
            else []
        )
        self.active = bool((self.rate > 0).any())
        self._scratch: torch.Tensor | None = None  # |w_out| for `out_magnitude`, made on first need
        self._next_in_mag: torch.Tensor | None = None  # see `_magnitudes`

    # ------------------------------------------------------------------------------------------
    def _scratch_for(self, w: torch.Tensor) -> torch.Tensor | None:
        """A flat buffer for |w| (`out_magnitude`), grown to the largest outgoing weight on first need."""
        if w.numel() * w.element_size() <= CHUNK_BYTES:
            return None
        if self._scratch is None or self._scratch.numel() < w.numel():
            big = max(layer.out_weight.numel() for layer in self.layers)
            self._scratch = w.new_empty(big)
        return self._scratch

    def _magnitudes(self, i: int, layer: UnitLayer) -> torch.Tensor:
        """Σ_k |w_out[k, i]| of layer `i`'s units, ``[S, n]``. Where the outgoing weight is the next
        layer's incoming weight and its row means will be needed, the single-read path of `abs_stats`
        computes them too and leaves them in ``self._next_in_mag`` (`step` drops them if this layer
        replaces units in between, which zeroes columns of that weight)."""
        w = layer.out_weight
        if single_read(w):
            nxt = self.layers[i + 1] if i + 1 < len(self.layers) else None
            rows = self.utility == "adaptable_contribution" and nxt is not None and nxt.in_weight is w
            out_mag, self._next_in_mag = _abs_stats_chunked(w, rows)
            return out_mag
        return out_magnitude(w, self._scratch_for(w))

    def _instant_utility(
        self, i: int, layer: UnitLayer, h: torch.Tensor, in_mag: torch.Tensor | None
    ) -> torch.Tensor:
        """y_i of the module docstring, ``[S, n]``, with no full-size temporary (`abs_stats`)."""
        out_mag = self._magnitudes(i, layer)  # [S, n]
        if self.utility == "contribution":
            return abs_unit_mean(h).mul_(out_mag)
        age = self.age[i].to(torch.float32)
        d = self.decay.view(-1, 1)
        f_hat = self.mean_act[i] / torch.clamp(1.0 - d**age, min=1e-12)
        centred = abs_unit_mean(h, f_hat)
        if in_mag is None:
            in_mag = in_magnitude(layer.in_weight)
        return centred.mul_(out_mag).div_(torch.clamp(in_mag, min=1e-12))

    @torch.no_grad()
    def step(self, step: int, activations: Sequence[torch.Tensor]) -> None:
        """One CBP update after optimiser step `step` (a counter for the random draws)."""
        d = self.decay.view(-1, 1)
        self._next_in_mag = None
        for i, (layer, h) in enumerate(zip(self.layers, activations, strict=True)):
            in_mag, self._next_in_mag = self._next_in_mag, None
            self.age[i].add_(1)
            if self.track_mean:
                self.mean_act[i].mul_(d).add_(self._one_minus_decay * unit_mean(h))
            if self.utility == "reference_sum":
                self.act_sum[i].add_(abs_unit_mean(h))
                per_unit = layer.out_weight[0, :, 0].numel()  # outgoing weights of one unit
                out_mean = self._magnitudes(i, layer).div_(per_unit)
                torch.mul(out_mean, self.act_sum[i], out=self.util[i])
            else:
                self.util[i].mul_(d).add_(self._one_minus_decay * self._instant_utility(i, layer, h, in_mag))
            if self.active and self._replace(i, layer, step):
                self._next_in_mag = None  # the next layer's incoming weights changed (zeroed columns)

    def _replace(self, i: int, layer: UnitLayer, step: int) -> bool:
        """Replace this step's share of layer `i`'s units; False if certainly none (CPU check)."""
        age = self.age[i]
        eligible = age > self.maturity.view(-1, 1)
        n_elig = eligible.sum(1).to(torch.float64)
        if self.count == "all":  # ρ·(all units) once any unit is eligible
            n_elig = torch.where(n_elig > 0, float(layer.n_units), 0.0)
        expected = self.rate * n_elig
        if self.mode == "accumulate":
            self.acc[i].add_(expected)
            n_rep = torch.floor(self.acc[i])
            self.acc[i].sub_(n_rep)
        else:
            frac = expected - torch.floor(expected)
            u = self.streams.uniform(f"cbp/{layer.name}/p", step, (), dtype=torch.float64)
            n_rep = torch.floor(expected) + (u < frac).to(torch.float64)
        n_rep = n_rep.to(torch.int64)
        if age.device.type == "cpu" and not bool((n_rep > 0).any()):
            return False
        k = self.k_max[i]
        d = self.decay.view(-1, 1)
        if self.utility == "reference_sum":
            u_hat = self.util[i]  # no bias correction: the sum is not a decayed average
        else:
            u_hat = self.util[i] / torch.clamp(1.0 - d ** age.to(torch.float32), min=1e-12)
        score = torch.where(eligible, u_hat, torch.full_like(u_hat, math.inf))
        idx = torch.topk(score, k, dim=1, largest=False, sorted=True).indices  # [S, k]
        valid = torch.arange(k, device=idx.device).view(1, -1) < n_rep.view(-1, 1)
        self.n_replaced[i].add_(valid.sum(1))
        self._reinit(i, layer, step, idx, valid)
        return True

    def _reinit(self, i: int, layer: UnitLayer, step: int, idx: torch.Tensor, valid: torch.Tensor) -> None:
        k = idx.shape[1]
        kind, scale = layer.init
        shape = (k, *layer.fan_in_shape)
        stream = f"cbp/{layer.name}/w"
        if kind == "uniform":
            new = self.streams.uniform(stream, step, shape, -scale, scale, dtype=layer.in_weight.dtype)
        else:
            new = self.streams.normal(stream, step, shape, scale, dtype=layer.in_weight.dtype)
        if self.bias_correction and layer.out_bias is not None:
            d = self.decay.view(-1, 1)
            f_hat = self.mean_act[i] / torch.clamp(1.0 - d ** self.age[i].to(torch.float32), min=1e-12)
            w_sel = layer.out_weight.gather(2, expand_idx(idx, layer.out_weight, 2))  # [S, m, k, ...]
            w_sum = w_sel.flatten(3).sum(-1) if w_sel.dim() > 3 else w_sel  # [S, m, k]
            f_sel = f_hat.gather(1, idx) * valid  # [S, k]
            layer.out_bias.add_(torch.bmm(w_sum, f_sel.unsqueeze(-1)).squeeze(-1))
        sel = UnitIndex(idx, valid)
        reset_units(layer, new, sel, self.optimizer if self.reset_optimizer_state else None)
        for t in (self.util[i], self.mean_act[i], self.age[i]):
            write_units(t, 1, sel, 0)

    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        state = {
            "util": self.util,
            "mean_act": self.mean_act,
            "age": self.age,
            "acc": self.acc,
            "n_replaced": self.n_replaced,
        }
        if self.act_sum:
            state["act_sum"] = self.act_sum
        return state

    def load_state_dict(self, state: dict[str, list[torch.Tensor]]) -> None:
        for key, dst in self.state_dict().items():
            for d, s in zip(dst, state[key], strict=True):
                d.copy_(s)
