"""The contract every experiment implements (see docs/architecture.md)."""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lop.config import MethodConfig, static_fields
from lop.errors import ConfigError


@dataclass
class MetricBlock:
    """Values of one metric for all runs of a batch at K x-positions: steps ``[K]``, values ``[S, K]``."""

    name: str
    steps: torch.Tensor
    values: torch.Tensor


@dataclass(frozen=True)
class RunSpec:
    """One run of a group: a (method, setting, seed) with its resolved method config."""

    method: str
    setting_id: str
    setting: dict[str, Any]
    config: MethodConfig
    seed: int


class Trainer(ABC):
    """Trains a group of runs unit by unit; all state lives in tensors returned by `state_dict`."""

    n_units: int
    unit_name: str = "unit"
    stand_in: bool = False  # True when the data are a stand-in (copied into every run.json)

    @abstractmethod
    def train_unit(self, unit: int) -> list[MetricBlock]:
        """Advance by one unit (a bin of steps, a task, an epoch, an update) and return its metrics."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (tensors, ints, floats, strings, lists/dicts of them)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    @abstractmethod
    def diverged_at(self) -> torch.Tensor:
        """``[S]`` int64: first step at which each run's loss was non-finite, −1 if never."""

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
    """An experiment: its problem dataclass and a builder of trainers for groups of runs."""

    name: str
    problem_cls: type
    build: Callable[[Any, Sequence[RunSpec], torch.device], Trainer]
    description: str = ""
    needs_data: tuple[str, ...] = field(default_factory=tuple)


def check_packable(runs: Sequence[RunSpec], where: str = "runs") -> None:
    """Runs in one batch must agree on every non-numeric method setting (optimiser, utility, ...)."""
    first = static_fields(runs[0].config)
    for r in runs[1:]:
        other = static_fields(r.config)
        for key in sorted(set(first) | set(other)):
            if first.get(key) != other.get(key):
                raise ConfigError(
                    where,
                    f"settings {runs[0].setting_id!r} and {r.setting_id!r} differ in {key!r} "
                    f"({first.get(key)!r} vs {other.get(key)!r}) and cannot train in one batch; "
                    "set pack_settings: false or split the method",
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
