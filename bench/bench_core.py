"""Throughput of the online experiments (SCR and permuted MNIST), printed as markdown tables.

    python bench/bench_core.py              # SCR + permuted MNIST tables
    python bench/bench_core.py --grid       # also: estimated time of the full ReLU grid of ED Fig. 2
    python bench/bench_core.py --device cuda

seed-steps/s = runs × online steps per second of wall time; "per CPU-s" divides by the process's CPU
time instead (robust when other processes share the cores). No assertions: this only measures.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from lop.allocator import keep_freed_memory
from lop.config import CBPConfig, MethodConfig
from lop.experiments.base import RunSpec
from lop.experiments.permuted_mnist import PermutedMNISTProblem, PermutedMNISTTrainer
from lop.experiments.scr import SCRProblem, SCRTrainer

SCR_METHODS = {
    "bp": MethodConfig(lr=0.01),
    "cbp": MethodConfig(lr=0.01, cbp=CBPConfig(replacement_rate=1e-4, utility="adaptable_contribution")),
}
# The complete ReLU grid of Extended Data Fig. 2: (runs per packed job, method config)
GRID = {
    "bp (3 lr)": (300, MethodConfig(lr=0.01)),
    "bp_adam (3 lr)": (300, MethodConfig(optimizer="adam", lr=0.01)),
    "linear (3 lr)": (300, MethodConfig(lr=0.01, arch="linear")),
    "l2 (6 wd)": (600, MethodConfig(lr=0.01, weight_decay=1e-3)),
    "snp (6 noise)": (600, MethodConfig(lr=0.01, weight_decay=1e-2, noise_std=1e-3)),
    "cbp (5 rates)": (500, SCR_METHODS["cbp"].__class__(lr=0.01, cbp=CBPConfig(replacement_rate=1e-3))),
}


def _timed(fn) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def bench_scr(n_runs: int, cfg: MethodConfig, steps: int, device: torch.device) -> tuple[float, float]:
    problem = SCRProblem(n_examples=2 * steps, bin_size=steps, chunk=steps)
    trainer = SCRTrainer(problem, [RunSpec("m", "s", {}, cfg, s) for s in range(n_runs)], device)
    trainer.train_unit(0)  # warm-up (allocations, first chunk)
    wall, cpu = _timed(lambda: trainer.train_unit(1))
    return n_runs * steps / wall, n_runs * steps / cpu


def bench_mnist(
    n_runs: int, width: int, cfg: MethodConfig, steps: int, device: torch.device
) -> tuple[float, float]:
    problem = PermutedMNISTProblem(
        dataset="digits", n_examples=steps, width=width, n_tasks=2, probe_every=0, chunk=min(steps, 1000)
    )
    trainer = PermutedMNISTTrainer(problem, [RunSpec("m", "s", {}, cfg, s) for s in range(n_runs)], device)
    trainer.train_unit(0)
    wall, cpu = _timed(lambda: trainer.train_unit(1))
    return n_runs * steps / wall, n_runs * steps / cpu


def main() -> None:
    keep_freed_memory()  # as `lop run` does (lop.allocator)
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--grid", action="store_true", help="estimate the full ReLU grid of ED Fig. 2")
    ap.add_argument("--steps", type=int, default=10_000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, device {device}, threads {args.threads}, load {os.getloadavg()[0]:.1f}\n"
    )
    print("| problem | method | runs S | seed-steps/s (wall) | seed-steps per CPU-s |")
    print("|---|---|---:|---:|---:|")
    for name, cfg in SCR_METHODS.items():
        for s in (1, 100, 1000):
            wall, cpu = bench_scr(s, cfg, args.steps, device)
            print(f"| SCR 20-5-1 | {name} | {s} | {wall:,.0f} | {cpu:,.0f} |", flush=True)
    for name, cfg in SCR_METHODS.items():
        for width in (100, 2000):
            for s in (1, 8):
                steps = 200 if width == 2000 else min(args.steps, 1797)
                wall, cpu = bench_mnist(s, width, cfg, steps, device)
                print(
                    f"| permuted digits 64-{width}×3-10 | {name} | {s} | {wall:,.0f} | {cpu:,.0f} |",
                    flush=True,
                )
    if args.grid:
        print(
            "\nFull ReLU grid of Extended Data Fig. 2 (26 settings × 100 seeds × 1M steps), one packed job per method:\n"
        )
        print("| job | runs | CPU-minutes (estimated) |")
        print("|---|---:|---:|")
        total = 0.0
        for name, (n, cfg) in GRID.items():
            _, cpu_rate = bench_scr(n, cfg, args.steps, device)
            minutes = n * 1_000_000 / cpu_rate / 60
            total += minutes
            print(f"| {name} | {n} | {minutes:.1f} |", flush=True)
        print(f"| **total** | 2600 | **{total:.1f}** (≈{total / 2:.1f} min wall on 2 cores) |")


if __name__ == "__main__":
    main()
