"""Environment throughput (docs/protocols/ppo.md): env steps per second per core with random actions.

Prints a markdown table. ``steps/CPU-s`` divides by this process's CPU time, so it estimates one
core's throughput even when other processes share the machine; ``steps/s`` is wall clock.

    python bench/bench_envs.py --env ant --steps 2000 --sizes 1 8
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np
import torch

from lop.envs import BatchedEnvs
from lop.rng import RunStreams

Result = tuple[float, float, int]  # wall s, CPU s, completed episodes


def _time(fn: Callable[[], None]) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def bench_raw_gymnasium(steps: int) -> Result:
    """Gymnasium's unwrapped Ant-v5 alone: the floor under this layer's overhead."""
    from gymnasium.envs.mujoco.ant_v5 import AntEnv

    env = AntEnv()
    env.reset(seed=0)
    acts = RunStreams([0]).uniform("bench/actions", 0, (steps, 8), -1.0, 1.0)[0].numpy()
    episodes = 0

    def run() -> None:
        nonlocal episodes
        for t in range(steps):
            if env.step(acts[t])[2]:
                episodes += 1
                env.reset(seed=t)

    wall, cpu = _time(run)
    return wall, cpu, episodes


def bench_batched(name: str, seeds: list[int], steps: int) -> Result:
    """`BatchedEnvs` with per-run random actions (auto-reset, episode tracking included)."""
    envs = BatchedEnvs(name, seeds)
    envs.reset()
    acts = RunStreams(seeds).uniform("bench/actions", 0, (steps, envs.act_dim), -1.0, 1.0)
    acts = acts.transpose(0, 1).contiguous()

    def run() -> None:
        for t in range(steps):
            envs.step(acts[t])

    wall, cpu = _time(run)
    return wall, cpu, len(envs.pop_episodes())


def main() -> None:
    p = argparse.ArgumentParser(description="environment steps/s per core, random actions")
    p.add_argument("--env", default="ant")
    p.add_argument("--steps", type=int, default=2000, help="steps per run")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 8], help="batch sizes S")
    p.add_argument("--repeats", type=int, default=2, help="best of this many repeats (by CPU time)")
    args = p.parse_args()
    torch.set_num_threads(1)

    cases: list[tuple[str, int, Callable[[], Result]]] = []
    if args.env in ("ant", "slippery_ant"):
        cases.append(("gymnasium Ant-v5, unwrapped", 1, lambda: bench_raw_gymnasium(args.steps)))
    for s in args.sizes:
        cases.append(
            (f"BatchedEnvs {args.env}", s, lambda s=s: bench_batched(args.env, list(range(s)), args.steps))
        )

    rows = []
    for label, s, fn in cases:
        wall, cpu, episodes = min((fn() for _ in range(args.repeats)), key=lambda r: r[1])
        n = s * args.steps
        rows.append((label, s, n, episodes, wall, cpu, n / wall, n / cpu, 1e6 * cpu / n))

    print(
        f"machine: {platform.machine()} {platform.processor() or platform.platform()}; "
        f"torch {torch.__version__}, numpy {np.__version__}; best of {args.repeats} by CPU time\n"
    )
    print(
        "| case | S | env steps | episodes | wall s | CPU s | steps/s (wall) | steps/CPU-s (per core) | µs/step (CPU) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, s, n, ep, wall, cpu, sps, spc, us in rows:
        print(f"| {label} | {s} | {n} | {ep} | {wall:.2f} | {cpu:.2f} | {sps:,.0f} | {spc:,.0f} | {us:.0f} |")


if __name__ == "__main__":
    main()
