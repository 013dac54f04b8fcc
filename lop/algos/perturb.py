"""The "perturb" of Shrink & Perturb (Ash & Adams 2020): w ← w + ε, ε ~ N(0, σ²) after every step.

(The "shrink" is the weight decay of the optimiser.) Noise is drawn in blocks of several steps so
each draw is large enough for the fast per-run generator backend of `lop.rng`; the block size
depends only on the parameter count, never on the batch.
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

    @torch.no_grad()
    def step(self, t: int) -> None:
        """Perturb the parameters after optimiser step `t`."""
        block, offset = divmod(t, self.block)
        if block != self._buf_block:
            self._buf = self.streams.normal("perturb", block, (self.block, self.total), self.std)
            self._buf_block = block
        assert self._buf is not None
        noise = self._buf[:, offset]
        start = 0
        for p, n in zip(self.params, self.sizes):
            p.add_(noise[:, start : start + n].view_as(p))
            start += n
