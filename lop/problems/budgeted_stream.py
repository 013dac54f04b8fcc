"""Data, stream, storage, budget and step-size schedule of compute-budgeted continual learning
(docs/protocols/budgeted_cl.md).

* **Classes.** Of the K classes, the first ⌊K/2⌋ are the *pretraining* classes (label = class id); the
  others form the *stream*, in a seeded order per run: stream class j of a run's order gets label
  ⌊K/2⌋ + j, so output unit ``c`` is the c-th class the run has met.
* **Stream.** Class-incremental: step t brings every training example of the run's stream classes
  ``[t·k, (t+1)·k)`` (k = stream classes / steps), in a seeded order. Data-incremental: all stream
  training examples in one seeded order, cut into equal consecutive chunks; every stream class can
  appear from step 1.
* **Storage.** Unlimited: every example seen, by position in the flat pool of training examples (no
  copies of images): first the pretraining classes' examples, then the stream in arrival order.
* **Budget.** Costs are counted in *forward units* (FU): training on one example (forward + backward)
  costs 3 FU, a forward pass without backward 1 FU. The budget of a step is
  U = round(3 · iterations · batch_size · budget_factor) FU, the same for every method. A method's
  fixed cost F per step (forward passes that do not depend on the number of trained examples: stored
  logits of the arriving examples, BiC's held-out logits) and its cost per trained example
  c = 3 + e (e forward passes per trained example: the scoring/coreset samplers' candidates) give
  n = ⌊(U − F)/c⌋ trained examples in ⌈n/B⌉ iterations of B (the last one smaller); the remainder
  U − F − n·c < c FU is forfeited. Charged = U for every method.
* **Step size.** Within each step it decays linearly to 0: iteration i of I uses lr · (1 − i/I).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lop.errors import ConfigError
from lop.rng import RunStreams

TRAIN_FU, FORWARD_FU = 3, 1


@dataclass(frozen=True)
class StepBudget:
    """One step's account in forward units: budget, fixed cost, cost per example, trained examples."""

    budget: int
    fixed: int
    per_example: int
    n_train: int
    forfeited: int

    @property
    def spent(self) -> int:
        """Everything charged: fixed + n_train·per_example + forfeited (= budget)."""
        return self.fixed + self.n_train * self.per_example + self.forfeited


def step_budget(
    iterations: int, batch_size: int, factor: float, fixed_forward: int, extra_per_example: int, where: str = "problem"
) -> StepBudget:
    """The account of one step (module docstring); raises ConfigError when nothing is left to train on."""
    if iterations <= 0 or batch_size <= 0 or factor <= 0:
        raise ConfigError(f"{where}.budget_factor", "the budget (iterations × batch_size × budget_factor) must be > 0")
    budget = round(TRAIN_FU * iterations * batch_size * factor)
    fixed = FORWARD_FU * fixed_forward
    per = TRAIN_FU + FORWARD_FU * extra_per_example
    n = (budget - fixed) // per
    if n < 1:
        raise ConfigError(
            f"{where}.iterations",
            f"a step's budget of {budget} forward units does not cover the method's fixed cost ({fixed}) and one "
            f"example ({per}); raise iterations or budget_factor",
        )
    return StepBudget(budget, fixed, per, n, budget - fixed - n * per)


