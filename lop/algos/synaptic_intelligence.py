"""Synaptic Intelligence (Zenke, Poole & Ganguli 2017), seed-batched, as the authors' code computes it.

Per parameter element k and run s (all tensors ``[S, ...]`` like the parameters; c and ξ are ``[S]``):

* **every step** (hook points ``edit_grads`` then ``after_step``):

  - g ← the gradient the learner hands to ``edit_grads`` *before* SI adds its penalty: the gradient
    of the unregularised loss (the data term plus any loss terms such as LwF's distillation; SI is
    registered first among the ``edit_grads`` hooks, so L2-Init's and EWC's penalty gradients are not
    in g, and weight decay is applied inside the optimiser, after it);
  - SI adds its penalty gradient: g_total = g + 2c·Ω⊙(θ − θ̃);
  - the optimiser steps; Δθ = θ_after − θ_before is the full applied update (penalty and optimiser
    state included; SI's ``after_step`` runs before Shrink & Perturb's noise and continual backprop);
  - ω ← ω − g⊙Δθ  (the path integral of the unregularised loss's decrease).

* **at the end of each task** (``end_task``):
  Ω ← relu(Ω + ω / ((θ − θ̃)² + ξ)),  θ̃ ← θ,  ω ← 0.

The penalty is P(θ) = c·Σ_k Ω_k(θ_k − θ̃_k)² (no ½, as in the code), so its gradient is 2cΩ(θ − θ̃).
θ̃ starts at the initial parameters (the split-MNIST code's anchor; the permuted-MNIST notebook of the
authors leaves it at 0 for the first task). The relu is in the code, not the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lop.algos.method_layer import MethodContext, MethodHook, TaskEnd
from lop.config import SIConfig
from lop.optim import per_run


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class SynapticIntelligence(MethodHook):
    """SI's state per run: ω (running path integral), Ω (importance), θ̃ (anchor of the last task end)."""

    points = frozenset({"edit_grads", "after_step", "end_task"})

    def __init__(self, configs: list[SIConfig], ctx: MethodContext) -> None:
        self.params = ctx.params
        device = ctx.streams.device
        self.c = per_run([cfg.c for cfg in configs], device)
        self.xi = per_run([cfg.xi for cfg in configs], device)
        self.omega = [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in self.params]
        self.importance = [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in self.params]
        self.anchor = [p.detach().clone(memory_format=torch.contiguous_format) for p in self.params]
        self.has_importance = False  # Ω = 0 until the first task ends: no penalty to add
        self._grad: list[torch.Tensor] = []
        self._before: list[torch.Tensor] = []

    def penalty(self) -> torch.Tensor:
        """P(θ) = c·Σ Ω(θ − θ̃)² per run ``[S]`` (for reporting and tests)."""
        total = torch.zeros_like(self.c)
        for p, om, th in zip(self.params, self.importance, self.anchor, strict=True):
            total = total + (om * (p.detach() - th).square()).flatten(1).sum(1).to(total.dtype)
        return self.c * total

    @torch.no_grad()
    def edit_grads(self, t: int, grads: list[torch.Tensor]) -> None:
        self._grad = [g.detach().clone() for g in grads]
        self._before = [p.detach().clone() for p in self.params]
        if not self.has_importance:
            return
        for i, (p, om, th) in enumerate(zip(self.params, self.importance, self.anchor, strict=True)):
            grads[i] = grads[i] + _bcast(2.0 * self.c, p) * om * (p.detach() - th)

    @torch.no_grad()
    def after_step(self, t: int, activations: Sequence[torch.Tensor]) -> None:
        for w, g, p, before in zip(self.omega, self._grad, self.params, self._before, strict=True):
            w.sub_(g * (p.detach() - before))
        self._grad, self._before = [], []

    @torch.no_grad()
    def end_task(self, task: int, ctx: TaskEnd) -> None:
        for w, om, th, p in zip(self.omega, self.importance, self.anchor, self.params, strict=True):
            delta = p.detach() - th
            om.add_(w / (delta.square() + _bcast(self.xi, p))).clamp_(min=0.0)
            th.copy_(p.detach())
            w.zero_()
        self.has_importance = True

    def state_dict(self) -> dict[str, Any]:
        return {
            "omega": self.omega,
            "importance": self.importance,
            "anchor": self.anchor,
            "has_importance": torch.tensor(self.has_importance),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("omega", "importance", "anchor"):
            for d, s in zip(getattr(self, name), state[name], strict=True):
                d.copy_(s)
        self.has_importance = bool(state["has_importance"])
