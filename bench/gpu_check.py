"""Device check: parity with the CPU, throughput, peak memory and a profile line per case (issue #16).

One command, planned to take well under 8 minutes on one H100/H200-class GPU::

    python bench/gpu_check.py --device cuda --out gpu_check.md            # full sizes, budget 480 s
    python bench/gpu_check.py --device cpu --out /tmp/gpu_check.md        # tiny sizes (automatic on cpu)

It prints markdown tables and writes the same text to ``--out``:

(a) **parity** — the smoke scale of ``params/<experiment>.yaml`` (SCR, permuted MNIST on the embedded
    digits, Continual ImageNet and incremental CIFAR on small prepared stand-ins) for a BP method and
    CBP, trained with the real trainers on the CPU and on ``--device``. Both trainers are built on their
    own device (the table says whether their initial states are identical: draws of ≥ 32,768 numbers per
    run come from ``torch.Generator`` and differ between CPU and CUDA), then the device trainer is loaded
    with the CPU trainer's initial state, so that the comparison tests the numerics of the device's code
    paths. TF32 is switched off for this section (fp32 everywhere). A row passes when no metric is
    non-finite, every metric agrees within the tolerance stated with the table, and the CBP replacement
    counts of every run are equal. Then the BP group of each smoke scale runs once more through
    ``lop.runner.run_group`` on the device, as ``lop run`` does (checkpoint after every unit, results
    written): every run must end ``complete`` with finite metrics.
(b) **throughput** — permuted MNIST 784-2000×3-10 (a prepared MNIST stand-in, batch 1) in seed-steps/s
    at S = 1, 30, 100 runs per process; the Continual ImageNet ConvNet (BP and CBP, batch 100) in
    images/s per run at S = 1, 8, 30; ResNet-18 of incremental CIFAR (BP and CBP, batch 90, full
    augmentation) at S = 1, 4. Each case is built through the trainers, warmed up by one call, timed
    over ``--reps`` calls between device synchronisations, with its peak memory (CUDA:
    ``torch.cuda.max_memory_allocated`` from build to the end of timing; CPU: the process's peak RSS).
    The library's defaults apply here (TF32 as PyTorch sets it; shown in the header).
(c) **profile** — one more call of each case under ``torch.profiler``: on CUDA the fraction of the
    timed wall time the GPU spends in kernels, the kernel launches per step and the heaviest kernel,
    with a verdict (kernel-bound, mixed, launch/CPU-bound); on the CPU the heaviest operators.

Plus the goals of issue #16, extrapolated from the measured rates.

``--budget-s`` bounds the whole check: once it is spent, the remaining cases are listed as skipped.
On the CPU the sizes are tiny (``--tiny``, automatic there, ``--full`` to override): the check then only
proves the machinery (tests/test_gpu_check.py runs it); its rates say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from lop.allocator import keep_freed_memory
from lop.config import CBPConfig, MethodConfig
from lop.experiments.base import MetricBlock, RunSpec, Trainer, flatten_tensors, get_experiment
from lop.params import load_params, select_runs

ROOT = Path(__file__).resolve().parents[1]

# (experiment, methods) of the parity section: a BP-like method and CBP of each smoke scale.
PARITY_CASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("scr", ("bp", "cbp")),
    ("permuted_mnist", ("bp", "cbp")),
    ("continual_imagenet", ("bp", "cbp")),
    ("incremental_cifar", ("base", "cbp")),
)

# Tolerances of the parity section, by metric-name keyword (first match wins): (atol, rtol).
# Accuracies are fractions of small smoke test sets (20–40 images), where one or two images may flip
# between devices; ranks are unit counts; the rest are continuous (losses, errors, weight magnitudes).
TOLERANCES: tuple[tuple[str, float, float], ...] = (
    ("accuracy", 0.1, 0.0),
    ("rank", 1.0, 0.02),
    ("dead_units", 0.1, 0.0),
    ("dormant", 0.1, 0.0),
    ("", 1e-4, 1e-2),
)

# Goals of issue #16.
GOAL_PMNIST_SEED_STEPS = 10_000.0
GOAL_IMAGENET_HOURS = 10.0  # 30 seeds × 2,000 tasks
GOAL_CIFAR_HOURS = 1.5  # one CIFAR-100 ResNet-18 run
IMAGENET_GOAL_SEEDS, IMAGENET_GOAL_TASKS = 30, 2000

IMAGE_METHODS: dict[str, dict[str, MethodConfig]] = {
    "bp": {"convnet": MethodConfig(lr=0.01, momentum=0.9), "resnet": MethodConfig(lr=0.1, momentum=0.9)},
    "cbp": {
        "convnet": MethodConfig(
            lr=0.01,
            momentum=0.9,
            cbp=CBPConfig(replacement_rate=3e-4, maturity=100, utility="adaptable_contribution"),
        ),
        "resnet": MethodConfig(
            lr=0.1,
            momentum=0.9,
            weight_decay=5e-4,
            cbp=CBPConfig(replacement_rate=1e-5, maturity=1000, utility="contribution"),
        ),
    },
}


# ---- options and sizes ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    """Problem sizes of the throughput section (full on a GPU, tiny on a CPU)."""

    mnist_width: int
    mnist_seeds: tuple[int, ...]
    mnist_steps: int  # online steps per call
    convnet_seeds: tuple[int, ...]
    convnet_batch: int
    convnet_steps: int  # mini-batch steps per call
    resnet_seeds: tuple[int, ...]
    resnet_batch: int
    resnet_image: int
    resnet_width: int
    resnet_steps: int
    parity_max_units: int  # 0 = every unit of the smoke scale
    parity_overrides: tuple[tuple[str, str, Any], ...] = ()  # (experiment, problem field, value)


FULL = Sizes(
    mnist_width=2000,
    mnist_seeds=(1, 30, 100),
    mnist_steps=500,
    convnet_seeds=(1, 8, 30),
    convnet_batch=100,
    convnet_steps=25,
    resnet_seeds=(1, 4),
    resnet_batch=90,
    resnet_image=32,
    resnet_width=64,
    resnet_steps=10,
    parity_max_units=0,
)
TINY = Sizes(
    mnist_width=32,
    mnist_seeds=(1, 4),
    mnist_steps=40,
    convnet_seeds=(1, 2),
    convnet_batch=20,
    convnet_steps=2,
    resnet_seeds=(1,),
    resnet_batch=20,
    resnet_image=8,
    resnet_width=8,
    resnet_steps=1,
    parity_max_units=1,
    parity_overrides=(("incremental_cifar", "width", 8),),
)


@dataclass(frozen=True)
class Options:
    """What to check and how (the command line)."""

    device: str = "cuda"
    tiny: bool | None = None  # None: tiny on a CPU, full elsewhere
    out: Path | None = None
    budget_s: float = 480.0
    reps: int = 2
    sections: tuple[str, ...] = ("parity", "mnist", "convnet", "resnet")
    threads: int | None = None
    profile: bool = True


# ---- timing, memory, budget -----------------------------------------------------------------
def sync(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window on CUDA (the CPU reports the process's peak RSS instead)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """CUDA: bytes allocated at the peak of the window; CPU: the process's peak resident set (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024.0