def batch_sizes(n_train: int, batch_size: int) -> list[int]:
    """Sizes of the iterations that train on n_train examples: B, …, B, remainder."""
    full, rest = divmod(n_train, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


def linear_decay(i: int, n: int) -> float:
    """Step-size factor of iteration i (0-based) of n: 1 − i/n (1 at the start, → 0 at the end)."""
    return 1.0 - i / n


@dataclass
class PoolData:
    """Per-class data on the device: train ``[K, n_train, ...]`` and test ``[K, n_test, ...]``
    (uint8 images or float vectors), ``images``: CIFAR-style images, ``stand_in`` from the artifact."""

    train: torch.Tensor
    test: torch.Tensor
    images: bool
    stand_in: bool


def load_digits_pool(train_per_class: int, test_per_class: int, device: torch.device) -> PoolData:
    """The embedded 8×8 digits per class: the first examples of each class in file order train, the
    next ones test (a class with too few raises ConfigError naming the key)."""
    from lop.data.digits import load_digits

    x, y = load_digits()
    tr, te = [], []
    for c in range(10):
        rows = np.flatnonzero(y == c)
        if rows.size < train_per_class + test_per_class:
            raise ConfigError(
                "problem.train_per_class",
                f"digit class {c} has {rows.size} examples; train_per_class + test_per_class must be <= {rows.size}",
            )
        tr.append(x[rows[:train_per_class]])
        te.append(x[rows[train_per_class : train_per_class + test_per_class]])
    return PoolData(
        torch.from_numpy(np.stack(tr)).to(device), torch.from_numpy(np.stack(te)).to(device), False, True
    )


class Stream:
    """The per-run stream over the classes ``[n_pre, K)`` and the storage positions of its examples.

    ``arrivals(t)`` is ``[S, n_step]`` flat pool indices of step t's examples and ``labels(t)`` their
    labels ``[S, n_step]``; ``label_of_class [S, K]`` maps a class id to the run's output unit.
    """

    def __init__(
        self, streams: RunStreams, n_classes: int, per_class: int, n_steps: int, scenario: str
    ) -> None:
        self.n_pre = n_classes // 2
        self.n_stream = n_classes - self.n_pre
        self.per_class = per_class
        self.n_steps = n_steps
        self.scenario = scenario
        s, dev = streams.n, streams.device
        order = self.n_pre + streams.permutation("stream/class_order", 0, self.n_stream)  # [S, n_stream]
        self.order = order
        self.label_of_class = torch.arange(n_classes, device=dev).repeat(s, 1)
        self.label_of_class.scatter_(1, order, torch.arange(self.n_pre, n_classes, device=dev).repeat(s, 1))
        n_ex = self.n_stream * per_class
        if scenario == "class":
            k = self.n_stream // n_steps
            self.n_step = k * per_class
            # step-major: step t's classes, their examples shuffled within the step
            idx = (order.unsqueeze(-1) * per_class + torch.arange(per_class, device=dev)).flatten(1)
            steps = idx.view(s, n_steps, self.n_step)
            perm = torch.stack([streams.permutation("stream/within_step", t, self.n_step) for t in range(n_steps)], 1)
            self.flat = steps.gather(2, perm).flatten(1)
        else:
            self.n_step = n_ex // n_steps
            idx = (order.unsqueeze(-1) * per_class + torch.arange(per_class, device=dev)).flatten(1)
            perm = streams.permutation("stream/order", 0, n_ex)
            self.flat = idx.gather(1, perm)[:, : self.n_step * n_steps]
        rows = torch.arange(s, device=dev).unsqueeze(1)
        self.flat_labels = self.label_of_class[rows, self.flat // per_class]

    def arrivals(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        sl = slice(t * self.n_step, (t + 1) * self.n_step)
        return self.flat[:, sl], self.flat_labels[:, sl]

    def n_seen(self, t: int) -> int:
        """Outputs in use after step t (0-based) arrives: pretraining + seen stream classes."""
        if self.scenario == "class":
            return self.n_pre + (t + 1) * (self.n_stream // self.n_steps)
        return self.n_pre + self.n_stream


class Storage:
    """Everything seen, per run: pool indices ``[S, cap]``, labels, and (optionally) stored logits.

    ``n`` (a Python int, the same for every run) is the number of stored examples; ``n_old[i]`` the
    outputs in use when example i was stored (the columns its stored logits cover)."""

    def __init__(self, s: int, cap: int, n_out: int, device: torch.device, logits: bool) -> None:
        self.index = torch.zeros(s, cap, dtype=torch.int64, device=device)
        self.labels = torch.zeros(s, cap, dtype=torch.int64, device=device)
        self.n_old = torch.zeros(s, cap, dtype=torch.int64, device=device)
        self.logits = torch.zeros(s, cap, n_out, device=device) if logits else None
        self.count = torch.zeros((), dtype=torch.int64)

    @property
    def n(self) -> int:
        return int(self.count)

    def add(self, index: torch.Tensor, labels: torch.Tensor, n_old: int, logits: torch.Tensor | None) -> None:
        a, b = self.n, self.n + index.shape[1]
        self.index[:, a:b] = index
        self.labels[:, a:b] = labels
        self.n_old[:, a:b] = n_old
        if self.logits is not None and logits is not None:
            self.logits[:, a:b, : logits.shape[-1]] = logits
        self.count.fill_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {"index": self.index, "labels": self.labels, "n_old": self.n_old, "count": self.count}
        if self.logits is not None:
            out["logits"] = self.logits
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in self.state_dict().items():
            v.copy_(state[k])
