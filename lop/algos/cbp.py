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
#   layout and reduce it with the very same `sum` call.
# tests/test_cbp.py checks bit-equality with the plain formulas.
CHUNK_BYTES = 4 * 2**20
UNIT_GROUP = 64


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
    """mean_j |w_in[i, j]| of every unit: ``[S, n, *fan_in]`` -> ``[S, n]``."""
    slices = _unit_slices(in_weight, 1)
    if len(slices) == 1:
        return in_weight.abs().flatten(2).mean(-1)
    out = in_weight.new_empty(in_weight.shape[0], in_weight.shape[1])
    for j0, j1 in slices:
        out[:, j0:j1] = in_weight[:, j0:j1].abs().flatten(2).mean(-1)
    return out


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
        # |w_out| of the largest layer (see `out_magnitude`); one buffer shared by all layers
        big = max(self.layers, key=lambda layer: layer.out_weight.numel()).out_weight
        self._scratch = big.new_empty(big.numel()) if big.numel() * big.element_size() > CHUNK_BYTES else None

    # ------------------------------------------------------------------------------------------
    def _instant_utility(self, i: int, layer: UnitLayer, h: torch.Tensor) -> torch.Tensor:
        """y_i of the module docstring, ``[S, n]``, with no full-size temporary (`out_magnitude`)."""
        out_mag = out_magnitude(layer.out_weight, self._scratch)  # [S, n]
        if self.utility == "contribution":
            return abs_unit_mean(h).mul_(out_mag)
        age = self.age[i].to(torch.float32)
        d = self.decay.view(-1, 1)
        f_hat = self.mean_act[i] / torch.clamp(1.0 - d**age, min=1e-12)
        centred = abs_unit_mean(h, f_hat)
        in_mag = in_magnitude(layer.in_weight)
        return centred.mul_(out_mag).div_(torch.clamp(in_mag, min=1e-12))

    @torch.no_grad()
    def step(self, step: int, activations: Sequence[torch.Tensor]) -> None:
        """One CBP update after optimiser step `step` (a counter for the random draws)."""
        d = self.decay.view(-1, 1)
        for i, (layer, h) in enumerate(zip(self.layers, activations, strict=True)):
            self.age[i].add_(1)
            if self.track_mean:
                self.mean_act[i].mul_(d).add_((1.0 - d) * unit_mean(h))
            if self.utility == "reference_sum":
                self.act_sum[i].add_(abs_unit_mean(h))
                per_unit = layer.out_weight[0, :, 0].numel()  # outgoing weights of one unit
                out_mean = out_magnitude(layer.out_weight, self._scratch).div_(per_unit)
                torch.mul(out_mean, self.act_sum[i], out=self.util[i])
            else:
                self.util[i].mul_(d).add_((1.0 - d) * self._instant_utility(i, layer, h))
            if self.active:
                self._replace(i, layer, step)

    def _replace(self, i: int, layer: UnitLayer, step: int) -> None:
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
            return
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