class Budget:
    """Wall-clock budget of the whole check."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def spent(self) -> bool:
        return self.elapsed() >= self.seconds


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """TF32 off for matmuls and cuDNN convolutions inside the block (restored afterwards)."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# ---- data ---------------------------------------------------------------------------------------
def prepare_data(root: Path, need_mnist: bool) -> dict[str, Path]:
    """Small prepared stand-ins of the image data sets (and MNIST for the full-size MLP) under `root`."""
    from lop.data.cifar100 import prepare_cifar100
    from lop.data.imagenet32 import prepare_imagenet32
    from lop.data.standins import write_standin

    write_standin("imagenet32", root / "imagenet32-raw", size="small")
    write_standin("cifar100", root / "cifar100-raw", size="small")
    data = {
        "imagenet32": prepare_imagenet32(root / "imagenet32-raw", root / "imagenet32"),
        "cifar100": prepare_cifar100(root / "cifar100-raw", root / "cifar100"),
    }
    if need_mnist:
        from lop.data.mnist import prepare_mnist

        write_standin("mnist", root / "mnist-raw", size="small")
        data["mnist"] = prepare_mnist(root / "mnist-raw", root / "mnist")
    return data


# ---- (a) parity ---------------------------------------------------------------------------------
@dataclass
class ParityRow:
    """CPU vs device for one method of one smoke scale."""

    experiment: str
    method: str
    runs: int
    units: int
    init_identical: bool
    n_metrics: int
    worst_metric: str
    worst_diff: float
    worst_allowed: float
    finite: bool
    replaced_cpu: list[int] | None
    replaced_dev: list[int] | None
    ok: bool


def tolerance(metric: str) -> tuple[float, float]:
    """(atol, rtol) of a metric name (see TOLERANCES)."""
    for key, atol, rtol in TOLERANCES:
        if key in metric:
            return atol, rtol
    raise AssertionError("TOLERANCES ends with a catch-all entry")


