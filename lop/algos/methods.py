"""The built-in methods, each registered once with the method layer (`lop.algos.method_layer`).

Registration order is the order in which hooks run at a point: Shrink & Perturb noise is added after
the optimiser step and before continual backprop replaces units (the paper's order). Synaptic
Intelligence is registered first: its ``edit_grads`` sees the gradient before any other penalty
(L2-Init, EWC) is added, and its ``after_step`` reads the optimiser's update before noise or unit
replacement changes the weights.

* ``si``         Synaptic Intelligence (`lop.algos.synaptic_intelligence`): path-integral importance Ω,
                 penalty c·Σ Ω(θ − θ̃)², consolidated at each task end;
* ``noise_std``  Shrink & Perturb's perturbation (`lop.algos.perturb`); the shrink is weight decay;
* ``cbp``        continual backpropagation (`lop.algos.cbp`), after every step with its activations;
* ``redo``       ReDo (`lop.algos.redo`), at the learner's boundaries on probe activations;
* ``l2_init``    L2-Init (Kumar, Marklund & Van Roy 2023): loss term λ‖θ − θ₀‖² towards the initial
                 parameters θ₀, i.e. gradient + 2λ(θ − θ₀) before the optimiser step;
* ``ewc``        EWC and online EWC (`lop.algos.ewc`): penalty (λ/2)·Σ F(θ − θ*) with the Fisher of
                 each finished task (`lop.algos.fisher`);
* ``replay``     experience replay (`lop.algos.replay`): a per-run buffer mixed into every batch;
* ``lwf``        Learning without Forgetting (`lop.algos.lwf`): distillation on the old outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from lop.algos.cbp import ContinualBackprop
from lop.algos.ewc import EWC
from lop.algos.lwf import LearningWithoutForgetting
from lop.algos.method_layer import MethodContext, MethodEntry, MethodHook, any_set, register
from lop.algos.perturb import GaussianPerturbation
from lop.algos.redo import ReDo
from lop.algos.replay import ExperienceReplay
from lop.algos.synaptic_intelligence import SynapticIntelligence
from lop.config import CBPConfig, L2InitConfig, ReDoConfig
from lop.optim import per_run


class ShrinkPerturbHook(MethodHook):
    """w ← w + ε, ε ~ N(0, σ_s²) per run after every optimiser step."""

    points = frozenset({"after_step"})

    def __init__(self, std: list[float], ctx: MethodContext) -> None:
        self.impl = GaussianPerturbation(ctx.params, per_run(std, ctx.streams.device), ctx.streams)

    def after_step(self, t: int, activations: Sequence[torch.Tensor]) -> None:
        self.impl.step(t)


class CBPHook(MethodHook):
    """Continual backprop over the context's hidden unit layers (utility, maturity, replacement)."""

    points = frozenset({"after_step"})

    def __init__(self, configs: list[CBPConfig], ctx: MethodContext) -> None:
        self.impl = ContinualBackprop(ctx.unit_layers, configs, ctx.streams, ctx.optimizer)

    def after_step(self, t: int, activations: Sequence[torch.Tensor]) -> None:
        self.impl.step(t, activations)

    def state_dict(self) -> dict[str, Any]:
        return self.impl.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.impl.load_state_dict(state)


class ReDoHook(MethodHook):
    """ReDo resets of dormant units at the boundaries where a run is due (``counter % every == 0``)."""

    points = frozenset({"at_boundary"})

    def __init__(self, configs: list[ReDoConfig], ctx: MethodContext) -> None:
        self.impl = ReDo(ctx.unit_layers, configs, ctx.streams, ctx.optimizer)

    def at_boundary(self, counter: int, probe: Callable[[], list[torch.Tensor]]) -> list[torch.Tensor] | None:
        if not self.impl.due(counter):
            return None
        return self.impl.step(counter, probe())

    def state_dict(self) -> dict[str, Any]:
        return self.impl.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.impl.load_state_dict(state)


class L2InitHook(MethodHook):
    """Regenerative regularisation: P(θ) = λ_s ‖θ − θ₀‖², so ∂P/∂θ = 2 λ_s (θ − θ₀), with θ₀ the
    parameters when the hook is built (the run's initialisation). θ₀ is part of the resume state."""

    points = frozenset({"edit_grads"})

    def __init__(self, configs: list[L2InitConfig], ctx: MethodContext) -> None:
        self.params = ctx.params
        self.init = [p.detach().clone() for p in self.params]
        self.coef = per_run([2.0 * c.strength for c in configs], ctx.streams.device)

    def edit_grads(self, t: int, grads: list[torch.Tensor]) -> None:
        for i, (p, p0) in enumerate(zip(self.params, self.init, strict=True)):
            c = self.coef.view(-1, *([1] * (p.dim() - 1))).to(p.dtype)
            grads[i] = grads[i] + c * (p.detach() - p0)

    def state_dict(self) -> dict[str, Any]:
        return {"init": self.init}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for d, s in zip(self.init, state["init"], strict=True):
            d.copy_(s)


register(MethodEntry("si", SynapticIntelligence.points, SynapticIntelligence, any_set))
register(
    MethodEntry(
        "noise_std",
        ShrinkPerturbHook.points,
        ShrinkPerturbHook,
        active=lambda stds: any(s > 0 for s in stds),
    )
)
register(MethodEntry("cbp", CBPHook.points, CBPHook, any_set, needs_units=True, needs_activations=True))
register(MethodEntry("redo", ReDoHook.points, ReDoHook, any_set, needs_units=True))
register(MethodEntry("l2_init", L2InitHook.points, L2InitHook, any_set))
register(MethodEntry("ewc", EWC.points, EWC, any_set))
register(MethodEntry("replay", ExperienceReplay.points, ExperienceReplay, any_set))
register(MethodEntry("lwf", LearningWithoutForgetting.points, LearningWithoutForgetting, any_set))
