"""Seed-batched optimisers with per-run hyperparameters.

Every parameter has a leading run axis S; the step size, momentum, betas and weight decay are
``[S]`` tensors, so runs with different settings share one update. Weight decay is the coupled L2
penalty of `torch.optim.SGD`/`Adam` (``g ← g + λ·w``), which is what the paper's L2 and the
"shrink" of Shrink & Perturb use. Adam keeps a per-element step count so that continual
backpropagation can reset the moments *and* the bias correction of replaced weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lop.config import MethodConfig


def per_run(values: Sequence[float], device: torch.device | str, dtype=torch.float32) -> torch.Tensor:
    """An ``[S]`` tensor of per-run hyperparameter values."""
    return torch.tensor([float(v) for v in values], dtype=dtype, device=device)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


class BatchedOptimizer:
    """Base class: holds parameters, per-run hyperparameters and per-parameter state tensors."""

    state_names: tuple[str, ...] = ()

    def __init__(self, params: Sequence[torch.Tensor], weight_decay: torch.Tensor) -> None:
        self.params = list(params)
        self.weight_decay = weight_decay
        self.use_wd = bool((weight_decay > 0).any())
        self.state: list[dict[str, torch.Tensor]] = [
            {name: torch.zeros_like(p, memory_format=torch.contiguous_format) for name in self.state_names}
            for p in self.params
        ]
        self._index = {id(p): i for i, p in enumerate(self.params)}

    def _grad(self, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if self.use_wd:
            return torch.addcmul(g, p, _bcast(self.weight_decay, p))
        return g

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor] | None = None) -> None:
        """Apply one update; `grads` defaults to each parameter's ``.grad``."""
        if grads is None:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        for i, (p, g) in enumerate(zip(self.params, grads)):
            self._update(i, p, self._grad(p, g))

    def _update(self, i: int, p: torch.Tensor, g: torch.Tensor) -> None:
        raise NotImplementedError

    def state_views(self, view: torch.Tensor) -> list[torch.Tensor]:
        """The state tensors of the parameter `view` belongs to, viewed exactly like `view`."""
        base = view if view._base is None else view._base
        i = self._index.get(id(base))
        if i is None:
            return []
        return [
            s.as_strided(view.size(), view.stride(), view.storage_offset()) for s in self.state[i].values()
        ]

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        return {name: [st[name] for st in self.state] for name in self.state_names}

    def load_state_dict(self, state: dict[str, list[torch.Tensor]]) -> None:
        for name in self.state_names:
            for st, t in zip(self.state, state[name], strict=True):
                st[name].copy_(t)


class BatchedSGD(BatchedOptimizer):
    """SGD with optional heavy-ball momentum (PyTorch convention: buf ← μ·buf + g; w ← w − α·buf)."""

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        lr: torch.Tensor,
        momentum: torch.Tensor,
        weight_decay: torch.Tensor,
    ) -> None:
        self.use_momentum = bool((momentum > 0).any())
        self.state_names = ("momentum_buffer",) if self.use_momentum else ()
        super().__init__(params, weight_decay)
        self.lr, self.momentum = lr, momentum
        self.neg_lr = -lr

    def _update(self, i: int, p: torch.Tensor, g: torch.Tensor) -> None:
        if self.use_momentum:
            buf = self.state[i]["momentum_buffer"]
            buf.mul_(_bcast(self.momentum, p)).add_(g)
            g = buf
        p.addcmul_(g, _bcast(self.neg_lr, p))


class BatchedAdam(BatchedOptimizer):
    """Adam (Kingma & Ba 2015) with per-element bias corrections.

    ``corr1 = 1 − β1^t`` and ``corr2 = 1 − β2^t`` are kept per element as running products
    (c ← β·c + (1 − β)), so resetting an element's state to 0 restarts it at t = 0.
    """

    state_names = ("exp_avg", "exp_avg_sq", "corr1", "corr2")

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        lr: torch.Tensor,
        beta1: torch.Tensor,
        beta2: torch.Tensor,
        eps: torch.Tensor,
        weight_decay: torch.Tensor,
    ) -> None:
        super().__init__(params, weight_decay)
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps

    def _update(self, i: int, p: torch.Tensor, g: torch.Tensor) -> None:
        st = self.state[i]
        b1, b2 = _bcast(self.beta1, p), _bcast(self.beta2, p)
        st["exp_avg"].lerp_(g, 1.0 - b1)
        st["exp_avg_sq"].mul_(b2).add_(g * g * (1.0 - b2))
        st["corr1"].mul_(b1).add_(1.0 - b1)
        st["corr2"].mul_(b2).add_(1.0 - b2)
        denom = (st["exp_avg_sq"] / st["corr2"]).sqrt_().add_(_bcast(self.eps, p))
        p.sub_(_bcast(self.lr, p) * (st["exp_avg"] / st["corr1"]) / denom)


def make_optimizer(
    params: Sequence[torch.Tensor], methods: Sequence[MethodConfig], device: torch.device | str
) -> BatchedOptimizer:
    """The batched optimiser of a group of runs (all must use the same optimiser type)."""
    kinds = {m.optimizer for m in methods}
    if len(kinds) != 1:
        raise ValueError(f"runs of one batch must share an optimiser, got {sorted(kinds)}")
    lr = per_run([m.lr for m in methods], device)
    wd = per_run([m.weight_decay for m in methods], device)
    if kinds == {"sgd"}:
        return BatchedSGD(params, lr, per_run([m.momentum for m in methods], device), wd)
    return BatchedAdam(
        params,
        lr,
        per_run([m.betas[0] for m in methods], device),
        per_run([m.betas[1] for m in methods], device),
        per_run([m.eps for m in methods], device),
        wd,
    )