def compare_metrics(
    ref: dict[str, torch.Tensor], dev: dict[str, torch.Tensor]
) -> tuple[bool, bool, str, float, float]:
    """(all within tolerance, all finite, worst metric, its max |Δ|, its allowed |Δ|).

    The worst metric is the one with the largest ratio of difference to allowance; a metric missing on
    one side, a shape mismatch or a non-finite value fails.
    """
    if set(ref) != set(dev):
        missing = sorted(set(ref) ^ set(dev))
        return False, True, f"missing {missing[0]}", math.inf, 0.0
    finite = all(bool(torch.isfinite(v).all()) for v in (*ref.values(), *dev.values()))
    ok, worst, worst_ratio, worst_diff, worst_allowed = True, "", -1.0, 0.0, 0.0
    for name in sorted(ref):
        a, b = ref[name], dev[name]
        if a.shape != b.shape:
            return False, finite, f"{name} (shape)", math.inf, 0.0
        atol, rtol = tolerance(name)
        allowed = atol + rtol * a.abs()
        diff = (a - b).abs()
        diff = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff)
        ratio = float((diff / allowed).max()) if diff.numel() else 0.0
        if not bool((diff <= allowed).all()):
            ok = False
        if ratio > worst_ratio:
            k = int((diff / allowed).argmax()) if diff.numel() else 0
            worst, worst_ratio = name, ratio
            worst_diff = float(diff.flatten()[k]) if diff.numel() else 0.0
            worst_allowed = float(allowed.flatten()[k]) if diff.numel() else 0.0
    return ok and finite, finite, worst, worst_diff, worst_allowed


def _to_device(tree: Any, device: torch.device) -> Any:
    """A copy of a nested state (dicts, lists, tuples, tensors) with every tensor on `device`."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to(device, copy=True)
    if isinstance(tree, dict):
        return {k: _to_device(v, device) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_to_device(v, device) for v in tree)
    return tree


def states_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two trainer states hold the same tensors bit for bit (compared on the CPU)."""
    fa, fb = flatten_tensors(a), flatten_tensors(b)
    if set(fa) != set(fb):
        return False
    return all(fa[k].shape == fb[k].shape and torch.equal(fa[k].cpu(), fb[k].cpu()) for k in fa)


def replacement_counts(trainer: Trainer) -> list[int] | None:
    """Cumulative CBP replacements of every run (all layers), or None without CBP."""
    cbp = getattr(getattr(trainer, "learner", None), "cbp", None)
    if cbp is None:
        return None
    return [int(v) for v in torch.stack(cbp.n_replaced).sum(0).cpu()]


def train_units(trainer: Trainer, n_units: int) -> dict[str, torch.Tensor]:
    """Run `n_units` units of a trainer; every metric as float64 ``[S, K]`` on the CPU."""
    parts: dict[str, list[torch.Tensor]] = {}
    for unit in range(n_units):
        blocks: list[MetricBlock] = trainer.train_unit(unit)
        for b in blocks:
            parts.setdefault(b.name, []).append(b.values.detach().to("cpu", torch.float64))
    return {name: torch.cat(vs, 1) for name, vs in parts.items()}


def smoke_group(
    experiment: str, method: str, data: dict[str, Path], overrides: Sequence[tuple[str, str, Any]] = ()
) -> tuple[Any, Any, list[RunSpec]]:
    """(spec, problem, runs) of a method at the smoke scale of params/<experiment>.yaml, with the
    image data sets pointed at the prepared stand-ins (CIFAR: at most their 2 validation images) and
    the problem fields of `overrides` that name this experiment replaced."""
    params = load_params(ROOT / "params" / f"{experiment}.yaml")
    spec = get_experiment(params.experiment)
    problem, runs = select_runs(params, "smoke", method, None, params.seeds("smoke"))
    if experiment == "continual_imagenet":
        problem = dataclasses.replace(problem, data_dir=str(data["imagenet32"]))
    elif experiment == "incremental_cifar":
        problem = dataclasses.replace(
            problem, data_dir=str(data["cifar100"]), val_per_class=min(problem.val_per_class, 2)
        )
    changes = {name: value for exp, name, value in overrides if exp == experiment}
    if changes:
        problem = dataclasses.replace(problem, **changes)
    return spec, problem, runs


def parity_case(
    experiment: str,
    method: str,
    device: torch.device,
    data: dict[str, Path],
    max_units: int = 0,
    overrides: Sequence[tuple[str, str, Any]] = (),
) -> ParityRow:
    """Train one smoke group on the CPU and on `device` from the same initial state and compare
    (at most `max_units` units; 0 = all)."""
    spec, problem, runs = smoke_group(experiment, method, data, overrides)
    cpu = torch.device("cpu")
    with strict_fp32():
        ref = spec.build(problem, runs, cpu)
        dev = spec.build(problem, runs, device)
        state = ref.state_dict()
        init_identical = states_equal(state, dev.state_dict())
        dev.load_state_dict(_to_device(state, device))
        n_units = ref.n_units if max_units <= 0 else min(ref.n_units, max_units)
        m_ref = train_units(ref, n_units)
        m_dev = train_units(dev, n_units)
        sync(device)
    ok, finite, worst, diff, allowed = compare_metrics(m_ref, m_dev)
    finite = finite and bool((ref.diverged_at() < 0).all()) and bool((dev.diverged_at() < 0).all())
    rep_ref, rep_dev = replacement_counts(ref), replacement_counts(dev)
    ok = ok and finite and rep_ref == rep_dev
    return ParityRow(
        experiment=experiment,
        method=method,
        runs=len(runs),
        units=n_units,
        init_identical=init_identical,
        n_metrics=len(m_ref),
        worst_metric=worst,
        worst_diff=diff,
        worst_allowed=allowed,
        finite=finite,
        replaced_cpu=rep_ref,
        replaced_dev=rep_dev,
        ok=ok,
    )


