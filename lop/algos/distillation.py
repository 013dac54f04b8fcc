"""Distillation towards stored logits (docs/protocols/budgeted_cl.md), a loss term of the method layer.

When an example enters the storage its logits z° under the network of that moment are stored with
it (``store_logits``), over the n° classes seen then. A batch's distillation term compares the
current logits z with z° on those n° "old" columns, per example, then averages over the batch:

* ``bce``     (iCaRL)  mean_c BCE(σ(z_c/T), σ(z°_c/T)) over the old columns;
* ``kl``      (BiC)    (n°/n) · T² · KL(softmax(z°/T) ‖ softmax(z/T)) over the old columns, n the
                       classes trained on now;
* ``cosine``  (LUCIR)  max(½, √((n − n°)/n°)) · (1 − cos(z, z°)) on the old columns;
* ``mse``     (DER)    ½ · mean_c (z_c − z°_c)².

The term of run s is ``weight_s`` times the batch mean; examples stored with the current classes only
(n° = n) still count (their old columns are all columns).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from lop.algos.method_layer import MethodContext, MethodHook
from lop.config import DistillConfig
from lop.optim import per_run


def distill_loss(
    kind: str, z: torch.Tensor, z_old: torch.Tensor, n_old: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Per-run distillation term ``[S]`` (batch mean): current logits z ``[S, B, n]``, stored logits
    z_old ``[S, B, ≥n_old]``, the old column count n_old ``[S, B]`` of each example."""
    n = z.shape[-1]
    z_old = z_old[..., :n].to(z.dtype)
    cols = torch.arange(n, device=z.device)
    old = cols < n_old.unsqueeze(-1)  # [S, B, n]
    m = old.to(z.dtype)
    n_o = n_old.to(z.dtype).clamp(min=1)
    if kind == "bce":
        t = temperature
        target = torch.sigmoid(z_old / t)
        per = torch.nn.functional.binary_cross_entropy_with_logits(z / t, target, reduction="none")
        per_ex = (per * m).sum(-1) / n_o
    elif kind == "kl":
        t = temperature
        neg = torch.finfo(z.dtype).min
        logq = torch.log_softmax((z / t).masked_fill(~old, neg), -1)
        logp = torch.log_softmax((z_old / t).masked_fill(~old, neg), -1)
        kl = (logp.exp() * (logp - logq) * m).sum(-1)
        per_ex = kl * t * t * n_o / n
    elif kind == "cosine":
        cos = torch.nn.functional.cosine_similarity(z * m, z_old * m, dim=-1, eps=1e-8)
        lam = torch.sqrt(((n - n_o) / n_o).clamp(min=0)).clamp(min=0.5)
        per_ex = lam * (1 - cos)
    elif kind == "mse":
        per_ex = 0.5 * (((z - z_old) ** 2) * m).sum(-1) / n_o
    else:
        raise ValueError(f"unknown distillation loss {kind!r}; choose bce, kl, cosine or mse")
    return per_ex.mean(1)


class DistillHook(MethodHook):
    """The ``loss_terms`` point of distillation: before each step the experiment hands the batch's
    stored logits and old-class counts to `set_targets`; the hook adds weight_s · distill_loss."""

    points: ClassVar[frozenset[str]] = frozenset({"loss_terms"})

    def __init__(self, configs: list[DistillConfig], ctx: MethodContext) -> None:
        kinds = {c.loss for c in configs}
        temps = {c.temperature for c in configs}
        if len(kinds) != 1 or len(temps) != 1:
            raise ValueError("runs of one batch must share distill.loss and distill.temperature")
        self.kind = kinds.pop()
        self.temperature = temps.pop()
        self.weight = per_run([c.weight for c in configs], ctx.streams.device)
        self.targets: tuple[torch.Tensor, torch.Tensor] | None = None
        self.n_logits: int | None = None  # the classes trained on now (set by the experiment per step)

    def set_targets(self, z_old: torch.Tensor, n_old: torch.Tensor) -> None:
        """The batch's stored logits ``[S, B, C]`` and old-class counts ``[S, B]`` (for the next step)."""
        self.targets = (z_old, n_old)

    def loss_terms(self, t: int, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        if self.targets is None:
            raise RuntimeError("distillation needs the batch's stored logits (set_targets) before each step")
        z_old, n_old = self.targets
        self.targets = None
        n = logits.shape[-1] if self.n_logits is None else self.n_logits
        term = distill_loss(self.kind, logits[..., :n].float(), z_old, n_old, self.temperature)
        return self.weight.to(term.dtype) * term

    def state_dict(self) -> dict[str, Any]:
        return {}
