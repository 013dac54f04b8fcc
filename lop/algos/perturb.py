"""The "perturb" of Shrink & Perturb (Ash & Adams 2020): w ← w + ε, ε ~ N(0, σ²) after every step.

(The "shrink" is the weight decay of the optimiser.) Noise is drawn in blocks of several steps so
each draw is large enough for the fast per-run generator backend of `lop.rng`; the block size
depends only on the parameter count, never on the batch. Runs with σ = 0 in the batch (runs of other
methods packed with S&P) draw nothing and are not touched: only the rows of runs with σ > 0 get noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lop.rng import TORCH_BACKEND_MIN, RunStreams


class GaussianPerturbation:
    """Adds per-run N(0, std[s]²) noise to every parameter element after each optimiser step."""

    def __init__(self, params: Sequence[torch.Tensor], std: torch.Tensor, streams: RunStreams) -> None:
        self.params = list(params)
        self.std = std
        self.streams = streams
        self.sizes = [p[0].numel() for p in self.params]
        self.total = sum(self.sizes)
        self.block = max(1, math.ceil(TORCH_BACKEND_MIN / self.total))
        self._buf: torch.Tensor | None = None
        self._buf_block = -1
        active = [k for k, v in enumerate(std.tolist()) if v > 0]
        # runs that get noise: all of them (the plain, common case), a contiguous range of rows (how
        # packing lays out a method's runs: a slice, a plain add_ on a view, the same per-element sum as
        # index_add_ without its indexing cost), or else an index tensor `rows` for index_add_
        self.all_rows = len(active) == streams.n
        contiguous = bool(active) and active == list(range(active[0], active[-1] + 1))
        self.span = (active[0], len(active)) if contiguous else None
        self.rows = None if self.span is not None else torch.tensor(active, device=std.device)
        self.draw_streams = streams if self.all_rows else streams.subset(active)
        if self.all_rows:
            self.draw_std = std
        elif self.span is not None:
            self.draw_std = std.narrow(0, *self.span)
        else:
            self.draw_std = std[self.rows]

    @torch.no_grad()
    def step(self, t: int) -> None:
        """Perturb the parameters after optimiser step `t`."""
        block, offset = divmod(t, self.block)
        if block != self._buf_block:
            self._buf = self.draw_streams.normal("perturb", block, (self.block, self.total), self.draw_std)
            self._buf_block = block
        assert self._buf is not None
        noise = self._buf[:, offset]
        start = 0
        for p, n in zip(self.params, self.sizes):
            part = noise[:, start : start + n]
            if self.all_rows:
                p.add_(part.view_as(p))
            elif self.span is not None:
                p.narrow(0, *self.span).add_(part.view(-1, *p.shape[1:]))
            elif self.rows is not None:
                p.index_add_(0, self.rows, part.view(-1, *p.shape[1:]))
            start += n