@dataclass
class PipelineRow:
    """`run_group` (the `lop run` path) on the device for one smoke group."""

    experiment: str
    method: str
    runs: int
    steps: int  # distinct x-positions (step column) of the metrics
    statuses: str
    finite: bool
    device: str
    wall_s: float
    ok: bool


def pipeline_case(
    experiment: str,
    method: str,
    device: torch.device,
    data: dict[str, Path],
    out: Path,
    overrides: Sequence[tuple[str, str, Any]] = (),
) -> PipelineRow:
    """Train a smoke group with `lop.runner.run_group` on `device`, checkpointing after every unit:
    every run must end ``complete`` with finite metrics and record the device in its run.json."""
    import json

    import pandas as pd

    from lop.runner import run_group

    spec, problem, runs = smoke_group(experiment, method, data, overrides)
    sync(device)
    t0 = time.perf_counter()
    dirs = run_group(
        spec, problem, runs, out, scale="smoke", device=device, checkpoint_every=1, progress=False
    )
    sync(device)
    wall = time.perf_counter() - t0
    records = [json.loads((d / "run.json").read_text()) for d in dirs]
    metas = [json.loads((d / "run.meta.json").read_text()) for d in dirs]
    frames = [pd.read_parquet(d / "metrics.parquet") for d in dirs]
    statuses = sorted({r["status"] for r in records})
    finite = all(
        bool(f["value"].notna().all()) and bool(f["value"].abs().lt(float("inf")).all()) for f in frames
    )
    recorded = sorted({str(m["device"]).split(":")[0] for m in metas})
    steps = int(max(f["step"].nunique() for f in frames)) if frames else 0
    return PipelineRow(
        experiment=experiment,
        method=method,
        runs=len(runs),
        steps=steps,
        statuses=",".join(statuses),
        finite=finite,
        device=",".join(recorded),
        wall_s=wall,
        ok=statuses == ["complete"] and finite and recorded == [device.type],
    )


# ---- (b) throughput and (c) profile -------------------------------------------------------------
@dataclass
class Workload:
    """A built case: `call(i)` advances it by one measured chunk (i = 0 is the warm-up)."""

    case: str
    method: str
    s: int
    unit: str  # "seed-steps/s" or "images/s"
    steps_per_call: int
    work_per_call: float  # seed-steps (all runs) or images (all runs) per call
    call: Callable[[int], None]


@dataclass
class ThroughputRow:
    """One measured (or skipped) throughput case."""

    case: str
    method: str
    s: int
    unit: str
    steps_per_call: int = 0
    rate: float = 0.0  # work per second, all runs
    per_run: float = 0.0
    step_ms: float = 0.0
    peak_mib: float = 0.0
    profile: str = ""
    note: str = ""

    @property
    def measured(self) -> bool:
        return self.rate > 0


@dataclass(frozen=True)
class ProfileEvent:
    """What `summarize_profile` needs of one profiler row (``key_averages()``)."""

    key: str
    count: int
    self_cpu_us: float
    self_device_us: float
    on_device: bool  # a kernel/memcpy row (its time is GPU time), not a CPU-side op


LAUNCH_KEYS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cudaGraphLaunch")


def summarize_profile(events: Sequence[ProfileEvent], device_type: str, wall_s: float, steps: int) -> str:
    """One line saying where the time of `steps` steps taking `wall_s` seconds (unprofiled) goes."""
    if device_type != "cuda":
        total = sum(e.self_cpu_us for e in events) or 1.0
        top = sorted(events, key=lambda e: e.self_cpu_us, reverse=True)[:2]
        ops = ", ".join(f"{e.key} {e.self_cpu_us / total:.0%}" for e in top)
        return f"cpu: heaviest ops {ops} of op time"
    # only device rows: a CPU op's "self device time" repeats the time of the kernels it launched
    kernels = [e for e in events if e.on_device and e.self_device_us > 0]
    if not kernels:
        return "no kernel events recorded (CUPTI unavailable?): GPU busy unknown"
    device_us = sum(e.self_device_us for e in kernels)
    n_kernels = sum(e.count for e in kernels) or 1
    launches = sum(e.count for e in events if e.key in LAUNCH_KEYS)
    busy = min(device_us / max(wall_s * 1e6, 1e-9), 1.0)
    verdict = "kernel-bound" if busy >= 0.7 else "launch/CPU-bound" if busy < 0.3 else "mixed"
    top = max(kernels, key=lambda e: e.self_device_us)
    return (
        f"{verdict}: GPU busy {busy:.0%} of wall, {launches / max(steps, 1):.0f} launches/step, "
        f"mean kernel {device_us / n_kernels:.1f} µs; "
        f"top kernel {top.key[:48]} ({top.self_device_us / max(device_us, 1e-9):.0%})"
    )


