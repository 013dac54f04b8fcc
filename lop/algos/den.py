"""Dynamically Expandable Networks (Yoon, Yang, Lee & Hwang, ICLR 2018; docs/protocols/den.md), seed-batched.

`DENLearner` trains a `lop.algos.den_net.DENNetwork` (multi-head MLP, preallocated capacity, masks of live
units, birth tasks) one task at a time. With D_t the data of task t, the data loss is the scenario-masked
cross-entropy of head t, and every phase is a fresh optimiser (the method config's Adam or SGD) whose
gradient g is masked to the phase's trainable entries M (so the rest stays bit-identical):

    g = ∇ CE + wd·W + λ·(W − W^{t−1})·[old weight],   θ ← θ − lr_k · step(g ⊙ M),

with lr_k = lr·decay^⌊k / steps_per_epoch⌋, then the proximal steps on the trained weights:
L1 |w| ← max(|w| − l1, 0) and, in the expansion phase, group lasso on each new unit's fan-in
w_g ← w_g · max(0, 1 − group_lasso/‖w_g‖₂). Weight decay (``weight_decay``) acts on weight matrices,
the drift term on the weights and biases between units born before t.

Task 1: all weights, L1 (a). Task t > 1:

1. **sparse head** (``head_steps``): only head t is trained, with L1, on the frozen network;
2. **selection**: breadth-first search from head t over non-zero weights (`DENNetwork.select_subnetwork`);
3. **selective retraining** (``phase_steps``): only the selected units' fan-in from selected units
   (pixels in layer 0), their biases and head t, with the drift term (b);
4. **expansion** (c): runs whose mean data loss over the last 10 steps of 3 exceeds ``loss_threshold`` get
   ``expand_units`` units per layer; only the new units' fan-in and fan-out and head t are trained
   (``phase_steps``) with L1 and group lasso, and new units whose fan-in is all zero are removed;
5. **split** (d): old units whose fan-in drifted by more than σ are duplicated
   (`DENNetwork.split_units`: the original gets its previous weights and keeps its birth task, the copy
   keeps the update and is born at t); runs that split retrain the units born at t and head t
   (``head_steps``);
6. inference of task s uses units born at or before s, and head s (e).

Where the public code differs (docs/protocols/den.md, "Three bugs not reproduced"): its sparse-head
stage stops after one step, its selection follows output 0 of the head only, and it splits only in
tasks where it expanded. Here the head trains for ``head_steps``, the search starts from every output
of the task, and the split check runs after every task t > 1.

Per-run hyperparameters (l1, group lasso, λ, σ, τ, k, split_max, lr, capacity) are ``[S]`` tensors; the
decisions (expand, split) are per-run masks, so a phase that only some runs need is a no-op for the
others and a run's result does not depend on its batch. The step counts and the resolved capacity (it
sets the shapes of the random draws) must agree across a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from lop.algos.den_net import DENNetwork
from lop.config import DENConfig, MethodConfig
from lop.errors import ConfigError
from lop.optim import per_run
from lop.problems.task_sequence import masked_log_probs
from lop.rng import RunStreams

__all__ = ["DENLearner", "den_capacity"]

#: ``sample(phase, step) -> (x [S, B, D], y [S, B])``: the task's training batches
Sampler = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]

PHASES = {"train": 0, "head": 1, "retrain": 2, "expand": 3, "split": 4}
TAIL = 10  # steps whose mean data loss is compared with the loss threshold


def den_capacity(cfg: DENConfig, widths: Sequence[int], n_tasks: int) -> int:
    """Slots per hidden layer: ``cfg.capacity``, or the widest layer plus the most DEN can add over
    ``n_tasks`` tasks, (n_tasks − 1)·(expand_units + split_max). An explicit capacity below the widest
    initial layer is a `ConfigError` at ``den.capacity``."""
    widest = max(widths)
    if cfg.capacity is None:
        return widest + (n_tasks - 1) * (cfg.expand_units + cfg.split_max)
    if cfg.capacity < widest:
        raise ConfigError(
            "den.capacity", f"{cfg.capacity} is smaller than the initial width {widest}; raise it or use null"
        )
    return cfg.capacity


class DENLearner:
    """DEN on a batch of runs: `learn_task` runs the phases of one task, `logits` is timestamped inference."""

    def __init__(
        self,
        in_dim: int,
        widths: Sequence[int],
        n_out: int,
        n_tasks: int,
        methods: Sequence[MethodConfig],
        streams: RunStreams,
        steps_per_task: int,
        steps_per_epoch: int,
        label_mask: torch.Tensor | None = None,
    ) -> None:
        cfgs = [m.den for m in methods]
        if any(c is None for c in cfgs):
            raise ConfigError("den", "all runs of one batch must use DEN or none")
        dens: list[DENConfig] = cfgs  # type: ignore[assignment]
        for key in ("phase_steps", "head_steps"):
            if len({getattr(c, key) for c in dens}) > 1:
                raise ConfigError(f"den.{key}", "must be the same for every run of one batch")
        if len({m.optimizer for m in methods}) > 1:
            raise ConfigError("optimizer", "must be the same for every run of one batch")
        dev = streams.device
        self.streams = streams
        self.label_mask = label_mask
        self.phase_steps = dens[0].phase_steps or steps_per_task
        self.head_steps = dens[0].head_steps or max(1, self.phase_steps // 10)
        self.steps_per_epoch = max(1, steps_per_epoch)
        caps = {den_capacity(c, widths, n_tasks) for c in dens}
        if len(caps) > 1:
            # the shapes of the random draws follow the capacity: runs of one batch must share it
            raise ConfigError(
                "den.capacity", f"runs of one batch resolve to different capacities {sorted(caps)}"
            )
        capacity = torch.tensor([caps.pop()] * streams.n, dtype=torch.int64, device=dev)
        self.net = DENNetwork(in_dim, widths, capacity, n_tasks, n_out, streams)
        self.adam = methods[0].optimizer == "adam"
        self.lr = per_run([m.lr for m in methods], dev)
        self.beta1 = per_run([m.betas[0] for m in methods], dev)
        self.beta2 = per_run([m.betas[1] for m in methods], dev)
        self.eps = per_run([m.eps for m in methods], dev)
        self.momentum = per_run([m.momentum for m in methods], dev)
        self.wd = per_run([m.weight_decay for m in methods], dev)
        self.l1 = per_run([c.l1 for c in dens], dev)
        self.group = per_run([c.group_lasso for c in dens], dev)
        self.drift = per_run([c.drift_l2 for c in dens], dev)
        self.sigma = per_run([c.split_threshold for c in dens], dev)
        self.threshold = per_run([c.loss_threshold for c in dens], dev)
        self.decay = per_run([c.lr_decay for c in dens], dev)
        self.k = torch.tensor([c.expand_units for c in dens], dtype=torch.int64, device=dev)
        self.split_max = torch.tensor([c.split_max for c in dens], dtype=torch.int64, device=dev)
        self.bad = torch.zeros(streams.n, dtype=torch.bool, device=dev)

    # ---- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def log_probs(self, task: int, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Scenario-masked log-probabilities ``[S, B, C]`` of task ``task``'s network (timestamped)."""
        return masked_log_probs(self.net.forward(x, task), y, self.label_mask)

    # ---- one task --------------------------------------------------------------------------------
    def learn_task(self, task: int, sample: Sampler, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """All phases of task ``task`` (1-based). ``outputs`` bool ``[S, C]``: the task's classes (its head's
        outputs). Returns per-run diagnostics ``[S]``: ``expanded``, ``split_units``, ``selected_units``
        and ``train_loss`` (mean data loss of the last steps of the last main phase)."""
        net = self.net
        s = self.streams.n
        dev = self.streams.device
        yes = torch.ones(s, dtype=torch.bool, device=dev)
        net.init_head(task, outputs)
        if task == 1:
            masks = self._masks(
                net.alive, [net.input_mask(0), *net.alive[:-1]], net.alive[-1], task, outputs, yes
            )
            loss = self._train(task, "train", self.phase_steps, masks, sample)
            zero = torch.zeros(s, dtype=torch.int64, device=dev)
            return {"expanded": zero, "split_units": zero, "selected_units": zero, "train_loss": loss}
        prev_w = [w.clone() for w in net.weights]
        prev_b = [b.clone() for b in net.biases]
        old = [a.clone() for a in net.alive]
        self._old = old
        self._prev = (prev_w, prev_b)
        none = [torch.zeros_like(a) for a in net.alive]
        # 1. the new head alone, sparse
        masks = self._masks(none, [net.input_mask(0), *none[:-1]], net.alive[-1], task, outputs, yes)
        self._train(task, "head", self.head_steps, masks, sample)
        # 2-3. breadth-first selection and selective retraining with the drift term
        sel = net.select_subnetwork(task, outputs)
        masks = self._masks(sel, [net.input_mask(0), *sel[:-1]], sel[-1], task, outputs, yes)
        loss = self._train(task, "retrain", self.phase_steps, masks, sample)
        # 4. expansion where the loss stayed above the threshold
        expand = loss > self.threshold
        new = net.add_units(task, torch.where(expand, self.k, 0), outputs)
        w_masks = []
        for layer in range(net.n_layers):
            ins = net.input_mask(layer)
            m = new[layer].unsqueeze(2) & ins.unsqueeze(1)
            if layer > 0:
                m = m | (net.alive[layer].unsqueeze(2) & new[layer - 1].unsqueeze(1))
            w_masks.append(m)
        masks = self._raw_masks(w_masks, new, net.alive[-1], task, outputs, expand)
        if bool(expand.any()):
            loss = torch.where(
                expand, self._train(task, "expand", self.phase_steps, masks, sample, groups=new), loss
            )
        net.prune_empty(new)
        # 5. split units that drifted, then retrain what was born in this task
        _, copies = net.split_units(task, prev_w, prev_b, self.sigma, self.split_max)
        n_split = sum(c.sum(1) for c in copies)
        did_split = n_split > 0
        if bool(did_split.any()):
            young = [a & (b == task) for a, b in zip(net.alive, net.birth, strict=True)]
            w_masks = [y.unsqueeze(2) & net.input_mask(layer).unsqueeze(1) for layer, y in enumerate(young)]
            masks = self._raw_masks(w_masks, young, net.alive[-1], task, outputs, did_split)
            self._train(task, "split", self.head_steps, masks, sample)
        selected = sum(x.sum(1) for x in sel)
        return {
            "expanded": expand.to(torch.int64),
            "split_units": n_split,
            "selected_units": selected,
            "train_loss": loss,
        }

    # ---- masks ---------------------------------------------------------------------------------
    def _masks(
        self,
        rows: Sequence[torch.Tensor],
        cols: Sequence[torch.Tensor],
        head_cols: torch.Tensor,
        task: int,
        outputs: torch.Tensor,
        runs: torch.Tensor,
    ) -> list[torch.Tensor]:
        """Trainable masks: fan-in rows ``rows[l]`` × inputs ``cols[l]``, biases of ``rows[l]``, head
        ``task`` on its outputs × ``head_cols``; only for ``runs`` ``[S]``."""
        w_masks = [r.unsqueeze(2) & c.unsqueeze(1) for r, c in zip(rows, cols, strict=True)]
        return self._raw_masks(w_masks, rows, head_cols, task, outputs, runs)

    def _raw_masks(
        self,
        w_masks: Sequence[torch.Tensor],
        b_masks: Sequence[torch.Tensor],
        head_cols: torch.Tensor,
        task: int,
        outputs: torch.Tensor,
        runs: torch.Tensor,
    ) -> list[torch.Tensor]:
        net = self.net
        on = runs.view(-1, 1, 1)
        hw = torch.zeros_like(net.head_w, dtype=torch.bool)
        hw[:, task - 1] = outputs.unsqueeze(2) & head_cols.unsqueeze(1)
        hb = torch.zeros_like(net.head_b, dtype=torch.bool)
        hb[:, task - 1] = outputs
        out = [m & on for m in w_masks] + [m & runs.view(-1, 1) for m in b_masks]
        out += [hw & runs.view(-1, 1, 1, 1), hb & on]
        return [m.to(torch.float32) for m in out]

    # ---- one phase -------------------------------------------------------------------------------
    def _train(
        self,
        task: int,
        phase: str,
        steps: int,
        masks: list[torch.Tensor],
        sample: Sampler,
        groups: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``steps`` masked optimiser steps of one phase (fresh optimiser state); returns the mean data loss
        ``[S]`` over its last `TAIL` steps."""
        net = self.net
        n_layers = net.n_layers
        params = net.params()
        for p in params:
            p.requires_grad_(True)
        is_weight = [True] * n_layers + [False] * n_layers + [True, False]
        drift_masks = self._drift_masks(task)
        state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
        c1 = torch.zeros_like(self.lr)
        c2 = torch.zeros_like(self.lr)
        tail = torch.zeros_like(self.lr)
        n_tail = min(TAIL, steps)
        phase_id = PHASES[phase]
        for k in range(steps):
            x, y = sample(phase_id, k)
            logp = masked_log_probs(net.forward(x, task), y, self.label_mask)
            loss = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(1)
            grads = torch.autograd.grad(loss.sum(), params)
            lr = self.lr * self.decay.pow(k // self.steps_per_epoch)
            if self.adam:
                c1 = self.beta1 * c1 + (1 - self.beta1)
                c2 = self.beta2 * c2 + (1 - self.beta2)
            with torch.no_grad():
                for i, (p, g) in enumerate(zip(params, grads, strict=True)):
                    g = self._full_grad(i, p, g, is_weight[i], drift_masks)
                    g = g * masks[i]
                    m, v = state[i]
                    if self.adam:
                        m.mul_(_b(self.beta1, p)).add_(g * _b(1 - self.beta1, p))
                        v.mul_(_b(self.beta2, p)).addcmul_(g, g * _b(1 - self.beta2, p))
                        upd = (m / _b(c1, p)) / ((v / _b(c2, p)).sqrt() + _b(self.eps, p))
                    else:
                        m.mul_(_b(self.momentum, p)).add_(g)
                        upd = m
                    p.sub_(upd * masks[i] * _b(lr, p))
                    if is_weight[i]:
                        shrunk = p.abs().sub(_b(self.l1, p)).clamp(min=0.0).copysign(p)
                        p.copy_(torch.where(masks[i] > 0, shrunk, p))
                if groups is not None:
                    self._group_prox(params, groups)
            if k >= steps - n_tail:
                tail += loss.detach()
            self.bad |= ~torch.isfinite(loss.detach())
        for p in params:
            p.requires_grad_(False)
        return tail / n_tail

    def _drift_masks(self, task: int) -> list[torch.Tensor | None]:
        """Per parameter, where the drift term applies (between units alive before ``task``), or None."""
        net = self.net
        if task == 1:
            return [None] * (2 * net.n_layers + 2)
        old = self._old
        out: list[torch.Tensor | None] = []
        for layer in range(net.n_layers):
            ins = net.input_mask(0) if layer == 0 else old[layer - 1]
            out.append((old[layer].unsqueeze(2) & ins.unsqueeze(1)).to(torch.float32))
        out += [o.to(torch.float32) for o in old]
        return [*out, None, None]

    def _full_grad(
        self,
        i: int,
        p: torch.Tensor,
        g: torch.Tensor,
        is_weight: bool,
        drift_masks: list[torch.Tensor | None],
    ) -> torch.Tensor:
        """∇CE + wd·W (weights) + λ·(θ − θ^{t−1}) on the old entries."""
        if is_weight:
            g = g + _b(self.wd, p) * p
        dm = drift_masks[i]
        if dm is not None:
            prev_w, prev_b = self._prev
            n = self.net.n_layers
            prev = prev_w[i] if i < n else prev_b[i - n]
            g = g + _b(self.drift, p) * (p - prev) * dm
        return g

    def _group_prox(self, params: list[torch.Tensor], groups: Sequence[torch.Tensor]) -> None:
        """Group-lasso proximal step on the fan-in rows of the units ``groups[l]``."""
        for layer, grp in enumerate(groups):
            w = params[layer]
            norm = w.norm(dim=2)  # [S, cap]
            scale = (1 - _b(self.group, norm) / norm.clamp(min=1e-12)).clamp(min=0.0)
            w.mul_(torch.where(grp, scale, 1.0).unsqueeze(2))

    # ---- resume ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.bad.copy_(state["bad"])


def _b(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """An ``[S]`` tensor viewed to broadcast against ``like`` ``[S, ...]``."""
    return v.view(-1, *([1] * (like.dim() - 1)))
