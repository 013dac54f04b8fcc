"""Elastic weight consolidation (Kirkpatrick et al. 2017) and online EWC (Schwarz et al. 2018), seed-batched.

After task j ends, the diagonal Fisher F_j (`lop.algos.fisher`, estimator and sample count from the
config) and the parameters θ*_j are taken. While training a later task the loss gains

* EWC ("separate"):  P(θ) = (λ/2)·Σ_j Σ_k F_{j,k}(θ_k − θ*_{j,k})²  (one term per past task);
* online EWC:        P(θ) = (λ/2)·Σ_k γF*_k(θ_k − θ*_k)²,  F* ← γF* + F_t and θ* ← θ_t after task t
  (one running Fisher and one anchor; the penalty weighs the stored F* by γ as in Schwarz et al.'s
  objective, so γ = 1 keeps every task's Fisher undiscounted).

Its gradient λ·F(θ − θ*) is added to the learner's gradient at ``edit_grads`` (analytic, like L2-Init).
The convention is the ½ of the paper and a Fisher that is a *mean* over examples, so λ matches the
"three scenarios" code of van de Ven & Tolias; Avalanche and Mammoth drop the ½ (their λ is half of
ours for the same penalty) and Mammoth also weights by p(y|x) and divides differently, so λ values do
not transfer between libraries.

Separate EWC is stored without one tensor pair per task: Σ_j F_j(θ − θ*_j)² = A(θ − θ̄)² + const with
A = Σ_j F_j and θ̄ = Σ_j F_jθ*_j / A (θ̄ = the latest θ* where A = 0), exactly the same penalty gradient
A(θ − θ̄) with memory that does not grow with the number of tasks.
"""

from __future__ import annotations

from typing import Any

import torch

from lop.algos.fisher import diagonal_fisher
from lop.algos.method_layer import MethodContext, MethodHook, TaskEnd
from lop.config import EWCConfig
from lop.errors import ConfigError
from lop.optim import per_run


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def same_in_all_runs(configs: list[Any], key: str, where: str) -> Any:
    """The value of a shape-giving integer setting, which must agree across the runs of one batch."""
    values = {getattr(c, key) for c in configs}
    if len(values) > 1:
        raise ConfigError(
            f"{where}.{key}",
            f"must be the same in every run of one batch (got {sorted(values)}); "
            "set pack_settings: false or split the method",
        )
    return values.pop()


class EWC(MethodHook):
    """EWC / online EWC: the weight F (``[S, ...]`` per parameter) and anchor θ* of the quadratic penalty."""

    points = frozenset({"edit_grads", "end_task"})

    def __init__(self, configs: list[EWCConfig], ctx: MethodContext) -> None:
        self.params = ctx.params
        self.streams = ctx.streams
        device = ctx.streams.device
        self.estimator = configs[0].fisher
        self.online = configs[0].online
        self.n_samples = same_in_all_runs(configs, "fisher_samples", "ewc")
        self.fisher_batch = same_in_all_runs(configs, "fisher_batch", "ewc")
        self.lam = per_run([c.lam for c in configs], device)
        self.gamma = per_run([c.gamma for c in configs], device)
        # online: F* and θ*; separate: A = Σ_j F_j and θ̄ = Σ_j F_jθ*_j / A
        self.weight = [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in self.params]
        self.anchor = [p.detach().clone(memory_format=torch.contiguous_format) for p in self.params]
        self.n_tasks = 0

    def _penalty_weight(self, i: int) -> torch.Tensor:
        w = self.weight[i]
        return w * _bcast(self.gamma, w) if self.online else w

    def penalty(self) -> torch.Tensor:
        """The penalty's θ-dependent part (λ/2)·Σ F(θ − θ*)² per run ``[S]`` (separate EWC: up to the
        constant Σ_j F_jθ*_j² − Aθ̄², which has no gradient)."""
        total = torch.zeros_like(self.lam)
        for i, (p, th) in enumerate(zip(self.params, self.anchor, strict=True)):
            term = self._penalty_weight(i) * (p.detach() - th).square()
            total = total + term.flatten(1).sum(1).to(total.dtype)
        return 0.5 * self.lam * total

    @torch.no_grad()
    def edit_grads(self, t: int, grads: list[torch.Tensor]) -> None:
        if self.n_tasks == 0:
            return
        for i, (p, th) in enumerate(zip(self.params, self.anchor, strict=True)):
            grads[i] = grads[i] + _bcast(self.lam, p) * self._penalty_weight(i) * (p.detach() - th)

    def end_task(self, task: int, ctx: TaskEnd) -> dict[str, torch.Tensor]:
        """Estimate F_t and merge it into the penalty; returns the mean Fisher element per run ``[S]``."""
        fisher = diagonal_fisher(
            self.estimator, self.n_samples, ctx.batches, ctx.log_probs, self.params, self.streams, task,
            self.fisher_batch,
        )
        with torch.no_grad():
            for w, th, f, p in zip(self.weight, self.anchor, fisher, self.params, strict=True):
                f = f.to(w.dtype)
                theta = p.detach()
                if self.online:
                    w.mul_(_bcast(self.gamma, w)).add_(f)
                    th.copy_(theta)
                else:
                    total = w + f
                    mixed = (w * th + f * theta) / total
                    th.copy_(torch.where(total > 0, mixed, theta))
                    w.copy_(total)
        self.n_tasks += 1
        numel = sum(f[0].numel() for f in fisher)
        return {"fisher_mean": sum(f.flatten(1).sum(1) for f in fisher) / numel}

    def state_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "anchor": self.anchor, "n_tasks": self.n_tasks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("weight", "anchor"):
            for d, s in zip(getattr(self, name), state[name], strict=True):
                d.copy_(s)
        self.n_tasks = int(state["n_tasks"])
