"""CPU cost of a scale's training jobs (the demo budget of docs/benchmarks.md), one `lop run` per job.

Runs every job of the given experiments at one scale exactly as the pipeline would (`lop run --params
... --scale ... --method ... --setting-id ... --seeds ...`, one torch thread, under `nice`) into a
scratch folder, and measures each child's CPU time (user + system, `resource.getrusage(RUSAGE_CHILDREN)`
before/after) and wall time. Prints a markdown table per job and per experiment, plus the total.

CPU time is the figure to trust on a shared machine; on 2 idle cores with the pipeline's two jobs at a time,
the wall time of the whole demo is about total CPU / 2 (longest job first).

    python bench/bench_demo_budget.py --scale demo --experiments scr permuted_mnist --out /tmp/demo-runs
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

from lop.params import expand_jobs, load_params


def cpu_of_children() -> float:
    """User + system CPU seconds of every finished child so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="demo")
    ap.add_argument("--experiments", nargs="+", required=True)
    ap.add_argument("--methods", nargs="*", default=None, help="only these methods (default: all)")
    ap.add_argument("--out", required=True, help="scratch runs root (<out>/<experiment>/<scale>)")
    ap.add_argument("--nice", type=int, default=10)
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    rows: list[tuple[str, str, int, float, float]] = []
    for exp in args.experiments:
        path = Path("params") / f"{exp}.yaml"
        params = load_params(path)
        for job in expand_jobs(params, args.scale):
            if args.methods and job.method not in args.methods:
                continue
            out = Path(args.out) / exp / args.scale
            cmd = [
                "nice",
                "-n",
                str(args.nice),
                sys.executable,
                "-m",
                "lop.cli",
                "run",
                "--params",
                str(path),
                "--scale",
                args.scale,
                *job.cli_args,
                "--out",
                str(out),
                "--threads",
                "1",
                "--no-progress",
            ]
            before, t0 = cpu_of_children(), time.perf_counter()
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            cpu, wall = cpu_of_children() - before, time.perf_counter() - t0
            if done.returncode != 0:
                print(f"FAILED: {shlex.join(cmd)}\n{done.stderr[-2000:]}", file=sys.stderr)
                sys.exit(1)
            rows.append((exp, job.job_id, len(job.outputs), cpu, wall))
            print(
                f"| {exp} | {job.job_id} | {len(job.outputs)} | {cpu / 60:.2f} | {wall / 60:.2f} |",
                flush=True,
            )
    print(
        "\n| experiment | jobs | runs | CPU-minutes | wall-minutes (this machine) |\n|---|---:|---:|---:|---:|"
    )
    for exp in args.experiments:
        mine = [r for r in rows if r[0] == exp]
        print(
            f"| {exp} | {len(mine)} | {sum(r[2] for r in mine)} | {sum(r[3] for r in mine) / 60:.2f} "
            f"| {sum(r[4] for r in mine) / 60:.2f} |"
        )
    total = sum(r[3] for r in rows) / 60
    print(
        f"| **total** | {len(rows)} | {sum(r[2] for r in rows)} | **{total:.2f}** | "
        f"{sum(r[4] for r in rows) / 60:.2f} |"
    )
    print(f"\nwall on 2 idle cores, two jobs at a time: about {total / 2:.1f} minutes")


if __name__ == "__main__":
    main()
