"""The contract every experiment implements (see docs/architecture.md)."""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, ClassVar

import torch

from lop.config import packing_conflict, static_fields
from lop.errors import ConfigError

# RunSpec, set_method_keys and check_supported are torch-free (params validation uses them): they live in
# lop.experiments.schemas and are re-exported here.
from lop.experiments.schemas import RunSpec, check_supported, set_method_keys

__all__ = [
    "ExperimentSpec",
    "MetricBlock",
    "RunSpec",
    "Trainer",
    "check_packable",
    "check_supported",
    "experiments",
    "flatten_tensors",
    "get_experiment",
    "set_method_keys",
]


@dataclass
class MetricBlock:
    """Values of one metric for all runs of a batch at K x-positions: steps ``[K]``, values ``[S, K]``."""

    name: str
    steps: torch.Tensor
    values: torch.Tensor


class Trainer(ABC):
    """Trains a group of runs unit by unit; all state lives in tensors returned by `state_dict`.

    The base class owns the bookkeeping every experiment needs: divergence tracking (`init_divergence`,
    `mark_diverged`, `diverged_at`), save/restore of the state named in `state_attrs` (dotted attribute
    paths of tensors, dicts of tensors, or objects with ``state_dict``/``load_state_dict``, restored in
    order; ``diverged`` is always included) and `metric`, one value per run at one x-position.
    """

    n_units: int
    unit_name: str = "unit"
    stand_in: bool = False  # True when the data are a stand-in (copied into every run.json)
    state_attrs: ClassVar[tuple[str, ...]] = ()
    diverged: torch.Tensor

    @abstractmethod
    def train_unit(self, unit: int) -> list[MetricBlock]:
        """Advance by one unit (a bin of steps, a task, an epoch, an update) and return its metrics."""

    # ---- divergence -----------------------------------------------------------------------------
    def init_divergence(self, n_runs: int, device: torch.device) -> None:
        """Every run starts as not diverged (−1)."""
        self.diverged = torch.full((n_runs,), -1, dtype=torch.int64, device=device)

    def mark_diverged(self, bad: torch.Tensor, at: int | torch.Tensor) -> None:
        """Record step `at` (an int or ``[S]``) for the runs first found non-finite now (``bad [S]``)."""
        self.diverged = torch.where((self.diverged < 0) & bad, at, self.diverged)

    def diverged_at(self) -> torch.Tensor:
        """``[S]`` int64: first step at which each run's loss was non-finite, −1 if never."""
        return self.diverged

    # ---- resume state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: ``diverged`` and each of `state_attrs`."""
        out: dict[str, Any] = {"diverged": self.diverged}
        for name in self.state_attrs:
            value = attrgetter(name)(self)
            out[name] = value if isinstance(value, torch.Tensor | dict) else value.state_dict()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.state_attrs:
            value = attrgetter(name)(self)
            if isinstance(value, torch.Tensor):
                value.copy_(state[name])
            elif isinstance(value, dict):
                for k, v in state[name].items():
                    value[k].copy_(v)
            else:
                value.load_state_dict(state[name])
        self.diverged.copy_(state["diverged"])

    # ---- metrics --------------------------------------------------------------------------------
    @staticmethod
    def metric(name: str, step: int, values: torch.Tensor) -> MetricBlock:
        """A metric with one value per run (``values [S]``) at x-position `step`."""
        return MetricBlock(name, torch.tensor([step], dtype=torch.int64), values.reshape(-1, 1))

    def model_state(self) -> dict[str, torch.Tensor]:
        """The networks' tensors (leading run axis S) for model snapshots at unit boundaries: by default
        the `state_dict()` of the trainer's `net` (or `agent`), flattened to dotted names."""
        model = getattr(self, "net", None) or getattr(self, "agent", None)
        if model is None:
            return {}
        return flatten_tensors(model.state_dict())


def flatten_tensors(tree: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Nested dicts/lists of tensors -> {"a.b.0": tensor}."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = (
        tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list | tuple) else []
    )
    out: dict[str, torch.Tensor] = {}
    for key, value in items:
        out.update(flatten_tensors(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


@dataclass(frozen=True)
class ExperimentSpec:
    """An experiment: its problem dataclass, a builder of trainers for groups of runs, and the
    `MethodConfig` keys it supports (`supports`: the method layer's keys its learner's hook points
    cover, `lop.algos.method_layer.supported_keys`, plus the experiment's own, e.g. ``head_reset``).
    A run that sets any other key to a non-default value is rejected before training."""

    name: str
    problem_cls: type
    build: Callable[[Any, Sequence[RunSpec], torch.device], Trainer]
    description: str = ""
    needs_data: tuple[str, ...] = field(default_factory=tuple)
    supports: frozenset[str] = field(default_factory=frozenset)


def check_packable(runs: Sequence[RunSpec], where: str = "runs") -> None:
    """Runs in one batch must agree on every non-numeric method setting (optimiser, utility, ...)."""
    conflict = packing_conflict([r.config for r in runs])
    if conflict is not None:
        a, b, key = conflict
        va, vb = static_fields(runs[a].config).get(key), static_fields(runs[b].config).get(key)
        raise ConfigError(
            where,
            f"settings {runs[a].method}/{runs[a].setting_id} and {runs[b].method}/{runs[b].setting_id} "
            f"differ in {key!r} ({va!r} vs {vb!r}) and cannot train in one batch; "
            "set pack_settings: false, split the method or take it out of pack_methods",
        )


def experiments() -> dict[str, ExperimentSpec]:
    """All experiments: every module of `lop.experiments` with ``EXPERIMENT`` or ``EXPERIMENTS``."""
    import lop.experiments as pkg

    found: dict[str, ExperimentSpec] = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"lop.experiments.{info.name}")
        specs = list(getattr(module, "EXPERIMENTS", []))
        if isinstance(getattr(module, "EXPERIMENT", None), ExperimentSpec):
            specs.append(module.EXPERIMENT)
        for spec in specs:
            found[spec.name] = spec
    return found


def get_experiment(name: str) -> ExperimentSpec:
    """The experiment `name`; tries the module of the same name first so that a command imports only
    what it runs (some experiment modules pull in heavy simulators)."""
    if name.isidentifier():
        try:
            module = importlib.import_module(f"lop.experiments.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"lop.experiments.{name}":
                raise
        else:
            spec = getattr(module, "EXPERIMENT", None)
            if isinstance(spec, ExperimentSpec) and spec.name == name:
                return spec
    found = experiments()
    if name not in found:
        raise ConfigError("experiment", f"unknown experiment {name!r}; known: {', '.join(sorted(found))}")
    return found[name]
