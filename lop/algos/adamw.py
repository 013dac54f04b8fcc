"""AdamW (Loshchilov & Hutter 2019) over named ``[S, ...]`` tensors, with per-run ``[S]`` step sizes, a
per-step schedule factor and masks of the entries that may change.

For each parameter p with gradient g, at step t (counted per optimiser since its last `reset`):

    m ← β1 m + (1 − β1) g;   v ← β2 v + (1 − β2) g²
    p ← p − α_t (λ p + (m / (1 − β1^t)) / (sqrt(v / (1 − β2^t)) + ε)),   α_t = lr[s] · factor

and entries whose mask is False keep their value (frozen experts, other tasks' routers).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def _rows(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


class RunAdamW:
    """AdamW over ``params`` (dict of ``[S, ...]`` leaf tensors); ``lr``, ``weight_decay`` are ``[S]``."""

    def __init__(
        self,
        params: Mapping[str, torch.Tensor],
        lr: torch.Tensor,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: torch.Tensor | None = None,
    ) -> None:
        self.params = dict(params)
        self.lr = lr
        self.betas, self.eps = betas, eps
        self.weight_decay = weight_decay if weight_decay is not None else torch.zeros_like(lr)
        self.m = {k: torch.zeros_like(p) for k, p in self.params.items()}
        self.v = {k: torch.zeros_like(p) for k, p in self.params.items()}
        self.t = torch.zeros((), dtype=torch.float64)

    def reset(self) -> None:
        """Forget the moments and the step count (a fresh optimiser, e.g. per task)."""
        for d in (self.m, self.v):
            for x in d.values():
                x.zero_()
        self.t.zero_()

    @torch.no_grad()
    def step(self, factor: float = 1.0, masks: Mapping[str, torch.Tensor] | None = None) -> None:
        """One update from each parameter's ``.grad`` (missing gradients count as zero)."""
        self.t += 1
        b1, b2 = self.betas
        c1 = 1.0 - b1 ** float(self.t)
        c2 = 1.0 - b2 ** float(self.t)
        for k, p in self.params.items():
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            m, v = self.m[k], self.v[k]
            m.lerp_(g, 1.0 - b1)
            v.lerp_(g.square(), 1.0 - b2)
            lr = _rows(self.lr, p) * factor
            update = (m / c1) / ((v / c2).sqrt() + self.eps) + _rows(self.weight_decay, p) * p
            new = p - lr * update
            if masks is not None and k in masks:
                new = torch.where(masks[k], new, p)
            p.copy_(new)

    def state_dict(self) -> dict[str, object]:
        return {"m": self.m, "v": self.v, "t": self.t}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        for name in ("m", "v"):
            for k, x in getattr(self, name).items():
                x.copy_(state[name][k])  # type: ignore[index]
        self.t.copy_(state["t"])  # type: ignore[arg-type]
