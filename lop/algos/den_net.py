"""The network of Dynamically Expandable Networks (docs/protocols/den.md): a seed-batched multi-head MLP
with preallocated capacity, per-run masks of live units and a birth task per unit.

Layout (S runs, hidden layer l = 0..L−1 with ``cap[l]`` preallocated slots, ``n_prev`` = the previous
layer's slots or the input size D, T task heads of C outputs):

* ``weights[l]`` ``[S, cap[l], n_prev]`` (row = a unit's fan-in), ``biases[l]`` ``[S, cap[l]]``;
* ``head_w`` ``[S, T, C, cap[L−1]]``, ``head_b`` ``[S, T, C]``: one output head per task (multi-head);
* ``alive[l]`` bool ``[S, cap[l]]``: the slot holds a unit; ``birth[l]`` int64 ``[S, cap[l]]``: the task
  (1-based) in which the unit was born, `UNBORN` for empty slots;
* ``usable[l]`` bool ``[S, cap[l]]``: slots a run may ever fill (its own ``den.capacity``).

**Timestamped inference.** Task ``s`` uses the units with ``alive ∧ birth ≤ s`` and its own head:
h_l = relu(W_l h_{l−1} + b_l) ⊙ m_l(s), logits = H_s h_{L−1} + c_s. Units outside the mask output exactly
zero, so they neither contribute to the output nor receive a gradient through their fan-in, and their
fan-out columns receive a zero gradient. Empty slots hold zero weights (every update path keeps them so).

Every operation here is batched over runs and units (masks, gathers, ``torch.where``); nothing loops
over seeds or units, and every random draw comes from `lop.rng` with a counter derived from the task.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lop.rng import RunStreams

#: birth task of an empty slot (later than any task)
UNBORN = 1 << 62


class DENNetwork:
    """Weights, heads and unit masks of a batch of DEN runs (see the module docstring)."""

    def __init__(
        self,
        in_dim: int,
        widths: Sequence[int],
        capacity: torch.Tensor,
        n_tasks: int,
        n_out: int,
        streams: RunStreams,
    ) -> None:
        """``widths``: initial units per hidden layer; ``capacity`` ``[S]`` int64: slots per hidden layer
        of each run (the batch allocates the largest)."""
        dev = streams.device
        s = streams.n
        self.streams = streams
        self.in_dim, self.n_tasks, self.n_out = in_dim, n_tasks, n_out
        cap = int(capacity.max())
        self.capacity = capacity.to(dev)
        if any(w > int(capacity.min()) for w in widths):
            raise ValueError("capacity must be at least every initial width")
        self.cap = [cap] * len(widths)
        self.weights: list[torch.Tensor] = []
        self.biases: list[torch.Tensor] = []
        self.alive: list[torch.Tensor] = []
        self.birth: list[torch.Tensor] = []
        self.usable: list[torch.Tensor] = []
        slots = torch.arange(cap, device=dev)
        n_prev, w_prev = in_dim, in_dim
        for layer, width in enumerate(widths):
            w = torch.zeros(s, cap, n_prev, device=dev)
            bound = 1.0 / w_prev**0.5
            w[:, :width, :w_prev] = streams.uniform(
                f"den/init/layer{layer}", 0, (width, w_prev), -bound, bound
            )
            self.weights.append(w)
            self.biases.append(torch.zeros(s, cap, device=dev))
            live = (slots < width).unsqueeze(0).expand(s, -1).clone()
            self.alive.append(live)
            self.birth.append(torch.where(live, 1, UNBORN).to(torch.int64))
            self.usable.append(slots.unsqueeze(0) < self.capacity.unsqueeze(1))
            n_prev, w_prev = cap, width
        self.head_w = torch.zeros(s, n_tasks, n_out, n_prev, device=dev)
        self.head_b = torch.zeros(s, n_tasks, n_out, device=dev)

    @property
    def n_layers(self) -> int:
        return len(self.weights)

    def params(self) -> list[torch.Tensor]:
        """The optimised tensors: weights, biases, then the heads (``head_w``, ``head_b``)."""
        return [*self.weights, *self.biases, self.head_w, self.head_b]

    # ---- masks ------------------------------------------------------------------------------------
    def active(self, layer: int, task: int) -> torch.Tensor:
        """bool ``[S, cap]``: the units task ``task`` uses in hidden layer ``layer`` (alive, born ≤ task)."""
        return self.alive[layer] & (self.birth[layer] <= task)

    def input_mask(self, layer: int) -> torch.Tensor:
        """bool ``[S, n_prev]``: the live inputs of hidden layer ``layer`` (all pixels for layer 0)."""
        if layer == 0:
            return torch.ones(self.streams.n, self.in_dim, dtype=torch.bool, device=self.streams.device)
        return self.alive[layer - 1]

    def live_units(self) -> list[torch.Tensor]:
        """``[S]`` int64 per hidden layer: the number of live units."""
        return [a.sum(1) for a in self.alive]

    # ---- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, task: int, return_hidden: bool = False):
        """Logits ``[S, B, C]`` of task ``task`` (1-based) on x ``[S, B, D]``, with timestamped units."""
        h = x
        hidden = []
        for layer, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            m = self.active(layer, task).to(h.dtype).unsqueeze(1)
            h = torch.relu(torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))) * m
            hidden.append(h)
        hw, hb = self.head_w[:, task - 1], self.head_b[:, task - 1]
        logits = torch.baddbmm(hb.unsqueeze(1), h, hw.transpose(1, 2))
        return (logits, hidden) if return_hidden else logits

    # ---- growth -----------------------------------------------------------------------------------
    @torch.no_grad()
    def init_head(self, task: int, outputs: torch.Tensor) -> None:
        """Draw head ``task``: U(±1/√n) on the rows of ``outputs`` (bool ``[S, C]``, the task's classes) and
        the live units of the last hidden layer (n of them per run); other entries zero."""
        last = self.alive[-1]
        bound = 1.0 / last.sum(1).clamp(min=1).to(torch.float32).sqrt()
        w = self.streams.uniform("den/head", task, (self.n_out, self.cap[-1]), -bound, bound)
        keep = outputs.unsqueeze(2) & last.unsqueeze(1)
        self.head_w[:, task - 1] = torch.where(keep, w, 0.0)
        self.head_b[:, task - 1] = 0.0

    @torch.no_grad()
    def add_units(self, task: int, count: torch.Tensor, outputs: torch.Tensor) -> list[torch.Tensor]:
        """Give up to ``count`` ``[S]`` new units per hidden layer to each run (the first free usable
        slots), born at ``task``, with fan-in and fan-out U(±1/√n) over the live units they connect to
        (n = live inputs / live units of the layer; in the last layer, the fan-out goes to the task's
        outputs, bool ``[S, C]``). Returns the new units, bool ``[S, cap]`` per layer."""
        new = []
        for layer in range(self.n_layers):
            free = self.usable[layer] & ~self.alive[layer]
            rank = free.cumsum(1)
            new.append(free & (rank <= count.unsqueeze(1)))
            self.alive[layer] |= new[-1]
            self.birth[layer] = torch.where(new[-1], task, self.birth[layer])
        for layer in range(self.n_layers):
            ins = self.input_mask(layer)
            bound = 1.0 / ins.sum(1).clamp(min=1).to(torch.float32).sqrt()
            w = self.weights[layer]
            draw = self.streams.uniform(f"den/expand/layer{layer}", task, w.shape[1:], -bound, bound)
            fan_in = new[layer].unsqueeze(2) & ins.unsqueeze(1)
            self.weights[layer] = torch.where(fan_in, draw, w)
            self.biases[layer] = torch.where(new[layer], 0.0, self.biases[layer])
            bound = 1.0 / self.alive[layer].sum(1).clamp(min=1).to(torch.float32).sqrt()
            if layer + 1 < self.n_layers:
                nxt = self.weights[layer + 1]
                draw = self.streams.uniform(
                    f"den/expand_out/layer{layer}", task, nxt.shape[1:], -bound, bound
                )
                # fan-out into live units of the next layer that are not themselves new (theirs is drawn above)
                fan_out = (self.alive[layer + 1] & ~new[layer + 1]).unsqueeze(2) & new[layer].unsqueeze(1)
                self.weights[layer + 1] = torch.where(fan_out, draw, nxt)
            else:
                draw = self.streams.uniform(
                    "den/expand_out/head", task, (self.n_out, self.cap[-1]), -bound, bound
                )
                fan_out = outputs.unsqueeze(2) & new[layer].unsqueeze(1)
                self.head_w[:, task - 1] = torch.where(fan_out, draw, self.head_w[:, task - 1])
        return new

    @torch.no_grad()
    def remove_units(self, dead: Sequence[torch.Tensor]) -> None:
        """Empty the slots ``dead[l]`` (bool ``[S, cap]``): not alive, `UNBORN`, zero fan-in, bias and
        fan-out (in every head)."""
        for layer, d in enumerate(dead):
            self.alive[layer] &= ~d
            self.birth[layer] = torch.where(d, UNBORN, self.birth[layer])
            self.weights[layer] = self.weights[layer].masked_fill(d.unsqueeze(2), 0.0)
            self.biases[layer] = self.biases[layer].masked_fill(d, 0.0)
            if layer + 1 < self.n_layers:
                self.weights[layer + 1] = self.weights[layer + 1].masked_fill(d.unsqueeze(1), 0.0)
            else:
                self.head_w = self.head_w.masked_fill(d[:, None, None, :], 0.0)

    @torch.no_grad()
    def prune_empty(self, candidates: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Remove the units among ``candidates[l]`` (bool ``[S, cap]``) whose fan-in is all zero (group
        lasso zeroed it); returns the removed units per layer."""
        dead = [c & (w == 0).all(2) for c, w in zip(candidates, self.weights, strict=True)]
        self.remove_units(dead)
        return dead

    # ---- selection ----------------------------------------------------------------------------------
    def select_subnetwork(self, task: int, outputs: torch.Tensor) -> list[torch.Tensor]:
        """Breadth-first search from head ``task`` down the non-zero weights: a unit of the last hidden
        layer is selected when some weight from it to one of the task's outputs (``outputs`` bool
        ``[S, C]``) is non-zero; a unit of layer l−1 when some non-zero weight links it to a selected unit
        of layer l. Only units born before ``task`` are candidates. Returns bool ``[S, cap]`` per layer."""
        old = [a & (b < task) for a, b in zip(self.alive, self.birth, strict=True)]
        head = (self.head_w[:, task - 1] != 0) & outputs.unsqueeze(2)
        sel = [torch.zeros_like(a) for a in self.alive]
        sel[-1] = old[-1] & head.any(1)
        for layer in range(self.n_layers - 1, 0, -1):
            links = (self.weights[layer] != 0) & sel[layer].unsqueeze(2)
            sel[layer - 1] = old[layer - 1] & links.any(1)
        return sel

    # ---- split / duplication ------------------------------------------------------------------------
    @torch.no_grad()
    def split_units(
        self,
        task: int,
        prev_w: Sequence[torch.Tensor],
        prev_b: Sequence[torch.Tensor],
        sigma: torch.Tensor,
        split_max: torch.Tensor,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Duplicate the old units whose fan-in drifted by more than ``sigma`` ``[S]`` since ``prev_w``.

        Drift of unit i of layer l: ρ_i = ‖W_l[i, old] − W_l^{t−1}[i, old]‖₂ over its inputs from units
        born before ``task`` (all pixels in layer 0). Candidates are old units with ρ_i > σ; each run keeps
        at most ``split_max`` ``[S]`` of them per layer (the largest drifts first) and no more than its free
        slots. For a kept unit i and its new slot j: j takes i's current fan-in and bias and is born at
        ``task``; i gets back its fan-in and bias of the previous task and keeps its birth task. In the layer
        above (or head ``task``), consumers born at ``task`` (and the new head) read j instead of i; older
        consumers keep reading i and read nothing from j. Layers are processed from the top, so a split
        consumer's new copy is already "born at task" when the layer below moves its inputs.

        Returns (split originals, duplicates), bool ``[S, cap]`` per layer.
        """
        originals: list[torch.Tensor] = [torch.zeros_like(a) for a in self.alive]
        copies: list[torch.Tensor] = [torch.zeros_like(a) for a in self.alive]
        for layer in range(self.n_layers - 1, -1, -1):
            w, b = self.weights[layer], self.biases[layer]
            old_rows = self.alive[layer] & (self.birth[layer] < task)
            if layer == 0:
                old_cols = self.input_mask(0)
            else:
                old_cols = self.alive[layer - 1] & (self.birth[layer - 1] < task)
            drift = ((w - prev_w[layer]) * old_cols.unsqueeze(1)).square().sum(2).sqrt()  # [S, cap]
            cand = old_rows & (drift > sigma.unsqueeze(1))
            free = self.usable[layer] & ~self.alive[layer]
            n_take = torch.minimum(torch.minimum(cand.sum(1), split_max), free.sum(1))  # [S]
            score = torch.where(cand, drift, -1.0)
            order = torch.argsort(score, dim=1, descending=True, stable=True)  # rank r -> unit
            rank = torch.argsort(order, dim=1)  # unit -> rank
            chosen = cand & (rank < n_take.unsqueeze(1))
            free_rank = free.cumsum(1) - 1
            dup = free & (free_rank < n_take.unsqueeze(1))
            src = order.gather(1, free_rank.clamp(min=0, max=order.shape[1] - 1))  # slot j -> unit i
            rows = w.gather(1, src.unsqueeze(2).expand(-1, -1, w.shape[2]))
            w = torch.where(dup.unsqueeze(2), rows, w)
            w = torch.where(chosen.unsqueeze(2), prev_w[layer], w)
            b = torch.where(dup, b.gather(1, src), b)
            b = torch.where(chosen, prev_b[layer], b)
            self.weights[layer], self.biases[layer] = w, b
            self.alive[layer] |= dup
            self.birth[layer] = torch.where(dup, task, self.birth[layer])
            # the consumers: the next layer's units born at `task`, or every output of head `task`
            if layer + 1 < self.n_layers:
                nxt = self.weights[layer + 1]
                young = (self.alive[layer + 1] & (self.birth[layer + 1] == task)).unsqueeze(2)
            else:
                nxt = self.head_w[:, task - 1]
                young = torch.ones(nxt.shape[:2], dtype=torch.bool, device=nxt.device).unsqueeze(2)
            cols = nxt.gather(2, src.unsqueeze(1).expand(-1, nxt.shape[1], -1))
            nxt = torch.where(dup.unsqueeze(1) & young, cols, nxt)
            nxt = torch.where(dup.unsqueeze(1) & ~young, 0.0, nxt)
            nxt = torch.where(chosen.unsqueeze(1) & young, 0.0, nxt)
            if layer + 1 < self.n_layers:
                self.weights[layer + 1] = nxt
            else:
                self.head_w[:, task - 1] = nxt
            originals[layer], copies[layer] = chosen, dup
        return originals, copies

    # ---- bookkeeping ---------------------------------------------------------------------------------
    def params_in_use(self, task: int) -> torch.Tensor:
        """``[S]`` int64: non-zero weights and biases that the inference of tasks 1..``task`` can use
        (between live units, plus the heads 1..task)."""
        total = torch.zeros(self.streams.n, dtype=torch.int64, device=self.streams.device)
        for layer, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            live = self.alive[layer].unsqueeze(2) & self.input_mask(layer).unsqueeze(1)
            total += ((w != 0) & live).sum((1, 2)) + ((b != 0) & self.alive[layer]).sum(1)
        heads = self.head_w[:, :task] * self.alive[-1][:, None, None, :]
        return total + (heads != 0).sum((1, 2, 3)) + (self.head_b[:, :task] != 0).sum((1, 2))

    def state_dict(self) -> dict[str, list[torch.Tensor] | torch.Tensor]:
        return {
            "weights": self.weights,
            "biases": self.biases,
            "alive": self.alive,
            "birth": self.birth,
            "head_w": self.head_w,
            "head_b": self.head_b,
        }

    def load_state_dict(self, state: dict) -> None:
        for name in ("weights", "biases", "alive", "birth"):
            for dst, src in zip(getattr(self, name), state[name], strict=True):
                dst.copy_(src)
        self.head_w.copy_(state["head_w"])
        self.head_b.copy_(state["head_b"])
