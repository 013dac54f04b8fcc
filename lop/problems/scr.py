"""Slowly-changing regression (docs/protocols/scr.md; the paper's Extended Data Fig. 2).

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
        pre = torch.baddbmm((self.b - self.theta).unsqueeze(1), x, self.w.transpose(1, 2))
        ltu = (pre > 0).to(x.dtype)
        return torch.bmm(ltu, self.v.unsqueeze(-1)).squeeze(-1) + self.c.unsqueeze(1)

    def table(self, slow: torch.Tensor, n_fast: int) -> torch.Tensor:
        """Targets ``[S, 2**n_fast]`` for slow bits ``[S, n_slow]`` and every fast-bit pattern (bit j
        of the pattern index = fast bit j): while the slow bits are constant, the target is a lookup."""
        codes = torch.arange(2**n_fast, device=slow.device)
        fast = ((codes.unsqueeze(1) >> torch.arange(n_fast, device=slow.device)) & 1).to(slow.dtype)
        s = slow.shape[0]
        x = torch.cat([slow.unsqueeze(1).expand(s, len(codes), -1), fast.unsqueeze(0).expand(s, -1, -1)], -1)
        return self(x)


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

    def chunk(
        self, t0: int, size: int, counter: int, target: LTUTarget | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Inputs of steps [t0, t0 + size) as ``[S, size, n_slow + n_fast]`` (advancing the slow state)
        and, if `target` is given, their targets ``[S, size]``, looked up per constant-slow segment."""
        s = self.streams.n
        fast = (self.streams.uniform("scr/fast", counter, (size, self.n_fast)) < 0.5).to(torch.float32)
        slow = self.slow.unsqueeze(1).expand(s, size, self.n_slow).clone()
        first = max(-(-t0 // self.flip_every) * self.flip_every, self.flip_every)
        bounds = list(range(first, t0 + size, self.flip_every))
        use_table = target is not None and self.n_fast <= 10
        y = torch.empty(s, size, device=fast.device) if use_table else None
        code = (
            (fast * (2 ** torch.arange(self.n_fast, device=fast.device))).sum(-1).long()
            if use_table
            else None
        )
        starts = [t0, *bounds]
        for i, a in enumerate(starts):
            if i > 0:
                self._change(a // self.flip_every)
                slow[:, a - t0 :] = self.slow.unsqueeze(1)
            if use_table:
                b = starts[i + 1] if i + 1 < len(starts) else t0 + size
                y[:, a - t0 : b - t0] = target.table(self.slow, self.n_fast).gather(
                    1, code[:, a - t0 : b - t0]
                )
        x = torch.cat([slow, fast], dim=-1)
        if target is not None and not use_table:
            y = target(x)
        return x, y