def profile_call(work: Workload, device: torch.device, index: int, wall_s: float) -> str:
    """Run `work.call(index)` under torch.profiler and summarise it against the unprofiled `wall_s`."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=activities) as prof:
        work.call(index)
        sync(device)
    events = [
        ProfileEvent(
            key=e.key,
            count=int(e.count),
            self_cpu_us=float(e.self_cpu_time_total),
            self_device_us=float(
                getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0))
            ),
            on_device=e.device_type != DeviceType.CPU,
        )
        for e in prof.key_averages()
    ]
    return summarize_profile(events, device.type, wall_s, work.steps_per_call)


def measure(build: Callable[[], Workload], device: torch.device, reps: int, profile: bool) -> ThroughputRow:
    """Build a case, warm it up, time `reps` calls between synchronisations, then profile one call."""
    reset_peak_memory(device)
    work = build()
    work.call(0)  # warm-up: allocations, kernel selection, first data
    sync(device)
    t0 = time.perf_counter()
    for i in range(1, reps + 1):
        work.call(i)
    sync(device)
    wall = (time.perf_counter() - t0) / reps
    peak = peak_memory_mib(device)
    rate = work.work_per_call / wall
    row = ThroughputRow(
        case=work.case,
        method=work.method,
        s=work.s,
        unit=work.unit,
        steps_per_call=work.steps_per_call,
        rate=rate,
        per_run=rate / work.s,
        step_ms=1000.0 * wall / work.steps_per_call,
        peak_mib=peak,
    )
    if profile:
        try:
            row.profile = profile_call(work, device, reps + 1, wall)
        except Exception as e:  # a profiler problem must not lose the timing
            row.profile = f"profile failed: {type(e).__name__}: {e}"[:200]
    del work
    gc.collect()  # trainers may sit in reference cycles; free their device memory before the next case
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _discard(_: object) -> None:
    """Drop a trainer's metric blocks (the throughput section only times the work)."""


def mnist_workload(
    sizes: Sizes, s: int, device: torch.device, data: dict[str, Path], reps: int
) -> Callable[[], Workload]:
    """Permuted MNIST (BP, batch 1): one call = one task of `mnist_steps` online steps."""
    from lop.experiments.permuted_mnist import PermutedMNISTProblem, PermutedMNISTTrainer

    def build() -> Workload:
        steps = sizes.mnist_steps
        if "mnist" in data:
            base = {"dataset": "mnist", "data_dir": str(data["mnist"])}
        else:
            base = {"dataset": "digits"}
        problem = PermutedMNISTProblem(
            **base,
            n_examples=steps,
            n_tasks=reps + 2,
            width=sizes.mnist_width,
            probe_every=0,
            chunk=min(steps, 1000),
        )
        runs = [RunSpec("bp", "default", {}, MethodConfig(lr=0.003), k) for k in range(s)]
        trainer = PermutedMNISTTrainer(problem, runs, device)
        return Workload(
            case=f"permuted MNIST {trainer.dim}-{sizes.mnist_width}×3-10",
            method="bp",
            s=s,
            unit="seed-steps/s",
            steps_per_call=steps,
            work_per_call=float(s * steps),
            call=lambda i: _discard(trainer.train_unit(i)),
        )

    return build


def convnet_workload(
    sizes: Sizes, method: str, s: int, device: torch.device, data: dict[str, Path], reps: int
) -> Callable[[], Workload]:
    """The Continual ImageNet trainer: one call = one task of `convnet_steps` mini-batch steps."""
    from lop.experiments.continual_imagenet import ContinualImageNetProblem, ContinualImageNetTrainer

    def build() -> Workload:
        batch = sizes.convnet_batch
        problem = ContinualImageNetProblem(
            data_dir=str(data["imagenet32"]),
            n_tasks=reps + 2,
            epochs_per_task=sizes.convnet_steps,
            batch_size=batch,
            train_per_class=batch // 2,
            test_per_class=10,
        )
        cfg = IMAGE_METHODS[method]["convnet"]
        trainer = ContinualImageNetTrainer(
            problem, [RunSpec(method, "d", {}, cfg, k) for k in range(s)], device
        )
        return Workload(
            case="ConvNet (Continual ImageNet)",
            method=method,
            s=s,
            unit="images/s",
            steps_per_call=sizes.convnet_steps,
            work_per_call=float(s * batch * sizes.convnet_steps),
            call=lambda i: _discard(trainer.train_unit(i)),
        )

    return build


