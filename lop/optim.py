"""Seed-batched optimisers with per-run hyperparameters.

Every parameter has a leading run axis S; the step size, momentum, betas and weight decay are
``[S]`` tensors, so runs with different settings share one update. Weight decay is the coupled L2
penalty of `torch.optim.SGD`/`Adam` (``g ← g + λ·w``), which is what the paper's L2 and the
"shrink" of Shrink & Perturb use. Adam keeps a per-element step count so that continual
backpropagation can reset the moments *and* the bias correction of replaced weights, or, where no
state is ever reset, one count per run and PyTorch's fused kernel.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from lop.config import MethodConfig


def per_run(values: Sequence[float], device: torch.device | str, dtype=torch.float32) -> torch.Tensor:
    """An ``[S]`` tensor of per-run hyperparameter values."""
    return torch.tensor([float(v) for v in values], dtype=dtype, device=device)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


# Per-element Adam keeps its state of all parameters in one ``[S, N]`` buffer up to this many elements
# (runs × weights), so one step is a dozen tensor ops instead of a dozen per parameter (see BatchedAdam).
FLAT_STATE_MAX_ELEMENTS = 1 << 22


class BatchedOptimizer:
    """Base class: holds parameters, per-run hyperparameters and per-parameter state tensors."""

    state_names: tuple[str, ...] = ()

    def __init__(
        self, params: Sequence[torch.Tensor], weight_decay: torch.Tensor, allocate_state: bool = True
    ) -> None:
        """`allocate_state=False`: the subclass provides ``self.state`` itself (flat buffers)."""
        self.params = list(params)
        self.weight_decay = weight_decay
        self.use_wd = bool((weight_decay > 0).any())
        self.state: list[dict[str, torch.Tensor]] = (
            [
                {name: torch.zeros_like(p, memory_format=torch.contiguous_format) for name in self.state_names}
                for p in self.params
            ]
            if allocate_state
            else []
        )
        self._index = {id(p): i for i, p in enumerate(self.params)}

    def _hp(self, i: int | None, name: str) -> torch.Tensor:
        """The ``[S]`` hyperparameter tensor `name` viewed to broadcast over parameter `i`, or with
        ``i=None`` as an ``[S, 1]`` column for ``[S, N]`` buffers (built once: a view per parameter and
        step is a measurable share of a small network's step)."""
        views = self.__dict__.setdefault("_hp_views", {})
        v = views.get((i, name))
        if v is None:
            hp = getattr(self, name)
            v = views[i, name] = hp.view(-1, 1) if i is None else _bcast(hp, self.params[i])
        return v

    def _grad(
        self, i: int, p: torch.Tensor, g: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """g + λ·w (into a persistent buffer, or `out`) with weight decay, else g itself."""
        if self.use_wd:
            buf = self._buffer(i, "decayed_grad") if out is None else out
            return torch.addcmul(g, p, self._hp(i, "weight_decay"), out=buf)
        return g

    def _buffer(self, i: int, name: str) -> torch.Tensor:
        """A persistent buffer shaped and laid out like parameter `i`, for a per-step temporary: a fresh
        full-size tensor each step (above glibc's mmap threshold for large layers) is page-faulted in
        every time, which costs more system time than the arithmetic. Same numbers either way."""
        bufs = self.__dict__.setdefault("_buffers", {})
        buf = bufs.get((i, name))
        p = self.params[i]
        if buf is None or buf.shape != p.shape or buf.stride() != p.stride():
            buf = bufs[i, name] = torch.empty_like(p)
        return buf

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor] | None = None) -> None:
        """Apply one update; `grads` defaults to each parameter's ``.grad``."""
        if grads is None:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        for i, (p, g) in enumerate(zip(self.params, grads)):
            self._update(i, p, self._grad(i, p, g))

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
            buf.mul_(self._hp(i, "momentum")).add_(g)
            g = buf
        p.addcmul_(g, self._hp(i, "neg_lr"))


_FLT_MIN = float(torch.finfo(torch.float32).tiny)


