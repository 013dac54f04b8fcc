"""The method layer: one place where every learning method plugs into every learner.

A *method* is a config dataclass (a field of `lop.config.MethodConfig`) plus a *hook* object built
from the configs of all runs of a batch (seed-batched: per-run hyperparameters become ``[S]`` tensors,
random draws come from `lop.rng`). Methods are registered once, with `register`; learners never name
a method. A learner builds one `MethodStack` and calls its hook points, in this order, every step:

1. ``mix_batch(t, x, y)``      data hook: replay methods mix stored examples into the batch;
2. forward pass and loss (the learner's own), plus
   ``loss_terms(t, x, y, logits)``  per-run loss terms that need the forward pass (distillation),
   added to the learner's loss before its backward pass;
3. ``edit_grads(t, grads)``    gradient edits: an analytic penalty P(θ) adds ∂P/∂θ here
                               (the grads are those of the loss *with* the loss terms);
4. the optimiser step (SGD/Adam with L2 inside, built by the stack from the method configs);
5. ``after_step(t, acts)``     after the step, with the step's hidden activations
                               (Shrink & Perturb noise, then continual backprop);

and, at the learner's period boundaries (a PPO update, the end of a task),

6. ``at_boundary(c, probe)``   with ``probe()`` returning hidden activations on probe data (ReDo);
7. ``end_task(task, ctx)``     at the end of each task of a task sequence, with a `TaskEnd` giving the
                               finished task's training data and the network's masked log-probabilities
                               (consolidation: EWC's Fisher, SI's Ω, LwF's old model, expansion).

Packing methods. Runs with different methods may share a batch (params ``pack_methods``) when their
non-numeric settings agree (`lop.config.packing_conflict`). An optional method that some runs leave
unset is built for all of them only if its config offers ``neutral()``, a config under which the hook
changes nothing those runs compute: continual backprop with replacement rate 0 (its statistics are
tracked, no unit is ever replaced). Shrink & Perturb (σ = 0 adds exact zeros) and L2 (λ = 0) are
numeric settings and mix already. A run's numbers stay those it has alone (tests/test_pack_methods.py).

Hooks run in registration order at each point. A learner declares the hook points it calls
(`HOOK_POINTS`); a method whose points a learner does not call is *unsupported* there and rejected
before training (`supported_keys`), so no setting is silently ignored. Only hooks that implement a
point are called at it (lists precomputed at construction): a method that is off costs nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from lop.config import MethodConfig
from lop.config import resets_units as config_resets_units
from lop.errors import ConfigError
from lop.nets.units import UnitLayer
from lop.optim import BatchedOptimizer, make_optimizer
from lop.rng import RunStreams

POINTS = ("mix_batch", "loss_terms", "edit_grads", "after_step", "at_boundary", "end_task")
# keys that configure the optimiser every learner builds through the stack
OPTIMIZER_KEYS = frozenset({"optimizer", "lr", "momentum", "betas", "eps", "weight_decay"})


@dataclass
class MethodContext:
    """What a hook may touch: the optimised tensors, the hidden unit layers, the optimiser, the streams,
    and (where the learner passes it) the network itself, e.g. to keep a frozen copy of it."""

    params: list[torch.Tensor]
    unit_layers: list[UnitLayer]
    optimizer: BatchedOptimizer
    streams: RunStreams
    net: Any = None


@dataclass
class TaskEnd:
    """What a task-sequence learner hands to `MethodHook.end_task` when task ``task`` (1-based) ends.

    ``batches(n, batch_size)`` yields ``(x [S, B, ...], y [S, B])`` covering ``n`` examples of the
    finished task's training data per run, in a fixed order (deterministic for a given run and task);
    ``log_probs(x, y)`` is the current network's log-probabilities ``[S, B, C]`` under the scenario's
    output mask for the examples' labels (masked classes get −inf), with the autograd graph to the
    parameters; ``params`` are the optimised tensors (aligned with the context's).
    """

    task: int
    batches: Callable[[int, int], Iterator[tuple[torch.Tensor, torch.Tensor]]]
    log_probs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    params: list[torch.Tensor]


class MethodHook:
    """Base hook: every point is a no-op. Subclasses override the points they use and list them in
    `points`; `state_dict` holds everything needed to resume."""

    points: ClassVar[frozenset[str]] = frozenset()

    def mix_batch(self, t: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def loss_terms(
        self, t: int, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor
    ) -> torch.Tensor | None:
        """A per-run loss term ``[S]`` (with its graph) added to the learner's loss, or None."""
        return None

    def edit_grads(self, t: int, grads: list[torch.Tensor]) -> None:
        """Edit the gradients (aligned with the context's params) in place."""

    def after_step(self, t: int, activations: Sequence[torch.Tensor]) -> None: ...

    def at_boundary(self, counter: int, probe: Callable[[], list[torch.Tensor]]) -> Any:
        return None

    def end_task(self, task: int, ctx: TaskEnd) -> Any:
        """Consolidate after task ``task``; may return per-run metrics ``{name: [S] tensor}``."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class MethodEntry:
    """A registered method: the `MethodConfig` field it reads and how to build its hook.

    ``active(values)`` says from the per-run field values whether the hook is needed in this batch;
    ``build(values, ctx)`` returns it. ``needs_units``: it works on hidden unit layers;
    ``needs_activations``: `after_step` needs the step's hidden activations. Whether the hook resets
    optimiser state per element (`resets_units`) is the flag of the method's config class.
    """

    key: str
    points: frozenset[str]
    build: Callable[[list[Any], MethodContext], MethodHook]
    active: Callable[[list[Any]], bool]
    needs_units: bool = False
    needs_activations: bool = False

    @property
    def resets_units(self) -> bool:
        """The hook resets optimiser state per element (Adam then cannot use the fused kernel): the
        ``resets_units`` flag of the method's config class (`lop.config.resets_units`), the same flag
        `lop params validate` reads for packs of a fused-optimiser experiment."""
        return config_resets_units(self.key)


REGISTRY: dict[str, MethodEntry] = {}


def register(entry: MethodEntry) -> MethodEntry:
    """Add a method to the layer (one line per method, in `lop.algos.methods`)."""
    if entry.key not in {f.name for f in dataclasses.fields(MethodConfig)}:
        raise ValueError(f"method key {entry.key!r} is not a MethodConfig field")
    unknown = set(entry.points) - set(POINTS)
    if unknown:
        raise ValueError(f"unknown hook points {sorted(unknown)}; points are {POINTS}")
    REGISTRY[entry.key] = entry
    return entry


def any_set(values: list[Any]) -> bool:
    """Active when some run sets the (optional) config; the stack then requires every run to set it."""
    return any(v is not None for v in values)


def registry() -> dict[str, MethodEntry]:
    import lop.algos.methods  # noqa: F401  (registers the built-in methods)

    return REGISTRY


def supported_keys(hook_points: frozenset[str] | set[str], has_units: bool = True) -> frozenset[str]:
    """The MethodConfig keys a learner calling `hook_points` supports (optimiser keys always)."""
    keys = set(OPTIMIZER_KEYS)
    for e in registry().values():
        if e.points <= set(hook_points) and (has_units or not e.needs_units):
            keys.add(e.key)
    return frozenset(keys)


class MethodStack:
    """The optimiser and the active method hooks of one batch of runs.

    ``fuse_if_possible``: build the fused Adam kernel when no active method resets optimiser state
    per element (the PPO learner's choice); otherwise the optimiser is always resettable.
    ``flat_optimizer_state``: a per-element Adam keeps all its state in ``[S, N]`` buffers (small nets
    whose step is mostly per-operation overhead; `lop.optim.BatchedAdam`).
    ``learner_points``: the hook points the calling learner implements; an active method needing
    another point is a config error (the experiment's declaration should have caught it first).
    """

    def __init__(
        self,
        methods: Sequence[MethodConfig],
        streams: RunStreams,
        *,
        params: Callable[[bool], list[torch.Tensor]] | list[torch.Tensor],
        unit_layers: Sequence[UnitLayer] = (),
        net: Any = None,
        learner_points: frozenset[str] = frozenset(POINTS),
        fuse_if_possible: bool = False,
        flat_optimizer_state: bool = False,
    ) -> None:
        if len(methods) != streams.n:
            raise ValueError(f"need one method config per run ({streams.n}), got {len(methods)}")
        entries = []
        for e in registry().values():
            values = [getattr(m, e.key) for m in methods]
            if not e.active(values):
                continue
            if any(v is None for v in values):
                template = next(v for v in values if v is not None)
                if not hasattr(template, "neutral"):
                    raise ConfigError(e.key, "all runs of one batch must use this method or none")
                if fuse_if_possible and e.resets_units:
                    raise ConfigError(
                        e.key,
                        "runs without this method would lose the fused optimiser in its batch (another "
                        "update than alone); train them in a separate job",
                    )
                values = [template.neutral() if v is None else v for v in values]
            if not e.points <= learner_points:
                raise ConfigError(e.key, "this learner does not support the method")
            if e.needs_units and not unit_layers:
                raise ConfigError(e.key, "needs hidden units, and this network has none")
            entries.append((e, values))
        self.resettable = not fuse_if_possible or any(e.resets_units for e, _ in entries)
        plist = params(self.resettable) if callable(params) else list(params)
        self.optimizer = make_optimizer(
            plist, methods, streams.device, resettable=self.resettable, flat_state=flat_optimizer_state
        )
        ctx = MethodContext(plist, list(unit_layers), self.optimizer, streams, net)
        self.hooks: dict[str, MethodHook] = {e.key: e.build(values, ctx) for e, values in entries}
        self.needs_activations = any(e.needs_activations for e, _ in entries)
        by_point = {p: [h for h in self.hooks.values() if p in h.points] for p in POINTS}
        self._mix, self._loss, self._grads = by_point["mix_batch"], by_point["loss_terms"], by_point["edit_grads"]
        self._after, self._boundary = by_point["after_step"], by_point["at_boundary"]
        self._end_task = by_point["end_task"]
        self.has_boundary = bool(self._boundary)
        self.has_loss_terms = bool(self._loss)

    def get(self, key: str) -> MethodHook | None:
        return self.hooks.get(key)

    def add_hook(self, key: str, hook: MethodHook) -> None:
        """Add a hook an experiment builds for one of its own keys (e.g. ``budgeted_cl``'s ``distill``):
        it is called at its points after the registered hooks and its state is saved with theirs."""
        if key in self.hooks:
            raise ValueError(f"a hook for {key!r} is already in the stack")
        self.hooks[key] = hook
        for point, hooks in (
            ("mix_batch", self._mix), ("loss_terms", self._loss), ("edit_grads", self._grads),
            ("after_step", self._after), ("at_boundary", self._boundary), ("end_task", self._end_task),
        ):
            if point in hook.points:
                hooks.append(hook)
        self.has_boundary = bool(self._boundary)
        self.has_loss_terms = bool(self._loss)

    def mix_batch(self, t: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for h in self._mix:
            x, y = h.mix_batch(t, x, y)
        return x, y

    def loss_terms(
        self, t: int, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor
    ) -> torch.Tensor | None:
        """Point 2: the sum of the hooks' per-run loss terms ``[S]``, or None when no hook adds one."""
        total = None
        for h in self._loss:
            term = h.loss_terms(t, x, y, logits)
            if term is not None:
                total = term if total is None else total + term
        return total

    def step(self, t: int, grads: list[torch.Tensor], activations: Sequence[torch.Tensor] = ()) -> None:
        """Points 3–5: gradient edits, the optimiser step, then the after-step hooks."""
        for h in self._grads:
            h.edit_grads(t, grads)
        self.optimizer.step(grads)
        for h in self._after:
            h.after_step(t, activations)

    def at_boundary(self, counter: int, probe: Callable[[], list[torch.Tensor]]) -> dict[str, Any]:
        """Point 6; returns each boundary hook's result by method key."""
        return {k: h.at_boundary(counter, probe) for k, h in self.hooks.items() if h in self._boundary}

    def end_task(self, task: int, ctx: TaskEnd) -> dict[str, Any]:
        """Point 7; returns each end-of-task hook's result by method key."""
        return {k: h.end_task(task, ctx) for k, h in self.hooks.items() if h in self._end_task}

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            **{k: h.state_dict() for k, h in self.hooks.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        for k, h in self.hooks.items():
            h.load_state_dict(state[k])