def resnet_workload(
    sizes: Sizes, method: str, s: int, device: torch.device, data: dict[str, Path]
) -> Callable[[], Workload]:
    """The incremental CIFAR trainer's training epochs over 5 classes (one mini-batch each)."""
    from lop.experiments.incremental_cifar import IncrementalCifarProblem, IncrementalCifarTrainer

    def build() -> Workload:
        batch = sizes.resnet_batch
        problem = IncrementalCifarProblem(
            data_dir=str(data["cifar100"]),
            batch_size=batch,
            train_per_class=batch // 5,
            val_per_class=2,
            test_per_class=5,
            image_size=sizes.resnet_image,  # type: ignore[arg-type]
            width=sizes.resnet_width,
        )
        cfg = IMAGE_METHODS[method]["resnet"]
        trainer = IncrementalCifarTrainer(
            problem, [RunSpec(method, "d", {}, cfg, k) for k in range(s)], device
        )
        steps = sizes.resnet_steps

        def call(i: int) -> None:
            for j in range(steps):
                trainer._train_epoch(i * steps + j, 5)  # the trainer's own epoch loop (5 classes seen)

        return Workload(
            case=f"ResNet-18 (incremental CIFAR, {sizes.resnet_image}×{sizes.resnet_image}, width {sizes.resnet_width})",
            method=method,
            s=s,
            unit="images/s",
            steps_per_call=steps,
            work_per_call=float(s * batch * steps),
            call=call,
        )

    return build


# ---- goals ---------------------------------------------------------------------------------------
def cifar_images_per_run() -> int:
    """Training images one paper-scale incremental CIFAR run sees (all epochs of all increments)."""
    from lop.experiments.incremental_cifar import IncrementalCifarProblem

    p = IncrementalCifarProblem()
    classes = sum(p.classes_start + k * p.classes_per_increment for k in range(p.n_increments))
    return classes * p.train_per_class * p.epochs_per_increment


def imagenet_images_per_run(n_tasks: int = IMAGENET_GOAL_TASKS) -> int:
    """Training images one paper-scale Continual ImageNet run of `n_tasks` tasks sees."""
    from lop.experiments.continual_imagenet import ContinualImageNetProblem

    p = ContinualImageNetProblem()
    return n_tasks * p.epochs_per_task * p.classes_per_task * p.train_per_class


def goals(rows: Sequence[ThroughputRow]) -> list[tuple[str, str, str, str]]:
    """(goal, measured/extrapolated, target, met) from the best measured throughput rows."""
    out: list[tuple[str, str, str, str]] = []

    def best(prefix: str, method: str | None = None) -> ThroughputRow | None:
        cands = [r for r in rows if r.measured and r.case.startswith(prefix) and method in (None, r.method)]
        return max(cands, key=lambda r: r.rate, default=None)

    r = best("permuted MNIST")
    if r is not None:
        out.append(
            (
                f"{r.case}, seed-steps/s (best S = {r.s})",
                f"{r.rate:,.0f}",
                f"≥ {GOAL_PMNIST_SEED_STEPS:,.0f}",
                "yes" if r.rate >= GOAL_PMNIST_SEED_STEPS else "no",
            )
        )
    for method in ("bp", "cbp"):
        r = best("ConvNet", method)
        if r is not None:
            hours = IMAGENET_GOAL_SEEDS * imagenet_images_per_run() / r.rate / 3600
            out.append(
                (
                    f"Continual ImageNet {method}, {IMAGENET_GOAL_SEEDS} seeds × {IMAGENET_GOAL_TASKS:,} tasks, "
                    f"device-hours (at S = {r.s})",
                    f"{hours:,.1f}",
                    f"≤ {GOAL_IMAGENET_HOURS:g}",
                    "yes" if hours <= GOAL_IMAGENET_HOURS else "no",
                )
            )
    for method in ("bp", "cbp"):
        r = best("ResNet-18", method)
        if r is not None:
            hours = cifar_images_per_run() / r.rate / 3600  # device-hours per run when S runs share it
            out.append(
                (
                    f"incremental CIFAR-100 ResNet-18 {method}, device-hours per run (training steps, S = {r.s})",
                    f"{hours:,.2f}",
                    f"≤ {GOAL_CIFAR_HOURS:g}",
                    "yes" if hours <= GOAL_CIFAR_HOURS else "no",
                )
            )
    return out


# ---- the report ----------------------------------------------------------------------------------
@dataclass
class Report:
    """Everything the check measured, and its markdown."""

    device: str
    tiny: bool
    parity: list[ParityRow] = field(default_factory=list)
    pipeline: list[PipelineRow] = field(default_factory=list)
    throughput: list[ThroughputRow] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # cases that raised (the check goes on without them)
    elapsed_s: float = 0.0
    markdown: str = ""


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def _fmt_counts(counts: list[int] | None) -> str:
    return "–" if counts is None else ",".join(str(c) for c in counts)


