"""Experience replay: a per-run memory of past training examples mixed into every batch, seed-batched.

Every run keeps a buffer of M examples (``x [S, M, ...]``, ``y [S, M]``). At each step (``mix_batch``):

1. once the buffer holds examples, ``batch`` of them are drawn without replacement (a uniform random
   permutation of the filled slots per run, repeated cyclically if fewer slots are filled than
   ``batch``) and appended to the step's batch, which becomes B + ``batch`` examples; before the first
   example is stored nothing is appended;
2. the step's new examples are then offered to the buffer:

   * ``reservoir`` (Vitter's algorithm R over the whole stream): the i-th example seen (0-based) takes
     slot i while i < M, afterwards slot j with j uniform on {0, …, i} if j < M (else it is dropped),
     so the buffer is a uniform sample of everything seen; within a batch a later example wins a slot;
   * ``class_balanced``: the buffer is split into C equal per-class reservoirs of q = ⌊M/C⌋ slots
     (C = the network's outputs: the last optimised tensor is the output bias ``[S, C]``), and each
     example enters its own class's reservoir by algorithm R over that class's examples, so every
     class keeps the same budget ("q examples per class"); slots of classes not seen yet stay empty.

Random draws come from `lop.rng` keyed by the number of ``mix_batch`` calls, which is resume state with
the buffer. Replayed labels keep their class, so a task-incremental label mask restricts a replayed
example to its own task's outputs, and class-incremental masking applies to it like to a new example.
"""

from __future__ import annotations

from typing import Any

import torch

from lop.algos.ewc import same_in_all_runs
from lop.algos.method_layer import MethodContext, MethodHook, TaskEnd
from lop.config import ReplayConfig
from lop.errors import ConfigError

_TWO24 = float(1 << 24)


def _uniform53(streams, name: str, counter: int, n: int) -> torch.Tensor:
    """``[S, n]`` float64 uniforms on [0, 1) with 48 random bits (two 24-bit words)."""
    w = streams.bits(name, counter, 2 * n)
    hi = (w[:, :n] >> 8).double()
    lo = (w[:, n:] >> 8).double()
    return (hi + lo / _TWO24) / _TWO24


def reservoir_slots(seen: torch.Tensor, capacity: int, u: torch.Tensor) -> torch.Tensor:
    """Algorithm R: the slot of the example with 0-based stream index ``seen`` (int64, any shape), or
    ``capacity`` (= dropped); ``u`` are uniforms on [0, 1) of the same shape."""
    draw = torch.floor(u * (seen + 1).double()).to(torch.int64)
    return torch.where(seen < capacity, seen, torch.where(draw < capacity, draw, capacity))


