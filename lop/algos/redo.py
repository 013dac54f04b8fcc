"""ReDo: recycling dormant units (Sokar, Agarwal, Castro, Evci 2023), seed-batched, over `UnitLayer`s.

At a reset point, for each hidden layer and unit i of every run:

* score s_i = mean|h_i| / (mean over the layer's units of mean|h|), means over the probe batch (and
  spatial positions for channels) — `lop.metrics.redo_scores`;
* a unit with s_i <= τ (the threshold, 0.1 in docs/protocols/ppo.md) is *ReDo-dormant* and is reset
  (`lop.algos.unit_reset.reset_units`, shared with CBP):
  incoming weights redrawn from the layer's initial distribution, incoming bias 0, outgoing weights
  exactly 0 (so the network's output is unchanged), BatchNorm of the channel reset to 1, 0, 0, 1,
  and the optimiser state of all those weights zeroed (``optimizer.state_views``).

The caller decides when to reset (PPO: every `every` updates); `due(t)` tells which runs are due at
counter ``t`` when runs of one batch use different periods. Resets are masked writes (no Python loop
over runs or units), and random draws come from stream ``"redo/<layer name>"`` at the caller's counter.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lop.algos.unit_reset import reset_units
from lop.config import ReDoConfig
from lop.metrics import redo_scores
from lop.nets.units import UnitLayer
from lop.optim import BatchedOptimizer
from lop.rng import RunStreams


class ReDo:
    """ReDo resets for the hidden layers of a batch of runs (per-run threshold and period)."""

    def __init__(
        self,
        layers: Sequence[UnitLayer],
        configs: Sequence[ReDoConfig],
        streams: RunStreams,
        optimizer: BatchedOptimizer | None = None,
    ) -> None:
        if len(configs) != streams.n:
            raise ValueError(f"ReDo needs one config per run ({streams.n}), got {len(configs)}")
        self.layers = list(layers)
        self.streams = streams
        self.optimizer = optimizer
        dev = streams.device
        self.threshold = torch.tensor([c.threshold for c in configs], dtype=torch.float64, device=dev)
        self.every = [int(c.every) for c in configs]
        self._every_t = torch.tensor(self.every, dtype=torch.int64, device=dev)
        self.n_reset = [torch.zeros(streams.n, dtype=torch.int64, device=dev) for _ in self.layers]

    def due(self, t: int) -> bool:
        """Whether any run resets at counter ``t`` (``t % every == 0``); a host-side check, no sync."""
        return any(t % e == 0 for e in self.every)

    def dormant(self, activations: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``[S, n]`` bool ReDo-dormant masks (s_i <= τ) of each layer from activations ``[S, B, n, *pos]``."""
        th = self.threshold.view(-1, 1)
        return [redo_scores(h, positions=h.dim() - 3) <= th for h in activations]

    @torch.no_grad()
    def step(self, t: int, activations: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Reset the dormant units of the runs due at counter ``t``; returns the reset masks ``[S, n]``."""
        due = (t % self._every_t) == 0  # [S]
        masks = [m & due.view(-1, 1) for m in self.dormant(activations)]
        for i, (layer, mask) in enumerate(zip(self.layers, masks, strict=True)):
            self.reset_units(layer, mask, t)
            self.n_reset[i].add_(mask.sum(1))
        return masks

    @torch.no_grad()
    def reset_units(self, layer: UnitLayer, mask: torch.Tensor, t: int) -> None:
        """Reinitialise the units of `layer` where ``mask [S, n]`` is True (see module docstring)."""
        kind, scale = layer.init
        shape = (layer.n_units, *layer.fan_in_shape)
        stream = f"redo/{layer.name}"
        dtype = layer.in_weight.dtype
        if kind == "uniform":
            new = self.streams.uniform(stream, t, shape, -scale, scale, dtype=dtype)
        else:
            new = self.streams.normal(stream, t, shape, scale, dtype=dtype)
        reset_units(layer, new, mask, self.optimizer)

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        return {"n_reset": self.n_reset}

    def load_state_dict(self, state: dict[str, list[torch.Tensor]]) -> None:
        for d, s in zip(self.n_reset, state["n_reset"], strict=True):
            d.copy_(s)
