"""The update of a seed-batched classifier trained on a sequence of tasks (continual-learning scenarios).

`TaskSequenceLearner` is `lop.problems.image_tasks.MinibatchLearner` plus what task sequences need:

* **output masks** that encode the scenario. With ``label_mask`` (bool ``[C, C]``) an example with
  label ``y`` may only use the outputs ``label_mask[y]``; the other logits are set to −inf before the
  softmax, for training, evaluation and the end-of-task statistics alike. Task-incremental learning
  masks each example to its own task's classes (block-diagonal ``label_mask``, see `task_label_mask`);
  class-incremental learning uses the classes seen so far (``n_logits``); domain-incremental learning
  uses a shared head and no mask. The mask is taken from the labels *after* the data hook, so replayed
  examples of an old task keep their own task's outputs.
* the method layer's ``loss_terms`` point (distillation terms added to the loss before backward),
  ``end_task`` point (`lop.algos.method_layer.TaskEnd`), which the experiment calls after each task,
  and ``at_boundary`` point (ReDo), which the experiment calls after each task with a probe batch.

The loss of one run is the mean cross-entropy over its batch, L_s = −(1/B) Σ_b log p_s(y_b | x_b),
plus the hooks' loss terms; the returned loss and accuracy are those of the data term only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from lop.algos.method_layer import TaskEnd
from lop.config import MethodConfig
from lop.nets.units import UnitLayer
from lop.problems.image_tasks import MinibatchLearner
from lop.rng import RunStreams

__all__ = ["TaskSequenceLearner", "masked_log_probs", "task_label_mask"]

NEG_INF = float("-inf")


def task_label_mask(task_of_class: Sequence[int] | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """Task-incremental mask: ``mask[y, c]`` is true when classes ``y`` and ``c`` belong to one task.

    ``task_of_class[c]`` is the task of class ``c``; returns bool ``[C, C]``.
    """
    task = torch.as_tensor(task_of_class, device=device)
    return task[:, None] == task[None, :]


def masked_log_probs(
    logits: torch.Tensor,
    y: torch.Tensor | None = None,
    label_mask: torch.Tensor | None = None,
    n_logits: int | None = None,
) -> torch.Tensor:
    """log-softmax of ``logits [S, B, C]`` over the allowed outputs; disallowed outputs get −inf.

    ``n_logits`` keeps only the first outputs (class-incremental: the classes seen so far) and
    ``label_mask[y]`` (with the labels ``y [S, B]``) restricts each example to its task's outputs.
    """
    if n_logits is not None:
        logits = logits[..., :n_logits]
    logits = logits.float()
    if label_mask is not None:
        if y is None:
            raise ValueError("a label mask needs the labels")
        allowed = label_mask[y][..., : logits.shape[-1]]
        logits = logits.masked_fill(~allowed, NEG_INF)
    return torch.log_softmax(logits, dim=-1)


class TaskSequenceLearner(MinibatchLearner):
    """A `MinibatchLearner` for task sequences: scenario masks, loss terms and end-of-task hooks."""

    HOOK_POINTS = MinibatchLearner.HOOK_POINTS | frozenset({"loss_terms", "end_task", "at_boundary"})

    def __init__(
        self,
        net,
        methods: Sequence[MethodConfig],
        streams: RunStreams,
        cbp_layers: Sequence[UnitLayer] = (),
        label_mask: torch.Tensor | None = None,
    ) -> None:
        super().__init__(net, methods, streams, cbp_layers)
        self.label_mask = label_mask

    def log_probs(self, x: torch.Tensor, y: torch.Tensor | None, n_logits: int | None = None) -> torch.Tensor:
        """Masked log-probabilities ``[S, B, C']`` of the current network (with its graph)."""
        return masked_log_probs(self.net(x), y, self.label_mask, n_logits)

    def step(
        self, t: int, x: torch.Tensor, y: torch.Tensor, n_logits: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One update on x ``[S, B, ...]``, y ``[S, B]``; returns (data loss ``[S]``, accuracy ``[S]``)."""
        x, y = self.methods.mix_batch(t, x, y)
        acts: dict[str, torch.Tensor] = {}
        if self.methods.needs_activations:
            logits, acts = self.net(x, return_activations=True)
        else:
            logits = self.net(x)
        logp = masked_log_probs(logits, y, self.label_mask, n_logits)
        loss = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(1)  # [S]
        total = loss
        if self.methods.has_loss_terms:
            extra = self.methods.loss_terms(t, x, y, logits)
            if extra is not None:
                total = loss + extra
        grads = list(torch.autograd.grad(total.sum(), self.params))
        self.methods.step(t, grads, [acts[layer.name].detach() for layer in self.cbp_layers] if acts else ())
        loss = loss.detach()
        self.bad |= ~torch.isfinite(total.detach())
        acc = (logp.detach().argmax(-1) == y).to(torch.float32).mean(1)
        return loss, acc

    @torch.no_grad()
    def predict(self, x: torch.Tensor, y: torch.Tensor | None = None, n_logits: int | None = None) -> torch.Tensor:
        """Predicted classes ``[S, B]`` under the scenario's mask (``y`` selects task-IL masks)."""
        return masked_log_probs(self.net(x), y, self.label_mask, n_logits).argmax(-1)

    def end_task(
        self,
        task: int,
        batches: Callable[[int, int], Iterator[tuple[torch.Tensor, torch.Tensor]]],
        n_logits: int | None = None,
    ) -> dict[str, Any]:
        """Call the method layer's ``end_task`` point after task ``task`` (1-based)."""
        ctx = TaskEnd(
            task=task,
            batches=batches,
            log_probs=lambda x, y: self.log_probs(x, y, n_logits),
            params=self.params,
        )
        return self.methods.end_task(task, ctx)

    def at_boundary(self, counter: int, probe: Callable[[], list[torch.Tensor]]) -> dict[str, Any]:
        """Call the method layer's ``at_boundary`` point (``counter`` = tasks trained; ``probe()`` returns
        the hidden activations ``[S, B, units, ...]`` of `cbp_layers` on probe data)."""
        return self.methods.at_boundary(counter, probe)
