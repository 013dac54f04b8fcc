"""Online (per-example) learning of a seed-batched MLP: the learner of the SCR and permuted-MNIST
experiments. One `step` = forward, loss gradient, hand-written backward, then the method layer's
points in their documented order (`lop.algos.method_layer`): gradient edits, the optimiser update
(L2 inside the optimiser), after-step hooks (Shrink & Perturb noise, then continual backprop).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from lop.algos.cbp import ContinualBackprop
from lop.algos.method_layer import MethodStack
from lop.config import MethodConfig
from lop.nets.mlp import BatchedMLP, ForwardCache
from lop.rng import RunStreams


class OnlineMLPLearner:
    """Net + the method stack (optimiser and method hooks) for a batch of runs sharing one architecture."""

    HOOK_POINTS = frozenset({"edit_grads", "after_step"})

    def __init__(
        self,
        net: BatchedMLP,
        methods: Sequence[MethodConfig],
        streams: RunStreams,
        loss: Literal["mse", "cross_entropy"],
    ) -> None:
        self.net = net
        self.loss = loss
        self.methods = MethodStack(
            methods,
            streams,
            params=net.parameters(),
            unit_layers=net.unit_layers() if net.n_hidden > 0 else (),
            learner_points=self.HOOK_POINTS,
            flat_optimizer_state=True,  # a dozen tensor ops per Adam step instead of a dozen per parameter
        )
        self.optimizer = self.methods.optimizer
        cbp = self.methods.get("cbp")
        self.cbp: ContinualBackprop | None = cbp.impl if cbp is not None else None  # type: ignore[attr-defined]

    def loss_grad(self, out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-example loss ``[S, B]``, d mean-loss / d out) for squared error or cross-entropy."""
        if self.loss == "mse":
            err = out.squeeze(-1) - target
            return err * err, (2.0 / err.shape[1]) * err.unsqueeze(-1)
        logp = torch.log_softmax(out, -1)
        nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        grad = logp.exp()
        grad.scatter_add_(-1, target.unsqueeze(-1), torch.full_like(nll, -1.0).unsqueeze(-1))
        return nll, grad / out.shape[1]

    @torch.no_grad()
    def step(self, t: int, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One online update on x ``[S, B, in]``; returns (loss ``[S, B]``, output before the update)."""
        out, cache = self.net.forward(x)
        loss, grad = self.loss_grad(out, target)
        self.update(t, cache, grad)
        return loss, out

    def update(self, t: int, cache: ForwardCache, grad_out: torch.Tensor) -> None:
        self.methods.step(t, self.net.backward(cache, grad_out, reuse_buffers=True), cache.post)

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "methods": self.methods.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.methods.load_state_dict(state["methods"])
