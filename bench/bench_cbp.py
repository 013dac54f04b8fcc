"""Cost of continual backpropagation against plain backprop (issue #20), printed as a markdown table.

Permuted-MNIST shape (784-2000×3-10, ReLU, SGD, batch 1, online), through `OnlineMLPLearner.step`
with random inputs, so only the update is timed (no data pipeline). For S = 1, 4, 10 runs batched:

* seed-steps per wall-second and per CPU-second (process time, all threads), best of `--repeats`
  alternating BP/CBP measurements (on a shared machine the least disturbed one);
* user and system CPU time per step (system time is where page faults of fresh large temporaries go);
* CBP/BP cost ratio per seed-step (CPU time);
* the memory-traffic bound: measured copy bandwidth of this machine (before and after the table, the
  larger used) divided by an estimate of the bytes a step must move (`mlp_bytes_per_step`), and each
  row's fraction of it (CPU-second rate against the bound).

`--profile-seeds S` adds a `torch.profiler` table of a CBP step at S runs: the top operators by self CPU
time, each with its share of the step.

ConvNet (Continual ImageNet, batch 100 of 32×32 images) and ResNet-18 (incremental CIFAR, batch 90,
`--resnet-width`) rows time `MinibatchLearner.step` (forward, backward, SGD with momentum, CBP) on
random images, BP against CBP with the experiments' CBP settings (`--nets mlp,convnet,resnet`).

    PYTHONPATH=$PWD python bench/bench_cbp.py [--seeds 1,4,10] [--seconds 3] [--width 2000] [--repeats 2]
        [--profile-seeds 10] [--nets mlp,convnet,resnet]

No assertions: this only measures. On a shared machine, CPU-second rates are the robust column.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import time

import torch

from lop.algos.online import OnlineMLPLearner
from lop.allocator import keep_freed_memory
from lop.config import CBPConfig, MethodConfig
from lop.nets.mlp import BatchedMLP
from lop.rng import RunStreams

METHODS = {
    "bp": MethodConfig(lr=0.003),
    "cbp": MethodConfig(
        lr=0.003,
        cbp=CBPConfig(replacement_rate=1e-4, maturity=100, decay=0.99, utility="adaptable_contribution"),
    ),
}


def mlp_bytes_per_step(sizes: list[int], n_runs: int, method: str = "bp", dtype_bytes: int = 4) -> int:
    """Lower-bound estimate of the bytes one online step (batch 1) moves through memory.

    Per weight matrix W (``[S, out, in]``), plain SGD: read in the forward pass, read again for the
    backward product (except the first layer, whose input gradient is not needed), gradient outer
    product written, then SGD reads W and the gradient and writes W: 1 + 1 + 1 + 3 = 6 passes (5 for the
    first layer). CBP reads every weight next to a hidden layer once more (`lop.algos.cbp.abs_stats`:
    column sums of |W| and row means of |W| from the same read): 7 and 6 passes. Activations and biases
    are negligible at width 2000.
    """
    total = 0
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        passes = (5 if layer == 0 else 6) + (1 if method == "cbp" else 0)
        total += passes * fan_in * fan_out
    return total * n_runs * dtype_bytes


def copy_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """Bytes per second of a large tensor copy (read + write counted), best of `repeats`."""
    a = torch.ones(mib * 2**20 // 4)
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        b.copy_(a)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.numel() * 4 / best


def make_learner(method: str, n_runs: int, width: int) -> tuple[OnlineMLPLearner, torch.Tensor, torch.Tensor]:
    """A permuted-MNIST-shaped learner after 3 warm-up steps, and 64 random examples per run."""
    streams = RunStreams(list(range(n_runs)))
    sizes = [784, width, width, width, 10]
    net = BatchedMLP(sizes, "relu", streams)
    learner = OnlineMLPLearner(net, [METHODS[method]] * n_runs, streams, "cross_entropy")
    gen = torch.Generator().manual_seed(0)
    xs = torch.rand(64, n_runs, 1, 784, generator=gen)
    ys = torch.randint(0, 10, (64, n_runs, 1), generator=gen)
    for t in range(3):  # warm-up: allocator, first replacement bookkeeping
        learner.step(t, xs[t % 64], ys[t % 64])
    return learner, xs, ys


def bench(method: str, n_runs: int, width: int, seconds: float) -> dict[str, float]:
    learner, xs, ys = make_learner(method, n_runs, width)
    steps = 0
    t0, c0, w0 = os.times(), time.process_time(), time.perf_counter()
    while time.perf_counter() - w0 < seconds or steps < 3:
        learner.step(3 + steps, xs[steps % 64], ys[steps % 64])
        steps += 1
    wall, cpu, t1 = time.perf_counter() - w0, time.process_time() - c0, os.times()
    return {
        "steps": steps,
        "wall": n_runs * steps / wall,
        "cpu": n_runs * steps / cpu,
        "user_ms": 1e3 * (t1.user - t0.user) / steps,
        "sys_ms": 1e3 * (t1.system - t0.system) / steps,
    }


IMAGE_METHODS = {
    "convnet": {
        "bp": MethodConfig(lr=0.01, momentum=0.9),
        "cbp": MethodConfig(
            lr=0.01,
            momentum=0.9,
            cbp=CBPConfig(replacement_rate=3e-4, maturity=100, utility="adaptable_contribution"),
        ),
    },
    "resnet": {
        "bp": MethodConfig(lr=0.1, momentum=0.9, weight_decay=5e-4),
        "cbp": MethodConfig(
            lr=0.1,
            momentum=0.9,
            weight_decay=5e-4,
            cbp=CBPConfig(replacement_rate=1e-5, maturity=1000, utility="contribution"),
        ),
    },
}


def bench_image(
    net_name: str, method: str, n_runs: int, seconds: float, resnet_width: int
) -> dict[str, float]:
    """Seed-steps per wall/CPU second of `MinibatchLearner.step` on random images."""
    from lop.nets.convnet import ConvNet
    from lop.nets.resnet import ResNet18
    from lop.problems.image_tasks import MinibatchLearner

    streams = RunStreams(list(range(n_runs)))
    if net_name == "convnet":
        net, batch, n_out = ConvNet(streams, 2), 100, 2
    else:
        net, batch, n_out = ResNet18(streams, 100, width=resnet_width), 90, 100
    learner = MinibatchLearner(net, [IMAGE_METHODS[net_name][method]] * n_runs, streams, net.unit_layers())
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n_runs, batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, n_out, (n_runs, batch), generator=gen)
    learner.step(0, x, y)  # warm-up
    steps = 0
    t0, c0, w0 = os.times(), time.process_time(), time.perf_counter()
    while time.perf_counter() - w0 < seconds or steps < 2:
        learner.step(1 + steps, x, y)
        steps += 1
    wall, cpu, t1 = time.perf_counter() - w0, time.process_time() - c0, os.times()
    return {
        "wall": n_runs * steps / wall,
        "cpu": n_runs * steps / cpu,
        "user_ms": 1e3 * (t1.user - t0.user) / steps,
        "sys_ms": 1e3 * (t1.system - t0.system) / steps,
    }


def profile_cbp(n_runs: int, width: int, steps: int, top: int = 12) -> None:
    """Print the top operators of CBP steps by self CPU time, with their share of the step."""
    from torch.profiler import ProfilerActivity, profile

    learner, xs, ys = make_learner("cbp", n_runs, width)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for t in range(steps):
            learner.step(3 + t, xs[t % 64], ys[t % 64])
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    print("| operator | share of the step | ms per step | calls per step |")
    print("|---|---:|---:|---:|")
    for e in rows[:top]:
        print(
            f"| `{e.key}` | {e.self_cpu_time_total / total:.1%} | {e.self_cpu_time_total / 1e3 / steps:.1f} "
            f"| {e.count / steps:.0f} |"
        )
    print(f"| all | 100 % | {total / 1e3 / steps:.1f} | |")


def main() -> None:
    keep_freed_memory()  # as `lop run` does (lop.allocator)
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", default="1,4,10")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per row")
    ap.add_argument("--width", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--nets", default="mlp", help="comma list of mlp, convnet, resnet")
    ap.add_argument("--image-seeds", default="1,4")
    ap.add_argument("--resnet-width", type=int, default=64)
    ap.add_argument(
        "--bandwidth",
        type=float,
        default=0.0,
        help="copy bandwidth in GB/s for the bound (default: measured now, which other load lowers)",
    )
    ap.add_argument("--repeats", type=int, default=2, help="alternating measurements per MLP row (best kept)")
    ap.add_argument("--profile-seeds", type=int, default=10, help="S of the CBP profile (0: none)")
    ap.add_argument("--profile-steps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bw = copy_bandwidth()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, threads {args.threads}, load {os.getloadavg()[0]:.1f}, "
        f"copy bandwidth {bw / 1e9:.1f} GB/s\n"
    )
    nets = args.nets.split(",")
    if "mlp" in nets:
        sizes = [784, args.width, args.width, args.width, 10]
        seeds = [int(v) for v in args.seeds.split(",")]
        results = {}
        for s in seeds:
            for _ in range(args.repeats):  # alternate, keep the best CPU rate of each
                for m in METHODS:
                    r = bench(m, s, args.width, args.seconds)
                    if (s, m) not in results or r["cpu"] > results[s, m]["cpu"]:
                        results[s, m] = r
        bw = max(bw, copy_bandwidth())
        print(f"copy bandwidth after the table: {bw / 1e9:.1f} GB/s (the larger of the two measured)")
        if args.bandwidth > 0:
            bw = args.bandwidth * 1e9
        print(f"bound computed with {bw / 1e9:.1f} GB/s\n")
        print(
            "| width | S | method | seed-steps/s (wall) | seed-steps per CPU-s | user ms/step | sys ms/step "
            "| sys/user | CBP/BP cost | MB per seed-step | bound seed-steps/s | fraction of bound |"
        )
        print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for s in seeds:
            for m in METHODS:
                r, per_seed = results[s, m], mlp_bytes_per_step(sizes, 1, m)
                bound = bw / per_seed
                print(
                    f"| {args.width} | {s} | {m} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['user_ms']:.1f} "
                    f"| {r['sys_ms']:.1f} | {r['sys_ms'] / max(r['user_ms'], 1e-9):.0%} "
                    f"| {results[s, 'bp']['cpu'] / r['cpu']:.2f} | {per_seed / 1e6:.0f} | {bound:.1f} "
                    f"| {r['cpu'] / bound:.0%} |",
                    flush=True,
                )
    if args.profile_seeds > 0:
        print(
            f"\nProfile of a CBP step, S = {args.profile_seeds} (torch.profiler, {args.profile_steps} steps):\n"
        )
        profile_cbp(args.profile_seeds, args.width, args.profile_steps)
    image_nets = [n for n in nets if n in IMAGE_METHODS]
    if image_nets:
        print(
            "\n| net | S | method | seed-steps/s (wall) | seed-steps per CPU-s | user ms/step | sys ms/step "
            "| CBP/BP cost |"
        )
        print("|---|---:|---|---:|---:|---:|---:|---:|")
    for net_name in image_nets:
        label = net_name if net_name == "convnet" else f"resnet18 (width {args.resnet_width})"
        for s in (int(v) for v in args.image_seeds.split(",")):
            rows = {m: bench_image(net_name, m, s, args.seconds, args.resnet_width) for m in ("bp", "cbp")}
            for m, r in rows.items():
                print(
                    f"| {label} | {s} | {m} | {r['wall']:.2f} | {r['cpu']:.2f} | {r['user_ms']:.0f} "
                    f"| {r['sys_ms']:.0f} | {rows['bp']['cpu'] / r['cpu']:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
