"""Whole-run PPO throughput (docs/protocols/ppo.md): env steps per second per CPU core, simulation + updates.

Trains `PPOTrainer` (the ``ppo_ant`` experiment's trainer, paper PPO settings) for a few updates at
batch sizes S and prints a markdown table plus a profile of where the CPU time goes:

* simulation — `BatchedEnvs.step_into` (MuJoCo + the Ant step's reward/observation code + auto-reset);
* acting — the rest of the rollout loop (policy forward per step, buffers);
* update — `PPOLearner.update` (GAE, 10 epochs of minibatch forward/backward/Adam, CBP);
* rest — metrics, episode bookkeeping, internals.

``steps/CPU-s`` divides by this process's CPU time (one core's throughput even when other processes
share the machine); ``steps/s`` is wall clock. The reference implementation needs ~24 CPU-hours per
50M-step run, i.e. ~580 steps/s per core.

    python bench/bench_ppo.py --updates 3 --sizes 1 8 --method standard
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

from lop.allocator import keep_freed_memory
from lop.config import CBPConfig, MethodConfig
from lop.envs import BatchedEnvs
from lop.experiments.base import RunSpec
from lop.experiments.ppo import AntProblem, PPOTrainer
from lop.rl import ppo as ppo_module

REFERENCE_STEPS_PER_S = 50_000_000 / (24 * 3600)  # ~580 steps/s per core

METHODS: dict[str, MethodConfig] = {
    "standard": MethodConfig(optimizer="adam", lr=1e-4, betas=(0.9, 0.999)),
    "cbp_l2": MethodConfig(
        optimizer="adam",
        lr=1e-4,
        betas=(0.99, 0.99),
        weight_decay=1e-4,
        cbp=CBPConfig(replacement_rate=1e-4, maturity=100, decay=0.99, utility="contribution"),
    ),
}


class Clock:
    """Accumulated CPU seconds of wrapped callables."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            c0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c0

        return timed


def bench(env: str, s: int, updates: int, method: str) -> dict[str, float]:
    """Train `updates` PPO updates of S runs; wall/CPU seconds and the CPU profile."""
    problem = AntProblem(env=env, total_steps=updates * 2048)
    runs = [RunSpec(method, "default", {}, METHODS[method], seed) for seed in range(s)]
    trainer = PPOTrainer(problem, runs, torch.device("cpu"))
    clock = Clock()
    orig_step, orig_collect, orig_update = (
        BatchedEnvs.step_into,
        ppo_module.collect_rollout,
        trainer.learner.update,
    )
    BatchedEnvs.step_into = clock.wrap("simulation", orig_step)  # type: ignore[method-assign]
    ppo_module.collect_rollout = clock.wrap("rollout", orig_collect)
    trainer.learner.update = clock.wrap("update", orig_update)  # type: ignore[method-assign]
    import lop.experiments.ppo as exp_module

    exp_module.collect_rollout = ppo_module.collect_rollout
    try:
        w0, c0 = time.perf_counter(), time.process_time()
        for u in range(updates):
            trainer.train_unit(u)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    finally:
        BatchedEnvs.step_into = orig_step  # type: ignore[method-assign]
        ppo_module.collect_rollout = orig_collect
        exp_module.collect_rollout = orig_collect
    sim = clock.cpu.get("simulation", 0.0)
    roll = clock.cpu.get("rollout", 0.0)
    upd = clock.cpu.get("update", 0.0)
    return {
        "steps": float(updates * 2048 * s),
        "wall": wall,
        "cpu": cpu,
        "simulation": sim,
        "acting": roll - sim,
        "update": upd,
        "rest": cpu - roll - upd,
    }


def main() -> None:
    keep_freed_memory()  # as `lop run` does (lop.allocator)
    p = argparse.ArgumentParser(description="PPO env steps/s per core, simulation + updates")
    p.add_argument("--env", default="ant")
    p.add_argument("--updates", type=int, default=3, help="PPO updates (2,048 steps per run each)")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 8], help="batch sizes S")
    p.add_argument("--method", default="standard", choices=sorted(METHODS))
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.machine()} {platform.platform()}; torch {torch.__version__}, "
        f"{args.threads} thread(s); env {args.env}, method {args.method}, {args.updates} updates of 2,048 "
        "steps per run (first update included)\n"
    )
    print(
        "| S | env steps | wall s | CPU s | steps/s (wall) | steps/CPU-s (per core) | × reference (580/s) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    profiles = []
    for s in args.sizes:
        r = bench(args.env, s, args.updates, args.method)
        per_core = r["steps"] / r["cpu"]
        print(
            f"| {s} | {r['steps']:,.0f} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['steps'] / r['wall']:,.0f} | "
            f"{per_core:,.0f} | {per_core / REFERENCE_STEPS_PER_S:.1f} |"
        )
        profiles.append((s, r))
    print("\nWhere the CPU time goes (% of CPU s; µs per env step in parentheses):\n")
    print("| S | simulation | acting | update | rest |")
    print("|---:|---:|---:|---:|---:|")
    for s, r in profiles:
        cells = [
            f"{100 * r[k] / r['cpu']:.0f}% ({1e6 * r[k] / r['steps']:.0f})"
            for k in ("simulation", "acting", "update", "rest")
        ]
        print(f"| {s} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
