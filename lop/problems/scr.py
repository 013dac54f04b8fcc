"""Slowly-changing regression (PROTOCOLS §1; the paper's Extended Data Fig. 2).

Inputs are m = n_slow + n_fast bits. The fast bits are i.i.d. Bernoulli(0.5) every step. The slow
bits change every T steps: by default exactly one uniformly chosen slow bit flips (the paper's
protocol); the `resample_all` variant re-draws all of them (the reference README's generator).

The target is a fixed network of linear threshold units (LTU): m → H LTUs → 1, every weight and
bias in {−1, +1}. LTU i fires when its pre-activation exceeds θ_i = β·(m+1) − S_i with
S_i = (m − Σ_j w_ij + b_i)/2, as the reference computes it; the target is the output layer's
weighted sum of the LTU outputs plus its bias. Everything is drawn from the run seed and generated
on the fly in chunks, never materialised.
"""

from __future__ import annotations

import torch

from lop.rng import RunStreams


def _signs(streams: RunStreams, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    n = 1
    for d in shape:
        n *= d
    bits = streams.bits(name, 0, n) & 1
    return (2.0 * bits.to(torch.float32) - 1.0).view(streams.n, *shape)


class LTUTarget:
    """The per-run LTU target network."""

    def __init__(self, streams: RunStreams, n_inputs: int, n_hidden: int, beta: float) -> None:
        self.w = _signs(streams, "scr/target/w", (n_hidden, n_inputs))  # [S, H, m]
        self.b = _signs(streams, "scr/target/b", (n_hidden,))  # [S, H]
        self.v = _signs(streams, "scr/target/v", (n_hidden,))  # [S, H]
        self.c = _signs(streams, "scr/target/c", ())  # [S]
        m = float(n_inputs)
        s_i = (m - self.w.sum(-1) + self.b) / 2.0
        self.theta = beta * (m + 1.0) - s_i  # [S, H]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[S, C, m]`` -> targets ``[S, C]``."""
        pre = torch.baddbmm(self.b.unsqueeze(1), x, self.w.transpose(1, 2))
        ltu = (pre > self.theta.unsqueeze(1)).to(x.dtype)
        return (ltu * self.v.unsqueeze(1)).sum(-1) + self.c.unsqueeze(1)


class SlowlyChangingInputs:
    """Generates input chunks; the only state is the current slow bits ``[S, n_slow]``."""

    def __init__(self, streams: RunStreams, n_slow: int, n_fast: int, flip_every: int, variant: str) -> None:
        self.streams, self.n_slow, self.n_fast = streams, n_slow, n_fast
        self.flip_every, self.variant = flip_every, variant
        self.slow = (streams.bits("scr/slow", 0, n_slow) & 1).to(torch.float32)

    def _change(self, k: int) -> None:
        """The k-th change of the slow bits (k >= 1), applied at step k·T."""
        if self.variant == "one_bit":
            idx = self.streams.randint("scr/flip", k, (), self.n_slow)  # [S]
            self.slow.scatter_(1, idx.view(-1, 1), 1.0 - self.slow.gather(1, idx.view(-1, 1)))
        else:
            self.slow = (self.streams.bits("scr/slow", k, self.n_slow) & 1).to(torch.float32)

    def chunk(self, t0: int, size: int, counter: int) -> torch.Tensor:
        """Inputs of steps [t0, t0 + size) as ``[S, size, n_slow + n_fast]``; advances the slow state."""
        s = self.streams.n
        fast = (self.streams.uniform("scr/fast", counter, (size, self.n_fast)) < 0.5).to(torch.float32)
        slow = self.slow.unsqueeze(1).expand(s, size, self.n_slow).clone()
        first = -(-t0 // self.flip_every) * self.flip_every
        first = max(first, self.flip_every)
        for b in range(first, t0 + size, self.flip_every):
            self._change(b // self.flip_every)
            slow[:, b - t0 :] = self.slow.unsqueeze(1)
        return torch.cat([slow, fast], dim=-1)