class ExperienceReplay(MethodHook):
    """The buffer of each run and its filling policy."""

    # end_task: the buffer's occupancy is reported after each task; replay is a method of the task-sequence
    # learners (experiments without tasks reject it rather than run it untested)
    points = frozenset({"mix_batch", "end_task"})

    def __init__(self, configs: list[ReplayConfig], ctx: MethodContext) -> None:
        self.streams = ctx.streams
        self.device = ctx.streams.device
        self.capacity = same_in_all_runs(configs, "buffer", "replay")
        self.n_replay = same_in_all_runs(configs, "batch", "replay")
        self.policy = configs[0].policy
        self.n_classes = 1
        if self.policy == "class_balanced":
            out = ctx.params[-1] if ctx.params else None
            if out is None or out.dim() != 2:
                raise ConfigError("replay.policy", "class_balanced needs a network whose last tensor is the output bias [S, C]")
            self.n_classes = int(out.shape[-1])
            if 0 < self.capacity < self.n_classes:
                raise ConfigError(
                    "replay.buffer",
                    f"class_balanced needs at least one slot per class ({self.n_classes} outputs), got {self.capacity}",
                )
        self.quota = self.capacity // self.n_classes  # slots per class (class_balanced)
        self.x: torch.Tensor | None = None  # allocated on the first batch: [S, M, ...]
        self.y = torch.zeros(ctx.streams.n, self.capacity, dtype=torch.int64, device=self.device)
        self.filled = torch.zeros(ctx.streams.n, self.capacity, dtype=torch.bool, device=self.device)
        self.seen_per_class = torch.zeros(ctx.streams.n, self.n_classes, dtype=torch.int64, device=self.device)
        self.n_seen = 0  # examples offered per run (the same in every run)
        self.calls = 0

    def _draw(self) -> torch.Tensor:
        """Slots ``[S, batch]`` of replayed examples: a random order of the filled slots, cyclically."""
        keys = _uniform53(self.streams, "replay/draw", self.calls, self.capacity)
        keys = keys.masked_fill(~self.filled, 2.0)
        order = torch.argsort(keys, dim=1, stable=True)
        n_filled = self.filled.sum(1, keepdim=True)  # [S, 1], ≥ 1 here
        pos = torch.arange(self.n_replay, device=self.device).unsqueeze(0) % n_filled
        return order.gather(1, pos)

    def _target_slots(self, y: torch.Tensor) -> torch.Tensor:
        """Slot ``[S, B]`` for each new example (capacity = dropped)."""
        s, b = y.shape
        u = _uniform53(self.streams, "replay/insert", self.calls, b)
        if self.policy == "reservoir":
            seen = self.n_seen + torch.arange(b, device=self.device).unsqueeze(0).expand(s, b)
            return reservoir_slots(seen, self.capacity, u)
        # per-class index of each example: earlier examples of its class in the stream and in this batch
        onehot = torch.nn.functional.one_hot(y, self.n_classes)  # [S, B, C]
        before = onehot.cumsum(1) - onehot
        seen = self.seen_per_class.unsqueeze(1).expand(s, b, self.n_classes)
        index = (before + seen).gather(2, y.unsqueeze(-1)).squeeze(-1)
        self.seen_per_class += onehot.sum(1)
        slot = reservoir_slots(index, self.quota, u)
        return torch.where(slot < self.quota, y * self.quota + slot, self.capacity)

    @torch.no_grad()
    def _insert(self, x: torch.Tensor, y: torch.Tensor) -> None:
        s, b = y.shape
        if self.x is None:
            self.x = torch.zeros(s, self.capacity, *x.shape[2:], dtype=x.dtype, device=self.device)
        target = self._target_slots(y)
        # the last example of the batch aimed at a slot wins it (sequential semantics, deterministic)
        pos = torch.arange(b, device=self.device).unsqueeze(0).expand(s, b)
        last = torch.full((s, self.capacity + 1), -1, dtype=torch.int64, device=self.device)
        last.scatter_reduce_(1, target, pos, reduce="amax")
        last = last[:, : self.capacity]
        write = last >= 0
        src = last.clamp(min=0)
        new_x = x.gather(1, src.view(s, self.capacity, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:]))
        mask = write.view(s, self.capacity, *([1] * (x.dim() - 2)))
        self.x = torch.where(mask, new_x, self.x)
        self.y = torch.where(write, y.gather(1, src), self.y)
        self.filled |= write
        self.n_seen += b

    def mix_batch(self, t: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.capacity == 0:
            return x, y
        out_x, out_y = x, y
        if self.n_seen > 0 and self.x is not None:
            slots = self._draw()
            s = y.shape[0]
            rx = self.x.gather(1, slots.view(s, -1, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:]))
            out_x = torch.cat([x, rx], 1)
            out_y = torch.cat([y, self.y.gather(1, slots)], 1)
        self._insert(x, y)
        self.calls += 1
        return out_x, out_y

    def end_task(self, task: int, ctx: TaskEnd) -> dict[str, torch.Tensor]:
        """Per run ``[S]``: the number of stored examples and of distinct classes among them."""
        if self.capacity == 0:
            zero = torch.zeros(self.y.shape[0], dtype=torch.int64, device=self.device)
            return {"buffer_examples": zero, "buffer_classes": zero}
        onehot = torch.nn.functional.one_hot(self.y, int(self.y.max()) + 1).bool() & self.filled.unsqueeze(-1)
        return {"buffer_examples": self.filled.sum(1), "buffer_classes": onehot.any(1).sum(1)}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "y": self.y,
            "filled": self.filled,
            "seen_per_class": self.seen_per_class,
            "n_seen": self.n_seen,
            "calls": self.calls,
        }
        if self.x is not None:
            state["x"] = self.x
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.y.copy_(state["y"])
        self.filled.copy_(state["filled"])
        self.seen_per_class.copy_(state["seen_per_class"])
        self.n_seen = int(state["n_seen"])
        self.calls = int(state["calls"])
        self.x = state["x"].to(self.device).clone() if "x" in state else None
