"""Typed, validated configuration.

Configs are frozen dataclasses. `from_dict` builds one from plain YAML/JSON data and rejects unknown
keys, wrong types and impossible values with a `ConfigError` naming the key. `to_dict` is the inverse
(the fully resolved config written to ``run.json``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from lop.errors import ConfigError

T = TypeVar("T")


def _join(where: str, key: str) -> str:
    if not where or where.endswith(":"):
        return f"{where}{key}"
    return f"{where}.{key}"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against type `tp` (int, float, bool, str, Literal, X | None, tuple, list, dict, dataclass)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _coerce(value, options[0], where)
        for a in options:
            try:
                return _coerce(value, a, where)
            except ConfigError:
                continue
        raise ConfigError(where, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(where, f"expected {_type_name(tp)}, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(where, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(where, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(where, f"expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(where, f"expected a finite number, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(where, f"expected a string, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(where, f"expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(where, f"expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(where, f"expected a list, got {value!r}")
        return [_coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(where, f"expected a mapping, got {value!r}")
        return {_coerce(k, kt, where): _coerce(v, vt, _join(where, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    raise TypeError(f"unsupported config type {tp!r} at {where}")


@functools.cache
def _schema(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field]]:
    """(type hints, init fields) of a config dataclass, resolved once per class: `typing.get_type_hints`
    evaluates every string annotation, which dominated `lop params validate` when done per call."""
    return typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls) if f.init}


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass `cls` from a mapping, validating keys, types and `validate()` constraints."""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(where, f"expected a mapping of settings, got {data!r}")
    hints, fields = _schema(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            _join(where, str(unknown[0])), f"unknown key; known keys are: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _coerce(v, hints[k], _join(where, k)) for k, v in data.items()}
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(_join(where, missing[0]), "required key is missing")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        for key, message in validate():
            raise ConfigError(_join(where, key), message)
    return obj


# Field metadata: a field added after fingerprints were recorded, left out of `to_dict` (and hence of
# run fingerprints and written configs) while it holds its default, so old runs keep their identity.
OMIT_IF_DEFAULT = {"omit_if_default": True}


def optional_field(default: Any) -> Any:
    """A config field that `to_dict` leaves out while it holds its default (an `OMIT_IF_DEFAULT` field):
    for options added after job fingerprints were recorded; `from_dict` restores the default."""
    return field(default=default, metadata=OMIT_IF_DEFAULT)


def _omitted(obj: Any, f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("omit_if_default")) and getattr(obj, f.name) == f.default


def to_dict(obj: Any) -> Any:
    """Plain JSON-able data of a config dataclass (tuples become lists; `OMIT_IF_DEFAULT` fields left
    out while at their default)."""
    if dataclasses.is_dataclass(obj):
        return {
            f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not _omitted(obj, f)
        }
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def check(ok: bool, key: str, message: str) -> list[tuple[str, str]]:
    """One validation result for `validate()` methods."""
    return [] if ok else [(key, message)]


# ---------------------------------------------------------------------------------------------
# The method configuration shared by every experiment: methods are composable, not subclasses.
# ---------------------------------------------------------------------------------------------
#
# Every method config class declares ``resets_units``: whether its hook resets optimiser state per
# element (replaces units: CBP, ReDo), so that Adam cannot use its fused per-run kernel. It is the one
# flag that both `lop params validate` (`lop.params`, packs of a fused-optimiser experiment) and the
# method layer (`lop.algos.method_layer.MethodEntry.resets_units`) read, through `resets_units` below.


@dataclass(frozen=True)
class CBPConfig:
    """Continual backpropagation (docs/protocols/cbp.md); `lop.algos.cbp` documents each option.

    utility: "contribution" and "adaptable_contribution" are the Methods formulas (decayed,
    bias-corrected, reset on replacement); "reference_sum" is what the ResNet-18 reference code ranked
    units by: mean |outgoing weight| now × the running sum of mean |activation| (never decayed, never
    reset). reset_optimizer_state: zero the optimiser state of a replaced unit's weights (False keeps
    it, as the reference code did). count: "eligible" adds ρ·(#eligible units) per step; "all" adds
    ρ·(#units) per step as soon as any unit is eligible (the Continual ImageNet reference code).
    """

    resets_units: ClassVar[bool] = True

    replacement_rate: float = 1e-4
    maturity: int = 100
    decay: float = 0.99
    utility: Literal["contribution", "adaptable_contribution", "reference_sum"] = "contribution"
    mode: Literal["accumulate", "probabilistic"] = "accumulate"
    reset_optimizer_state: bool = True
    bias_correction: bool = False
    count: Literal["eligible", "all"] = field(default="eligible", metadata=OMIT_IF_DEFAULT)

    def neutral(self) -> CBPConfig:
        """The config of a run *without* CBP that trains in one batch with runs using this one: the
        same statistics, never a replacement (ρ = 0), so its weights are those of plain backprop
        (`lop.algos.method_layer`, "Packing methods")."""
        return dataclasses.replace(self, replacement_rate=0.0)

    def validate(self) -> list[tuple[str, str]]:
        return (
            check(0.0 <= self.replacement_rate <= 1.0, "replacement_rate", "must be within [0, 1]")
            + check(self.maturity >= 0, "maturity", "must be >= 0")
            + check(0.0 <= self.decay < 1.0, "decay", "must be within [0, 1)")
        )


@dataclass(frozen=True)
class ReDoConfig:
    """ReDo (Sokar et al. 2023): reinitialise units with normalised activation <= threshold."""

    resets_units: ClassVar[bool] = True

    threshold: float = 0.1
    every: int = 100

    def validate(self) -> list[tuple[str, str]]:
        return check(self.threshold >= 0, "threshold", "must be >= 0") + check(
            self.every > 0, "every", "must be > 0"
        )


@dataclass(frozen=True)
class L2InitConfig:
    """L2-Init (Kumar, Marklund & Van Roy 2023): loss term strength · ‖θ − θ₀‖², θ₀ the initial parameters."""

    resets_units: ClassVar[bool] = False

    strength: float = 1e-3

    def validate(self) -> list[tuple[str, str]]:
        return check(self.strength >= 0, "strength", "must be >= 0")


# The continual-learning scenarios a forgetting method's config accepts (its ``SCENARIOS``): a task-sequence
# experiment rejects a method whose config does not list the experiment's scenario.
ALL_SCENARIOS: frozenset[str] = frozenset({"task", "domain", "class"})


@dataclass(frozen=True)
class SIConfig:
    """Synaptic Intelligence (Zenke, Poole & Ganguli 2017), as the authors' code: penalty
    c·Σ Ω(θ − θ̃)² with Ω ← relu(Ω + ω / ((θ − θ̃)² + ξ)) at each task end (`lop.algos.synaptic_intelligence`)."""

    resets_units: ClassVar[bool] = False
    SCENARIOS: ClassVar[frozenset[str]] = ALL_SCENARIOS

    c: float = 0.1
    xi: float = 0.1

    def validate(self) -> list[tuple[str, str]]:
        return check(self.c >= 0, "c", "strength must be >= 0") + check(
            self.xi > 0, "xi", "damping must be > 0 (it divides by (θ − θ̃)² + ξ)"
        )


@dataclass(frozen=True)
class EWCConfig:
    """Elastic weight consolidation (Kirkpatrick et al. 2017) and online EWC (Schwarz et al. 2018):
    penalty (λ/2)·Σ_j F_j(θ − θ*_j)² (`lop.algos.ewc`). fisher: the Fisher estimator (exact over labels
    weighted by p, sample y ~ p, empirical true y, pred argmax, batched = square of the mean gradient of
    fisher_batch examples); fisher_samples: examples of the finished task used per run; online: one
    anchor with F* ← γF* + F_t instead of one term per task; gamma: online only."""

    resets_units: ClassVar[bool] = False
    SCENARIOS: ClassVar[frozenset[str]] = ALL_SCENARIOS

    lam: float = 100.0
    fisher: Literal["exact", "sample", "empirical", "pred", "batched"] = "exact"
    fisher_samples: int = 1000
    fisher_batch: int = 128
    online: bool = False
    gamma: float = 1.0

    def validate(self) -> list[tuple[str, str]]:
        return (
            check(self.lam >= 0, "lam", "strength λ must be >= 0")
            + check(self.fisher_samples >= 1, "fisher_samples", "must be >= 1")
            + check(self.fisher_batch >= 1, "fisher_batch", "must be >= 1")
            + check(0.0 < self.gamma <= 1.0, "gamma", "must be within (0, 1]")
            + check(
                self.online or self.gamma == 1.0,
                "gamma",
                "is an online-EWC setting and separate EWC would ignore it; set online: true or remove it",
            )
            + check(
                self.fisher == "batched" or self.fisher_batch == 128,
                "fisher_batch",
                "is the batch of the 'batched' Fisher estimator and would be ignored; set fisher: batched or remove it",
            )
        )


@dataclass(frozen=True)
class ReplayConfig:
    """Experience replay (`lop.algos.replay`): a buffer of `buffer` examples per run filled by
    `policy` (reservoir sampling or class-balanced), `batch` replayed examples appended to every step's
    batch once the buffer holds examples."""

    resets_units: ClassVar[bool] = False
    SCENARIOS: ClassVar[frozenset[str]] = ALL_SCENARIOS

    buffer: int = 1000
    policy: Literal["reservoir", "class_balanced"] = "reservoir"
    batch: int = 32

    def validate(self) -> list[tuple[str, str]]:
        return check(self.buffer >= 0, "buffer", "size must be >= 0") + check(
            self.batch >= 1, "batch", "replayed examples per step must be >= 1"
        )


@dataclass(frozen=True)
class LwFConfig:
    """Learning without Forgetting (Li & Hoiem 2017), `lop.algos.lwf`: loss term
    α·T²·KL(softmax(old/T) ‖ softmax(new/T)) over the past tasks' outputs of the model frozen at the
    end of the previous task."""

    resets_units: ClassVar[bool] = False
    SCENARIOS: ClassVar[frozenset[str]] = ALL_SCENARIOS

    alpha: float = 1.0
    temperature: float = 2.0

    def validate(self) -> list[tuple[str, str]]:
        return check(self.alpha >= 0, "alpha", "must be >= 0") + check(
            self.temperature > 0, "temperature", "must be > 0"
        )


@dataclass(frozen=True)
class MoEAdaptersConfig:
    """Mixture-of-experts adapters on a frozen CLIP (Yu et al. 2024; docs/protocols/moe_cifar.md).

    mode: ``adapters`` (the method), ``zero_shot`` (CLIP untouched: no training) or ``full_finetune``
    (every backbone weight trained, per run). experts/top_k/bottleneck/scale/dropout: the adapters of
    every block (`lop.nets.moe_adapters`). routers: ``shared`` (one router, the public CIL code) or
    ``per_task`` (one per task; needs ``ddas`` to pick one at test time). noise_at_test: keep the noisy
    gating on at test time (reproduces the public CIL code's bug). balance_weight: weight of the
    load-balancing loss (0 = dropped, as the public code). freeze_top: experts per block frozen after each
    task (activate-freeze; 0 = off). ddas: the auto-selector (`lop.algos.ddas`) ``off``, ``per_sample`` or
    ``per_batch`` (the public code) with its threshold and autoencoder iterations (first task / later).
    warmup_steps: linear warm-up of the per-task cosine schedule. label_smoothing: of the cross-entropy.
    """

    resets_units: ClassVar[bool] = False

    mode: Literal["adapters", "zero_shot", "full_finetune"] = "adapters"
    experts: int = 2
    top_k: int = 2
    bottleneck: int = 64
    scale: float = 0.1
    dropout: float = 0.1
    routers: Literal["shared", "per_task"] = "shared"
    noise_at_test: bool = False
    balance_weight: float = 0.01
    freeze_top: int = 0
    ddas: Literal["off", "per_sample", "per_batch"] = "off"
    ddas_threshold: float = 0.0655
    ddas_steps_first: int = 1000
    ddas_steps: int = 300
    warmup_steps: int = 30
    label_smoothing: float = 0.0

    def validate(self) -> list[tuple[str, str]]:
        return (
            check(self.experts >= 1, "experts", "must be >= 1")
            + check(1 <= self.top_k <= self.experts, "top_k", f"must be within [1, experts = {self.experts}]")
            + check(self.bottleneck >= 1, "bottleneck", "must be >= 1")
            + check(0.0 <= self.dropout < 1.0, "dropout", "must be within [0, 1)")
            + check(self.balance_weight >= 0, "balance_weight", "must be >= 0 (0 drops the loss)")
            + check(
                0 <= self.freeze_top <= self.experts,
                "freeze_top",
                f"must be within [0, experts = {self.experts}]",
            )
            + check(
                self.routers == "shared" or self.ddas != "off",
                "routers",
                "per_task routers need ddas: per_sample or per_batch to pick a router at test time",
            )
            + check(
                self.mode == "adapters" or (self.ddas == "off" and self.freeze_top == 0),
                "mode",
                f"{self.mode} has no adapters: ddas and freeze_top apply to mode: adapters only",
            )
            + check(self.ddas_threshold >= 0, "ddas_threshold", "must be >= 0")
            + check(min(self.ddas_steps_first, self.ddas_steps) >= 1, "ddas_steps", "must be >= 1")
            + check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
            + check(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must be within [0, 1)")
        )


SamplerKind = Literal[
    "uniform", "class_balanced", "fifo", "recency", "herding", "kmeans", "max_loss", "uncertainty"
]


@dataclass(frozen=True)
class SamplerConfig:
    """What the budgeted batch is drawn from (experiment `budgeted_cl`; `lop.algos.samplers` documents
    each kind). ``window``: FIFO's last k stored examples (0 = as many as the step trains on);
    ``decay``: recency bias, p_i ∝ exp(−decay · age_i / n_new) with age in examples; ``keep``: the fraction
    of each class's candidates herding/k-means keep; ``clusters``: k-means centres per class;
    ``candidates``: examples scored per drawn example (max-loss, uncertainty) or the step's candidate
    pool per drawn example (herding, k-means)."""

    resets_units: ClassVar[bool] = False

    kind: SamplerKind = "uniform"
    window: int = 0
    decay: float = 1.0
    keep: float = 0.5
    clusters: int = 5
    candidates: int = 2

    def validate(self) -> list[tuple[str, str]]:
        return (
            check(self.window >= 0, "window", "must be >= 0 (0 = the examples one step trains on)")
            + check(self.decay >= 0, "decay", "must be >= 0")
            + check(0.0 < self.keep <= 1.0, "keep", "must be within (0, 1]")
            + check(self.clusters >= 1, "clusters", "must be >= 1")
            + check(self.candidates >= 1, "candidates", "must be >= 1")
        )


@dataclass(frozen=True)
class DistillConfig:
    """Distillation towards stored logits (`lop.algos.distillation`): ``loss`` bce (iCaRL), kl (BiC),
    cosine (LUCIR), mse (DER); ``weight`` multiplies the term; ``temperature`` T of bce/kl."""

    resets_units: ClassVar[bool] = False

    loss: Literal["bce", "kl", "cosine", "mse"] = "kl"
    weight: float = 1.0
    temperature: float = 2.0

    def validate(self) -> list[tuple[str, str]]:
        return check(self.weight > 0, "weight", "must be > 0") + check(
            self.temperature > 0, "temperature", "must be > 0"
        )


@dataclass(frozen=True)
class FCCorrectionConfig:
    """A correction of the classifier layer (`lop.algos.fc_correction`): ``wa`` weight aligning after each
    step, ``bic`` a bias-correction layer fitted on held-out stored data, ``cosine`` a cosine head with
    scale ``sigma``. ``bic_steps``/``bic_lr``: the fit of BiC's (α, β)."""

    resets_units: ClassVar[bool] = False

    kind: Literal["wa", "bic", "cosine"] = "wa"
    sigma: float = 1.0
    bic_steps: int = 100
    bic_lr: float = 0.01

    def validate(self) -> list[tuple[str, str]]:
        return (
            check(self.sigma > 0, "sigma", "must be > 0")
            + check(self.bic_steps >= 1, "bic_steps", "must be >= 1")
            + check(self.bic_lr > 0, "bic_lr", "must be > 0")
        )


@dataclass(frozen=True)
class DENConfig:
    """Dynamically Expandable Networks (Yoon et al. 2018; docs/protocols/den.md); `lop.algos.den` documents
    each phase. Defaults are those of the public code.

    capacity: the most units a hidden layer may hold (preallocated; null = the initial width plus the most
    DEN can add over the run, (n_tasks − 1)·(expand_units + split_max)); it must be at least the initial
    width. expand_units: k units added per hidden layer when the loss stays above ``loss_threshold``.
    l1: soft-threshold per step on the trained weights (|w| ← max(|w| − l1, 0)); group_lasso: the same on
    the L2 norm of each new unit's fan-in. drift_l2: λ of λ·½‖W − W^{t−1}‖² on the retrained old weights.
    split_threshold: σ, the fan-in drift ‖Δw_i‖₂ above which a unit is duplicated (at most ``split_max``
    per layer and task). phase_steps: optimiser steps of the selective-retraining and expansion phases
    (0 = the experiment's steps per task); head_steps: steps of the new head's sparse training and of the
    retraining after a split (0 = phase_steps // 10). lr_decay: the step size is multiplied by it after
    every epoch of the task's data (restarting each phase).
    """

    resets_units: ClassVar[bool] = False

    # DEN picks head t and the units of time t from the task label: no task identity, no DEN
    SCENARIOS: ClassVar[frozenset[str]] = frozenset({"task", "domain"})

    capacity: int | None = None
    expand_units: int = 10
    loss_threshold: float = 0.01
    l1: float = 1e-5
    group_lasso: float = 1e-3
    drift_l2: float = 0.5
    split_threshold: float = 0.05
    split_max: int = 10
    phase_steps: int = 0
    head_steps: int = 0
    lr_decay: float = 0.95

    def validate(self) -> list[tuple[str, str]]:
        return (
            check(self.capacity is None or self.capacity > 0, "capacity", "must be > 0 (null = automatic)")
            + check(self.expand_units > 0, "expand_units", "must be > 0 (k units added per expansion)")
            + check(self.loss_threshold >= 0, "loss_threshold", "must be >= 0")
            + check(self.l1 >= 0, "l1", "must be >= 0")
            + check(self.group_lasso >= 0, "group_lasso", "must be >= 0")
            + check(self.drift_l2 >= 0, "drift_l2", "must be >= 0")
            + check(self.split_threshold >= 0, "split_threshold", "must be >= 0")
            + check(self.split_max >= 0, "split_max", "must be >= 0 (0 = never split)")
            + check(
                self.phase_steps >= 0, "phase_steps", "must be >= 0 (0 = the experiment's steps per task)"
            )
            + check(self.head_steps >= 0, "head_steps", "must be >= 0 (0 = phase_steps // 10)")
            + check(0.0 < self.lr_decay <= 1.0, "lr_decay", "must be within (0, 1]")
        )


@dataclass(frozen=True)
class MethodConfig:
    """One learning method: optimiser + regularisers + plasticity mechanisms, composable."""

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    noise_std: float = 0.0
    cbp: CBPConfig | None = None
    redo: ReDoConfig | None = None
    arch: Literal["default", "linear"] = "default"
    head_reset: bool = False
    retrain: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # methods added through the method layer (lop.algos.methods): optional, omitted from to_dict while unset
    l2_init: L2InitConfig | None = field(default=None, metadata=OMIT_IF_DEFAULT)
    # MoE adapters on CLIP: honoured only by the CLIP experiments (moe_cifar), rejected elsewhere
    moe_adapters: MoEAdaptersConfig | None = field(default=None, metadata=OMIT_IF_DEFAULT)
    si: SIConfig | None = field(default=None, metadata=OMIT_IF_DEFAULT)
    ewc: EWCConfig | None = field(default=None, metadata=OMIT_IF_DEFAULT)
    replay: ReplayConfig | None = field(default=None, metadata=OMIT_IF_DEFAULT)
    lwf: LwFConfig | None = field(default=None, metadata=OMIT_IF_DEFAULT)
    # experiment `budgeted_cl`'s own keys (docs/protocols/budgeted_cl.md), rejected elsewhere
    sampler: SamplerConfig | None = field(default=None, metadata=OMIT_IF_DEFAULT)
    distill: DistillConfig | None = field(default=None, metadata=OMIT_IF_DEFAULT)
    fc_correction: FCCorrectionConfig | None = field(default=None, metadata=OMIT_IF_DEFAULT)
    # task-sequence experiments (lop.problems.cl_tasks): train on the union of the tasks so far (upper bound)
    joint: bool = field(default=False, metadata=OMIT_IF_DEFAULT)
    # Dynamically Expandable Networks: replaces the experiment's learner (lop.algos.den); CL experiments only
    den: DENConfig | None = field(default=None, metadata=OMIT_IF_DEFAULT)

    def validate(self) -> list[tuple[str, str]]:
        return (
            check(self.lr > 0, "lr", "step size must be > 0")
            + check(0.0 <= self.momentum < 1.0, "momentum", "must be within [0, 1)")
            + check(all(0.0 <= b < 1.0 for b in self.betas), "betas", "each must be within [0, 1)")
            + check(self.eps > 0, "eps", "must be > 0")
            + check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
            + check(self.noise_std >= 0, "noise_std", "must be >= 0")
            + check(
                self.optimizer == "sgd" or self.momentum == 0.0,
                "momentum",
                "is an SGD setting and Adam would ignore it; Adam's moments are set by betas",
            )
            + check(
                self.optimizer == "adam" or (self.betas == (0.9, 0.999) and self.eps == 1e-8),
                "betas",
                "betas and eps are Adam settings and SGD would ignore them; remove them or use optimizer: adam",
            )
        )


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """Copy of nested dict `data` with key path ``a.b.c`` set to value."""
    head, _, rest = dotted.partition(".")
    out = dict(data)
    if rest:
        sub = out.get(head)
        out[head] = set_dotted(dict(sub) if isinstance(sub, Mapping) else {}, rest, value)
    else:
        out[head] = value
    return out


def static_fields(cfg: MethodConfig) -> dict[str, Any]:
    """The non-numeric part of a method config: runs trained in one batch must agree on it."""

    def walk(d: Any, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        if isinstance(d, dict):
            for k, v in d.items():
                out.update(walk(v, _join(prefix, k)))
        elif isinstance(d, bool | str) or d is None:
            out[prefix] = d
        return out

    flat = to_dict(cfg)
    return walk(flat)


def method_config_class(key: str) -> type | None:
    """The config class of `MethodConfig`'s optional method field `key` (`CBPConfig` for ``cbp``), or
    None for a plain field (``noise_std``, ``lr``, ...)."""
    hints, fields = _schema(MethodConfig)
    if key not in fields:
        return None
    tp = hints[key]
    for arg in typing.get_args(tp) or (tp,):
        if isinstance(arg, type) and dataclasses.is_dataclass(arg):
            return arg
    return None


def resets_units(key: str) -> bool:
    """Whether method `key`'s hook resets optimiser state per element: its config class's
    ``resets_units`` flag (False for a plain field such as ``noise_std``)."""
    cls = method_config_class(key)
    return bool(cls is not None and cls.resets_units)


def fillable_methods(cfg: MethodConfig) -> set[str]:
    """The optional method fields set on `cfg` whose config offers ``neutral()``: runs without that
    method may train in one batch with runs using it (they get the neutral config)."""
    return {f.name for f in dataclasses.fields(cfg) if hasattr(getattr(cfg, f.name), "neutral")}


def packing_conflict(configs: list[MethodConfig]) -> tuple[int, int, str] | None:
    """Whether runs with these configs can train in one batch: they must agree on every non-numeric
    setting (`static_fields`: optimiser, architecture, utility, ...), except that runs without a method
    whose config has ``neutral()`` (continual backprop) are not compared on that method's settings.
    Returns (index a, index b, key) of the first disagreement, or None."""
    fill = set().union(*(fillable_methods(c) for c in configs)) if configs else set()
    fields = [static_fields(c) for c in configs]
    keys = sorted(set().union(*fields)) if fields else []
    missing = object()
    for key in keys:
        top = key.split(".", 1)[0]
        ref: tuple[int, Any] | None = None
        for i, (cfg, flat) in enumerate(zip(configs, fields)):
            if top in fill and getattr(cfg, top, None) is None:
                continue  # a run without this method: gets the neutral config in the batch
            value = flat.get(key, missing)
            if ref is None:
                ref = (i, value)
            elif value != ref[1]:
                return ref[0], i, key
    return None
