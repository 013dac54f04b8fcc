"""Learning without Forgetting (Li & Hoiem 2017), seed-batched, as a loss term of the method layer.

At the end of each task the hook keeps a frozen copy of the network (parameters and buffers; put in
evaluation mode where the network has one) and records the *old outputs*: the output units the
finished task's examples were allowed to use under the scenario's mask (from the masked
log-probabilities of `lop.algos.method_layer.TaskEnd`). A recorded output set that is a strict subset
of another is dropped, so

* task-incremental: one set per past task, its own classes (the old heads);
* domain-incremental: the shared head (all outputs);
* class-incremental: the classes seen up to the previous task.

While training a later task, for the (possibly replay-mixed) batch x of every run the loss gains

    α·T²·Σ_H (1/B) Σ_b KL( softmax(z_old,H(x_b)/T) ‖ softmax(z_H(x_b)/T) )

summed over the old output sets H, with z the current logits and z_old the frozen copy's. The T² keeps
the gradient's scale independent of T (Hinton et al.). Before the first task ends there is no old
model and no term. The method works in all three scenarios (`LwFConfig.SCENARIOS`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from lop.algos.method_layer import MethodContext, MethodHook, TaskEnd
from lop.config import LwFConfig
from lop.errors import ConfigError
from lop.optim import per_run


def _tensors(net: Any) -> list[torch.Tensor]:
    """The network's parameters and (if it has them) buffers, in a fixed order."""
    out = list(net.parameters())
    buffers = getattr(net, "buffers", None)
    if isinstance(buffers, dict):
        out += list(buffers.values())
    return out


class LearningWithoutForgetting(MethodHook):
    """The frozen model of the previous task end and the old output sets it is distilled on."""

    points = frozenset({"loss_terms", "end_task"})

    def __init__(self, configs: list[LwFConfig], ctx: MethodContext) -> None:
        if ctx.net is None:
            raise ConfigError("lwf", "this learner does not hand its network to the method layer")
        self.net = ctx.net
        device = ctx.streams.device
        self.alpha = per_run([c.alpha for c in configs], device)
        self.temperature = per_run([c.temperature for c in configs], device)
        self.old: Any = None
        self.heads: list[torch.Tensor] = []  # index tensors of the old output sets

    def _snapshot(self) -> None:
        self.old = copy.deepcopy(self.net)
        if hasattr(self.old, "training"):
            self.old.training = False
        for p in self.old.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def end_task(self, task: int, ctx: TaskEnd) -> None:
        used: torch.Tensor | None = None
        for x, y in ctx.batches(256, 256):
            allowed = torch.isfinite(ctx.log_probs(x, y)).flatten(0, 1).any(0)
            used = allowed if used is None else used | allowed
        if used is not None:
            sets = [set(h.tolist()) for h in self.heads] + [set(torch.nonzero(used).flatten().tolist())]
            keep = [a for i, a in enumerate(sets) if not any(a < b for b in sets) and a not in sets[:i]]
            self.heads = [torch.tensor(sorted(a), dtype=torch.int64) for a in keep]
        self._snapshot()

    def loss_terms(self, t: int, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        if self.old is None or not self.heads:
            return None
        with torch.no_grad():
            old_logits = self.old(x)
        temp = self.temperature.view(-1, 1, 1)
        total = torch.zeros_like(self.alpha)
        for head in self.heads:
            idx = head.to(logits.device)
            new = torch.log_softmax(logits.index_select(-1, idx).float() / temp, -1)
            old = torch.log_softmax(old_logits.index_select(-1, idx).float() / temp, -1)
            kl = (old.exp() * (old - new)).sum(-1).mean(1)  # [S]
            total = total + kl
        return self.alpha * self.temperature.square() * total

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"heads": [h.clone() for h in self.heads]}
        if self.old is not None:
            state["old"] = [t.detach() for t in _tensors(self.old)]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.heads = [torch.as_tensor(h, dtype=torch.int64) for h in state["heads"]]
        if "old" in state:
            self._snapshot()
            with torch.no_grad():
                for d, s in zip(_tensors(self.old), state["old"], strict=True):
                    d.copy_(s)
        else:
            self.old = None
