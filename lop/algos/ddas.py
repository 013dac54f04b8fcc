"""Distribution-discriminative auto-selector (DDAS; Yu et al., CVPR 2024), seed-batched.

One autoencoder per task learns the distribution of that task's inputs, seen through a frozen feature
map f (here the frozen CLIP image embedding; the paper uses AlexNet's convolutional features):

    z = sigmoid(f(x));   AE_t(z) = sigmoid(W2 ReLU(W1 z + b1) + b2),  hidden 100;   err_t(x) = mean (AE_t(z) − z)²

trained with Adam on MSE (step size `lr`, ×0.1 every `decay_every` iterations, L2 `weight_decay`) on
minibatches of the task's training images. At test time, with the errors of the tasks learnt so far:

* per sample (default): t* = argmin_t err_t(x); the sample goes to zero-shot CLIP (route −1) if
  err_t*(x) > threshold, else to task t*'s router;
* per batch (the public code): the errors are averaged over the batch first, and the whole batch gets one
  decision.

Parameters are ``[S, ...]`` per task (a list over tasks); initial values are U(±1/√fan_in) (PyTorch's
default Linear init) from stream ``ddas/init/<task>``, minibatches from ``ddas/batch/<task>``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from lop.algos.adamw import RunAdamW
from lop.rng import RunStreams


def _lin(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x ``[S, B, in]`` -> ``[S, B, out]`` with w ``[S, out, in]``, b ``[S, out]``."""
    return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))


class TaskAutoencoders:
    """One autoencoder per task for S runs."""

    def __init__(self, streams: RunStreams, n_tasks: int, dim: int, hidden: int = 100) -> None:
        self.streams, self.dim, self.hidden = streams, dim, hidden
        self.tasks: list[dict[str, torch.Tensor]] = []
        for t in range(n_tasks):
            b1, b2 = 1.0 / math.sqrt(dim), 1.0 / math.sqrt(hidden)
            name = f"ddas/init/{t}"
            self.tasks.append(
                {
                    "enc.weight": streams.uniform(name, 0, (hidden, dim), -b1, b1),
                    "enc.bias": streams.uniform(name, 1, (hidden,), -b1, b1),
                    "dec.weight": streams.uniform(name, 2, (dim, hidden), -b2, b2),
                    "dec.bias": streams.uniform(name, 3, (dim,), -b2, b2),
                }
            )

    def reconstruct(self, t: int, z: torch.Tensor) -> torch.Tensor:
        p = self.tasks[t]
        h = torch.relu(_lin(z, p["enc.weight"], p["enc.bias"]))
        return torch.sigmoid(_lin(h, p["dec.weight"], p["dec.bias"]))

    @torch.no_grad()
    def errors(self, features: torch.Tensor, n_seen: int) -> torch.Tensor:
        """``[S, B, n_seen]`` mean squared reconstruction error of sigmoid(features) ``[S, B, D]`` (or a
        shared ``[B, D]``) under the autoencoders of tasks 0..n_seen−1."""
        z = torch.sigmoid(features)
        if z.dim() == 2:
            z = z.expand(self.streams.n, -1, -1)
        return torch.stack([(self.reconstruct(t, z) - z).square().mean(-1) for t in range(n_seen)], dim=-1)

    def train_task(
        self,
        t: int,
        features: torch.Tensor,
        *,
        steps: int,
        batch: int = 64,
        lr: float = 0.01,
        decay_every: int = 100,
        weight_decay: float = 1e-4,
    ) -> torch.Tensor:
        """Fit autoencoder `t` to sigmoid(features) ``[N, D]`` (shared by the runs); returns ``[S]`` final loss."""
        params = self.tasks[t]
        for p in params.values():
            p.requires_grad_(True)
        s = self.streams.n
        opt = RunAdamW(params, torch.full((s,), lr, device=features.device))
        z_all = torch.sigmoid(features)
        loss = torch.zeros(s, device=features.device)
        n = z_all.shape[0]
        # L2 inside the gradient, as torch.optim.Adam's weight_decay
        for step in range(steps):
            idx = self.streams.randint(f"ddas/batch/{t}", step, (min(batch, n),), n)
            z = z_all[idx]  # [S, b, D]
            per_run = (self.reconstruct(t, z) - z).square().mean(dim=(1, 2))
            total = per_run.sum() + 0.5 * weight_decay * sum(p.square().sum() for p in params.values())
            for p in params.values():
                p.grad = None
            total.backward()
            opt.step(factor=0.1 ** (step // decay_every))
            loss = per_run.detach()
        for p in params.values():
            p.requires_grad_(False)
            p.grad = None
        return loss

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{t}.{k}": v for t, p in enumerate(self.tasks) for k, v in p.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for t, p in enumerate(self.tasks):
                for k, v in p.items():
                    v.copy_(state[f"{t}.{k}"])


def select_routes(
    errors: torch.Tensor, threshold: float, mode: Literal["per_sample", "per_batch"] = "per_sample"
) -> torch.Tensor:
    """Routes ``[S, B]`` from reconstruction errors ``[S, B, T]``: the argmin task, or −1 (zero-shot)
    where its error exceeds `threshold`; ``per_batch`` decides once per batch on the batch-mean errors."""
    if mode == "per_batch":
        errors = errors.mean(dim=1, keepdim=True).expand_as(errors)
    best, idx = errors.min(dim=-1)
    return torch.where(best > threshold, torch.full_like(idx, -1), idx)