def render(report: Report, device: torch.device, opts: Options) -> str:
    """The markdown of a report."""
    lines = [
        f"# Device check — {device_name(device)}",
        "",
        f"{datetime.now(UTC).isoformat(timespec='seconds')}, commit {_git_commit()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads, mode {'tiny' if report.tiny else 'full'}, "
        f"budget {opts.budget_s:g} s, took {report.elapsed_s:.1f} s. "
        f"TF32 (throughput section): matmul {torch.backends.cuda.matmul.allow_tf32}, "
        f"cuDNN {torch.backends.cudnn.allow_tf32}.",
    ]
    if report.tiny:
        lines += ["", "**Tiny sizes: this proves the machinery only; the rates say nothing about a GPU.**"]
    if report.parity:
        n_ok = sum(r.ok for r in report.parity)
        lines += [
            "",
            f"## (a) Parity: {device.type} vs cpu — {n_ok}/{len(report.parity)} pass",
            "",
            "Smoke scales of params/*.yaml (image data: small prepared stand-ins); the device trainer starts "
            "from the CPU trainer's initial state; fp32 with TF32 off. Tolerance per value: "
            "|Δ| ≤ atol + rtol·|cpu| with "
            + "; ".join(f"{k or 'other'}: atol {a:g}, rtol {r:g}" for k, a, r in TOLERANCES)
            + ". CBP replacement counts must be equal per run; no value may be NaN/inf.",
            "",
            "| experiment | method | runs | units | init identical | metrics | worst metric | max abs diff (allowed) "
            "| finite | CBP replaced cpu | CBP replaced device | result |",
            "|---|---|---:|---:|---|---:|---|---:|---|---|---|---|",
        ]
        for r in report.parity:
            lines.append(
                f"| {r.experiment} | {r.method} | {r.runs} | {r.units} | {'yes' if r.init_identical else 'no'} "
                f"| {r.n_metrics} | {r.worst_metric} | {r.worst_diff:.3g} ({r.worst_allowed:.3g}) "
                f"| {'yes' if r.finite else 'no'} | {_fmt_counts(r.replaced_cpu)} | {_fmt_counts(r.replaced_dev)} "
                f"| {'pass' if r.ok else 'FAIL'} |"
            )
    if report.pipeline:
        lines += [
            "",
            f"### The `lop run` path on {device.type}: `run_group` with a checkpoint after every unit",
            "",
            "| experiment | method | runs | metric steps | status | finite | run.json device | wall (s) | result |",
            "|---|---|---:|---:|---|---|---|---:|---|",
        ]
        lines += [
            f"| {r.experiment} | {r.method} | {r.runs} | {r.steps} | {r.statuses} | {'yes' if r.finite else 'no'} "
            f"| {r.device} | {r.wall_s:.1f} | {'pass' if r.ok else 'FAIL'} |"
            for r in report.pipeline
        ]
    if report.throughput:
        mem = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS"
        lines += [
            "",
            f"## (b) Throughput on {device.type}",
            "",
            f"Warm-up call, then {opts.reps} timed calls between device synchronisations. Peak memory: {mem} (MiB).",
            "",
            "| case | method | S | steps/call | ms/step | rate (all runs) | per run | peak memory (MiB) |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in report.throughput:
            if not r.measured:
                lines.append(f"| {r.case} | {r.method} | {r.s} | – | – | {r.note} | – | – |")
                continue
            lines.append(
                f"| {r.case} | {r.method} | {r.s} | {r.steps_per_call} "
                f"| {r.step_ms:.2f} | {r.rate:,.0f} {r.unit} | {r.per_run:,.0f} {r.unit} | {r.peak_mib:,.0f} |"
            )
        prof = [r for r in report.throughput if r.profile]
        if prof:
            lines += [
                "",
                "## (c) Profile: where the time goes (one more call under torch.profiler)",
                "",
                "| case | method | S | profile |",
                "|---|---|---:|---|",
            ]
            lines += [f"| {r.case} | {r.method} | {r.s} | {r.profile} |" for r in prof]
        g = goals(report.throughput)
        if g:
            lines += [
                "",
                "## Goals of issue #16 (extrapolated from the measured rates)",
                "",
                "| goal | measured | target | met |",
                "|---|---:|---:|---|",
            ]
            lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in g]
    if report.skipped:
        lines += ["", "Skipped (budget spent): " + "; ".join(report.skipped)]
    if report.errors:
        lines += ["", "## Errors", ""] + [f"* {e}" for e in report.errors]
    return "\n".join(lines) + "\n"


def run_check(opts: Options) -> Report:
    """Run the sections of `opts` and return the report (with its markdown)."""
    from lop.runner import resolve_device

    device = resolve_device(opts.device)
    tiny = device.type == "cpu" if opts.tiny is None else opts.tiny
    threads = torch.get_num_threads()
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    elif tiny and device.type == "cpu":
        torch.set_num_threads(1)  # tiny problems gain nothing from threads; shared cores lose a lot
    try:
        return _run_sections(opts, device, tiny)
    finally:
        torch.set_num_threads(threads)


def _guarded(label: str, fn: Callable[[], Any], report: Report, device: torch.device) -> Any:
    """`fn()`, or None after recording its exception in `report.errors` (e.g. CUDA out of memory):
    one broken case must not cost the rest of a one-shot device run."""
    try:
        return fn()
    except Exception as e:  # reported under Errors; the exit status is 1
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        report.errors.append(f"{label}: {type(e).__name__}: {first}")
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return None


