"""Corrections of the classifier layer for class-incremental streams (docs/protocols/budgeted_cl.md).

All three work on the ``fc`` head of a network (``fc.weight [S, C, D]``, ``fc.bias [S, C]``) whose
outputs are the classes in the order they were seen; "new" classes are the latest step's.

* ``wa`` (weight aligning, Zhao et al. 2020): after each step, the new classes' weight rows are
  multiplied by γ = mean_{c old} ‖w_c‖ / mean_{c new} ‖w_c‖ (per run), so that new classes do not
  dominate by norm.
* ``bic`` (bias correction, Wu et al. 2019): after each step, two scalars (α, β) per run rescale the new
  classes' logits, z_c ← α z_c + β for new c, fitted by ``bic_steps`` steps of gradient descent
  (step ``bic_lr``) on the cross-entropy of held-out stored examples (their logits computed once);
  the correction applies to evaluation and to the logits the experiment stores, not to training.
* ``cosine`` (cosine normalisation, Hou et al. 2019): logits z_c = σ · cos(f, w_c) of the features f,
  with no bias, in training and evaluation.
"""

from __future__ import annotations

from typing import Any

import torch

from lop.config import FCCorrectionConfig


class CorrectedNet:
    """A network with a corrected head: the experiment trains and evaluates through this wrapper.

    ``forward(x, return_features=, return_activations=)`` has the wrapped network's interface.
    With a cosine head the logits are σ·cos(f, w_c); with BiC, `correct` (set by the experiment
    for evaluation and stored logits) applies z_c ← α z_c + β to the classes in ``[bic_lo, bic_hi)``.
    """

    def __init__(self, net: Any, cfg: FCCorrectionConfig | None, n_runs: int, device: torch.device) -> None:
        self.net = net
        self.kind = cfg.kind if cfg is not None else None
        self.sigma = cfg.sigma if cfg is not None else 1.0
        self.alpha = torch.ones(n_runs, device=device)
        self.beta = torch.zeros(n_runs, device=device)
        self.bic_range = torch.zeros(2, dtype=torch.int64)  # [lo, hi) of the corrected classes
        self.correct = False

    # the wrapped network's bookkeeping
    def parameters(self) -> list[torch.Tensor]:
        return self.net.parameters()

    def train(self, mode: bool = True) -> CorrectedNet:
        self.net.train(mode)
        return self

    def eval(self) -> CorrectedNet:
        return self.train(False)

    def unit_layers(self, *args: Any) -> list[Any]:
        return self.net.unit_layers(*args) if hasattr(self.net, "unit_layers") else []

    def forward(
        self, x: torch.Tensor, return_features: bool = False, return_activations: bool = False
    ) -> torch.Tensor | tuple[Any, ...]:
        out = self.net(x, return_features=True, return_activations=return_activations)
        logits, feats = out[0], out[1]
        if self.kind == "cosine":
            w = torch.nn.functional.normalize(self.net.params["fc.weight"], dim=-1)
            f = torch.nn.functional.normalize(feats, dim=-1)
            # the bias takes no part (0 · b keeps it in the graph with a zero gradient)
            logits = self.sigma * torch.bmm(f, w.transpose(1, 2)) + 0.0 * self.net.params["fc.bias"].unsqueeze(1)
        if self.kind == "bic" and self.correct:
            logits = bic_apply(logits, self.alpha, self.beta, int(self.bic_range[0]), int(self.bic_range[1]))
        extra: tuple[Any, ...] = ()
        if return_features:
            extra += (feats,)
        if return_activations:
            extra += (out[2],)
        return (logits, *extra) if extra else logits

    __call__ = forward

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"alpha": self.alpha, "beta": self.beta, "bic_range": self.bic_range}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.alpha.copy_(state["alpha"])
        self.beta.copy_(state["beta"])
        self.bic_range.copy_(state["bic_range"])


def bic_apply(logits: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """z_c ← α_s z_c + β_s for classes lo ≤ c < hi of logits ``[S, B, C]``."""
    if hi <= lo:
        return logits
    cols = torch.arange(logits.shape[-1], device=logits.device)
    new = ((cols >= lo) & (cols < hi)).to(logits.dtype)
    a = alpha.view(-1, 1, 1).to(logits.dtype)
    b = beta.view(-1, 1, 1).to(logits.dtype)
    return logits + new * ((a - 1) * logits + b)


@torch.no_grad()
def weight_align(fc_weight: torch.Tensor, n_old: int, n_all: int) -> torch.Tensor:
    """Weight aligning in place: rows ``[n_old, n_all)`` of ``fc_weight [S, C, D]`` times γ_s; returns γ ``[S]``."""
    norms = fc_weight[:, :n_all].norm(dim=-1)  # [S, n_all]
    gamma = norms[:, :n_old].mean(1) / norms[:, n_old:n_all].mean(1).clamp(min=1e-12)
    fc_weight[:, n_old:n_all] *= gamma.view(-1, 1, 1).to(fc_weight.dtype)
    return gamma


def fit_bic(
    logits: torch.Tensor, y: torch.Tensor, lo: int, hi: int, steps: int, lr: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(α, β) ``[S]`` minimising the mean cross-entropy of bic_apply(logits ``[S, V, C]``) for labels
    ``y [S, V]``, by ``steps`` steps of gradient descent from (1, 0); the runs are independent."""
    s = logits.shape[0]
    z = logits.detach().float()
    ab = torch.zeros(s, 2, device=z.device)
    ab[:, 0] = 1.0
    with torch.enable_grad():
        for _ in range(steps):
            ab.requires_grad_(True)
            out = bic_apply(z, ab[:, 0], ab[:, 1], lo, hi)
            loss = -torch.log_softmax(out, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(1)
            (g,) = torch.autograd.grad(loss.sum(), ab)
            ab = (ab - lr * g).detach()
    return ab[:, 0], ab[:, 1]