def _flat_layout_fits(params: list[torch.Tensor]) -> bool:
    """Whether `params` can share ``[S, N]`` state buffers: several contiguous float32 tensors of their
    own (not views), one run axis, at most `FLAT_STATE_MAX_ELEMENTS` elements in all."""
    if len(params) < 2:
        return False
    first = params[0]
    return (
        all(
            p._base is None and p.is_contiguous() and p.dim() >= 1 and p.shape[0] == first.shape[0]
            and p.dtype == torch.float32 and p.device == first.device
            for p in params
        )
        and sum(p.numel() for p in params) <= FLAT_STATE_MAX_ELEMENTS
    )  # fmt: skip


class BatchedAdam(BatchedOptimizer):
    """Adam (Kingma & Ba 2015), coupled L2 as in `torch.optim.Adam`, in one of two modes.

    * ``per_element_steps=True`` (default): per-element bias corrections ``corr1 = 1 − β1^t`` and
      ``corr2 = 1 − β2^t`` kept as running products (c ← β·c + (1 − β)), so resetting an element's
      state to 0 (`state_views`, as continual backprop and ReDo do) restarts it at t = 0. With
      ``flat_state=True`` (the online MLP learner's choice), where every parameter is its own
      contiguous tensor and all of them hold at most `FLAT_STATE_MAX_ELEMENTS` elements, the state of all parameters lives in one ``[S, N]`` buffer per
      name (``state[i][name]`` are views of it): the gradients are gathered into one ``[S, N]``
      buffer and the update is one pass of a dozen element-wise ops, then one ``addcmul_`` per
      parameter — the same operations on the same numbers, element by element, so the same bits as
      one pass per parameter, in a third of the tensor ops (which dominate a small network's step);
    * ``per_element_steps=False``: one step count per run, and each run's rows go through PyTorch's
      fused CPU/GPU Adam kernel (one pass over memory instead of a dozen tensor ops; ≈ 25× faster on a
      CPU for PPO's 187k parameters per run). Runs with equal hyperparameters share a kernel call, which
      treats every row on its own, so a run's numbers still do not depend on its batch. The state
      cannot be reset per element here (`state_views` refuses).
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        lr: torch.Tensor,
        beta1: torch.Tensor,
        beta2: torch.Tensor,
        eps: torch.Tensor,
        weight_decay: torch.Tensor,
        per_element_steps: bool = True,
        flat_state: bool = False,
    ) -> None:
        self.per_element_steps = per_element_steps
        self.state_names = (
            ("exp_avg", "exp_avg_sq", "corr1", "corr2") if per_element_steps else ("exp_avg", "exp_avg_sq")
        )
        self.flat = per_element_steps and flat_state and _flat_layout_fits(list(params))
        super().__init__(params, weight_decay, allocate_state=not self.flat)
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self._one_minus_beta1, self._one_minus_beta2, self._neg_lr = 1.0 - beta1, 1.0 - beta2, -lr
        # sqrt(v / c2) is only ever added to ε: below FLT_MIN its exact value (< 1.1e-19) cannot move
        # ε ≥ 1e-11 by half an ulp, so clamping there first leaves every bit of the update unchanged and
        # spares torch's float32 sqrt its slow path for zeros and subnormals (10-40x slower per element)
        self._clamp_sqrt_arg = bool(eps.numel()) and float(eps.min()) >= 1e-11
        if self.flat:
            self._init_flat()
        if not per_element_steps:
            n = lr.shape[0]
            self.steps = torch.zeros(n, dtype=torch.float32, device=lr.device)  # per-run step count t
            settings = zip(lr.tolist(), beta1.tolist(), beta2.tolist(), eps.tolist(), weight_decay.tolist())
            groups: dict[tuple[float, ...], list[int]] = {}
            for run, key in enumerate(settings):
                groups.setdefault(key, []).append(run)
            self._groups = list(groups.items())
            # per group: rows of the parameters, moments and step counts (all updated in place, so
            # these views stay valid); only the gradients' rows change from step to step
            self._fixed_rows = []
            for _, runs in self._groups:
                step_views = [self.steps[r : r + 1].view(()) for r in runs]
                self._fixed_rows.append(
                    (
                        self._rows(self.params, runs),
                        self._rows([st["exp_avg"] for st in self.state], runs),
                        self._rows([st["exp_avg_sq"] for st in self.state], runs),
                        [v for _ in self.params for v in step_views],
                    )
                )

    def _init_flat(self) -> None:
        """Re-home the state (and the step's temporaries) in ``[S, N]`` buffers, parameter i's block
        at columns ``[off_i, off_i + n_i)`` viewed in the parameter's shape."""
        s = self.params[0].shape[0]
        sizes = [p[0].numel() for p in self.params]
        self._offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        n = sum(sizes)
        like = self.params[0]

        def block(buf: torch.Tensor, i: int) -> torch.Tensor:
            return buf[:, self._offsets[i] : self._offsets[i] + sizes[i]].view(self.params[i].shape)

        self._flat_state = {name: like.new_zeros(s, n) for name in self.state_names}
        self.state = [
            {name: block(buf, i) for name, buf in self._flat_state.items()} for i in range(len(sizes))
        ]
        self._flat_grad = like.new_empty(s, n)
        self._flat_tmp = like.new_empty(s, n)
        self._grad_blocks = [block(self._flat_grad, i) for i in range(len(sizes))]
        self._tmp_blocks = [block(self._flat_tmp, i) for i in range(len(sizes))]
        self._flat_sizes = sizes

    def step(self, grads: Sequence[torch.Tensor] | None = None) -> None:
        if self.per_element_steps and self.flat:
            if grads is None:
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
            self._flat_step(grads)
            return
        if self.per_element_steps:
            super().step(grads)
            return
        if grads is None:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        self._fused_step(grads)

    def _rows(self, tensors: Sequence[torch.Tensor], runs: Sequence[int]) -> list[torch.Tensor]:
        """Each tensor's rows (one contiguous ``[numel]`` view per run) for the runs `runs`."""
        return [t.reshape(t.shape[0], -1)[r] for t in tensors for r in runs]

    @torch.no_grad()
    def _fused_step(self, grads: Sequence[torch.Tensor]) -> None:
        self.steps += 1.0
        grads = [g.contiguous() for g in grads]
        for ((lr, b1, b2, eps, wd), runs), (p_rows, m_rows, v_rows, steps) in zip(
            self._groups, self._fixed_rows
        ):
            torch._fused_adam_(
                p_rows, self._rows(grads, runs), m_rows, v_rows, [], steps,
                lr=lr, beta1=b1, beta2=b2, weight_decay=wd, eps=eps, amsgrad=False, maximize=False,
            )  # fmt: skip

    def _update(self, i: int, p: torch.Tensor, g: torch.Tensor) -> None:
        """m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²;  c_k ← β_k c_k + (1−β_k);
        p ← p − α m / (c1 (sqrt(v / c2) + ε))   (= α (m / c1) / (sqrt(v / c2) + ε); two divisions and one
        square root per element, the expensive operations on a CPU)."""
        tmp = self._buffer(i, "adam_tmp")  # g², then the denominator, then the step (no fresh tensors)
        self._moments(self.state[i], g, tmp, functools.partial(self._hp, i))
        p.addcmul_(tmp, self._hp(i, "_neg_lr"))

    def _moments(self, st: dict[str, torch.Tensor], g: torch.Tensor, tmp: torch.Tensor, hp) -> None:
        """Update the moments and corrections in `st` with gradient `g`; leave the step m / denom in
        `tmp` (g², then the denominator, then the step: no fresh tensors)."""
        w1, w2 = hp("_one_minus_beta1"), hp("_one_minus_beta2")
        st["exp_avg"].lerp_(g, w1)
        st["exp_avg_sq"].lerp_(torch.square(g, out=tmp), w2)
        st["corr1"].mul_(hp("beta1")).add_(w1)
        st["corr2"].mul_(hp("beta2")).add_(w2)
        torch.div(st["exp_avg_sq"], st["corr2"], out=tmp)
        if self._clamp_sqrt_arg:
            tmp.clamp_min_(_FLT_MIN)
        tmp.sqrt_().add_(hp("eps")).mul_(st["corr1"])
        torch.div(st["exp_avg"], tmp, out=tmp)

    @torch.no_grad()
    def _flat_step(self, grads: Sequence[torch.Tensor]) -> None:
        """Per-element Adam over the ``[S, N]`` buffers (see the class docstring)."""
        for i, (p, g) in enumerate(zip(self.params, grads)):
            dst = self._grad_blocks[i]
            if self.use_wd:
                self._grad(i, p, g, out=dst)
            else:
                dst.copy_(g)
        self._moments(self._flat_state, self._flat_grad, self._flat_tmp, functools.partial(self._hp, None))
        for i, p in enumerate(self.params):
            p.addcmul_(self._tmp_blocks[i], self._hp(i, "_neg_lr"))

    def state_views(self, view: torch.Tensor) -> list[torch.Tensor]:
        if not self.per_element_steps:
            raise RuntimeError(
                "this Adam keeps one step count per run (per_element_steps=False) and cannot reset single "
                "elements; build it with per_element_steps=True for continual backprop/ReDo/head resets"
            )
        if not self.flat:
            return super().state_views(view)
        base = view if view._base is None else view._base
        i = self._index.get(id(base))
        if i is None:
            return []
        # the parameter is contiguous with n_i elements per run; its state block has row stride N:
        # an element offset k (relative to the parameter) lies at (k // n_i)·N + k mod n_i
        n_i, n = self._flat_sizes[i], self._flat_grad.shape[1]

        def move(k: int) -> int:
            return (k // n_i) * n + k % n_i

        rel = view.storage_offset() - base.storage_offset()
        strides = tuple(move(st) if size > 1 else st for st, size in zip(view.stride(), view.size()))
        out = []
        for name in self.state_names:
            flat = self._flat_state[name]
            out.append(
                flat.as_strided(view.size(), strides, flat.storage_offset() + self._offsets[i] + move(rel))
            )
        return out

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        out = super().state_dict()
        if not self.per_element_steps:
            out["steps"] = [self.steps]
        return out

    def load_state_dict(self, state: dict[str, list[torch.Tensor]]) -> None:
        super().load_state_dict(state)
        if not self.per_element_steps:
            self.steps.copy_(state["steps"][0])


def make_optimizer(
    params: Sequence[torch.Tensor],
    methods: Sequence[MethodConfig],
    device: torch.device | str,
    resettable: bool = True,
    flat_state: bool = False,
) -> BatchedOptimizer:
    """The batched optimiser of a group of runs (all must use the same optimiser type).

    ``resettable=False`` promises that no optimiser state will be reset per element (no CBP, ReDo or
    head reset), which lets Adam use the fused per-run kernel (`BatchedAdam`); ``flat_state=True`` lets
    the per-element Adam keep its state in ``[S, N]`` buffers (`BatchedAdam`).
    """
    kinds = {m.optimizer for m in methods}
    if len(kinds) != 1:
        raise ValueError(f"runs of one batch must share an optimiser, got {sorted(kinds)}")
    lr = per_run([m.lr for m in methods], device)
    wd = per_run([m.weight_decay for m in methods], device)
    if kinds == {"sgd"}:
        return BatchedSGD(params, lr, per_run([m.momentum for m in methods], device), wd)
    # the fused kernel takes Python floats: keep them exact (float64) instead of rounding to float32
    exact = torch.float32 if resettable else torch.float64
    return BatchedAdam(
        params,
        per_run([m.lr for m in methods], device, exact),
        per_run([m.betas[0] for m in methods], device, exact),
        per_run([m.betas[1] for m in methods], device, exact),
        per_run([m.eps for m in methods], device, exact),
        per_run([m.weight_decay for m in methods], device, exact),
        per_element_steps=resettable,
        flat_state=flat_state,
    )
