"""Online (per-example) learning of a seed-batched MLP: the learner of the SCR and permuted-MNIST
experiments. One `step` = forward, loss gradient, hand-written backward, optimiser update
(L2 inside the optimiser), Shrink & Perturb noise, then continual backpropagation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from lop.algos.cbp import ContinualBackprop
from lop.algos.perturb import GaussianPerturbation
from lop.config import MethodConfig
from lop.nets.mlp import BatchedMLP, ForwardCache
from lop.optim import make_optimizer, per_run
from lop.rng import RunStreams


class OnlineMLPLearner:
    """Net + optimiser + perturbation + CBP for a batch of runs sharing one architecture."""

    def __init__(
        self,
        net: BatchedMLP,
        methods: Sequence[MethodConfig],
        streams: RunStreams,
        loss: Literal["mse", "cross_entropy"],
    ) -> None:
        device = streams.device
        self.net = net
        self.loss = loss
        self.optimizer = make_optimizer(net.parameters(), methods, device)
        std = per_run([m.noise_std for m in methods], device)
        self.perturb = GaussianPerturbation(net.parameters(), std, streams) if bool((std > 0).any()) else None
        cbp_cfgs = [m.cbp for m in methods]
        self.cbp = None
        if all(c is not None for c in cbp_cfgs) and net.n_hidden > 0:
            self.cbp = ContinualBackprop(net.unit_layers(), cbp_cfgs, streams, self.optimizer)  # type: ignore[arg-type]

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
        self.optimizer.step(self.net.backward(cache, grad_out))
        if self.perturb is not None:
            self.perturb.step(t)
        if self.cbp is not None:
            self.cbp.step(t, cache.post)

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "cbp": self.cbp.state_dict() if self.cbp is not None else {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.cbp is not None:
            self.cbp.load_state_dict(state["cbp"])