def _run_sections(opts: Options, device: torch.device, tiny: bool) -> Report:
    """The body of `run_check` (threads already set)."""
    sizes = TINY if tiny else FULL
    budget = Budget(opts.budget_s)
    report = Report(device=str(device), tiny=tiny)
    if device.type == "cuda":
        torch.zeros(1, device=device)  # create the context before any memory statistics are read
        sync(device)

    def log(msg: str) -> None:
        print(f"[gpu_check {budget.elapsed():6.1f}s] {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        need_mnist = not tiny and "mnist" in opts.sections
        data = prepare_data(Path(tmp), need_mnist)
        log(f"data prepared ({', '.join(data)})")
        if "parity" in opts.sections:
            for experiment, methods in PARITY_CASES:
                for method in methods:
                    if budget.spent():
                        report.skipped.append(f"parity {experiment}/{method}")
                        continue
                    row = _guarded(
                        f"parity {experiment}/{method}",
                        lambda e=experiment, m=method: parity_case(
                            e, m, device, data, sizes.parity_max_units, sizes.parity_overrides
                        ),
                        report,
                        device,
                    )
                    if row is not None:
                        report.parity.append(row)
                    log(
                        f"parity {experiment}/{method}: {'error' if row is None else 'pass' if row.ok else 'FAIL'}"
                    )
            for experiment, methods in PARITY_CASES:
                if budget.spent():
                    report.skipped.append(f"pipeline {experiment}/{methods[0]}")
                    continue
                prow = _guarded(
                    f"run_group {experiment}/{methods[0]}",
                    lambda e=experiment, m=methods[0]: pipeline_case(
                        e, m, device, data, Path(tmp) / "runs", sizes.parity_overrides
                    ),
                    report,
                    device,
                )
                if prow is not None:
                    report.pipeline.append(prow)
                log(
                    f"run_group {experiment}/{methods[0]}: {'error' if prow is None else 'pass' if prow.ok else 'FAIL'}"
                )
        builds: list[tuple[str, str, int, Callable[[], Workload]]] = []
        if "mnist" in opts.sections:
            builds += [
                ("permuted MNIST", "bp", s, mnist_workload(sizes, s, device, data, opts.reps))
                for s in sizes.mnist_seeds
            ]
        for method in ("bp", "cbp"):
            if "convnet" in opts.sections:
                builds += [
                    ("ConvNet", method, s, convnet_workload(sizes, method, s, device, data, opts.reps))
                    for s in sizes.convnet_seeds
                ]
        for method in ("bp", "cbp"):
            if "resnet" in opts.sections:
                builds += [
                    ("ResNet-18", method, s, resnet_workload(sizes, method, s, device, data))
                    for s in sizes.resnet_seeds
                ]
        for name, method, s, build in builds:
            if budget.spent():
                report.skipped.append(f"{name} {method} S={s}")
                report.throughput.append(ThroughputRow(name, method, s, unit="", note="skipped (budget)"))
                continue
            row = _guarded(
                f"{name} {method} S={s}",
                lambda b=build: measure(b, device, opts.reps, opts.profile),
                report,
                device,
            )
            if row is None:
                row = ThroughputRow(name, method, s, unit="", note="error (see Errors)")
            report.throughput.append(row)
            log(f"{name} {method} S={s}: {row.rate:,.0f} {row.unit or row.note}")
    report.elapsed_s = budget.elapsed()
    report.markdown = render(report, device, opts)
    return report


def parse_args(argv: Sequence[str] | None = None) -> Options:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, cpu or auto")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", default=None, help="tiny sizes (default on cpu)")
    size.add_argument("--full", dest="tiny", action="store_false", help="full sizes even on cpu")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown to this file")
    ap.add_argument(
        "--budget-s", type=float, default=480.0, help="wall-clock budget; later cases are skipped"
    )
    ap.add_argument("--reps", type=int, default=2, help="timed calls per throughput case")
    ap.add_argument(
        "--sections",
        default="parity,mnist,convnet,resnet",
        help="comma-separated subset of parity,mnist,convnet,resnet",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 in tiny cpu mode, else torch's)",
    )
    ap.add_argument("--no-profile", dest="profile", action="store_false", help="skip section (c)")
    a = ap.parse_args(argv)
    sections = tuple(s for s in a.sections.split(",") if s)
    unknown = set(sections) - {"parity", "mnist", "convnet", "resnet"}
    if unknown:
        ap.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if a.reps < 1:
        ap.error("--reps must be >= 1")
    return Options(
        device=a.device,
        tiny=a.tiny,
        out=a.out,
        budget_s=a.budget_s,
        reps=a.reps,
        sections=sections,
        threads=a.threads,
        profile=a.profile,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; exit status 1 when a parity or pipeline row fails or a case raised."""
    opts = parse_args(argv)
    keep_freed_memory()  # as `lop run` does (lop.allocator)
    report = run_check(opts)
    print(report.markdown)
    if opts.out is not None:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(report.markdown)
    ok = all(r.ok for r in [*report.parity, *report.pipeline]) and not report.errors
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
