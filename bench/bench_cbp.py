"""Cost of continual backpropagation against plain backprop (issue #20), printed as a markdown table.

Permuted-MNIST shape (784-2000×3-10, ReLU, SGD, batch 1, online), through `OnlineMLPLearner.step`
with random inputs, so only the update is timed (no data pipeline). For S = 1, 4, 10 runs batched:

* seed-steps per wall-second and per CPU-second (process time, all threads);
* user and system CPU time per step (system time is where page faults of fresh large temporaries go);
* CBP/BP cost ratio per seed-step (CPU time);
* the memory-traffic bound: measured copy bandwidth of this machine divided by an estimate of the bytes a
  BP step must move (`mlp_bytes_per_step`), and each BP row's fraction of it.

ConvNet (Continual ImageNet, batch 100 of 32×32 images) and ResNet-18 (incremental CIFAR, batch 90,
`--resnet-width`) rows time `MinibatchLearner.step` (forward, backward, SGD with momentum, CBP) on
random images, BP against CBP with the experiments' CBP settings (`--nets mlp,convnet,resnet`).

    PYTHONPATH=$PWD python bench/bench_cbp.py [--seeds 1,4,10] [--seconds 3] [--width 2000]

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


def mlp_bytes_per_step(sizes: list[int], n_runs: int, dtype_bytes: int = 4) -> int:
    """Lower-bound estimate of the bytes one plain SGD step (batch 1) moves through memory.

    Per weight matrix W (``[S, out, in]``): read in the forward pass, read again for the backward
    product (except the first layer, whose input gradient is not needed), gradient outer product written,
    then SGD reads W and the gradient and writes W: 1 + 1 + 1 + 3 = 6 passes (5 for the first layer).
    Activations and biases are negligible at width 2000.
    """
    total = 0
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        passes = 5 if layer == 0 else 6
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


def bench(method: str, n_runs: int, width: int, seconds: float) -> dict[str, float]:
    streams = RunStreams(list(range(n_runs)))
    sizes = [784, width, width, width, 10]
    net = BatchedMLP(sizes, "relu", streams)
    learner = OnlineMLPLearner(net, [METHODS[method]] * n_runs, streams, "cross_entropy")
    gen = torch.Generator().manual_seed(0)
    xs = torch.rand(64, n_runs, 1, 784, generator=gen)
    ys = torch.randint(0, 10, (64, n_runs, 1), generator=gen)
    for t in range(3):  # warm-up: allocator, first replacement bookkeeping
        learner.step(t, xs[t % 64], ys[t % 64])
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
        "bound": 0.0,
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
        print(
            "| width | S | method | seed-steps/s (wall) | seed-steps per CPU-s | user ms/step | sys ms/step "
            "| CBP/BP cost | bound seed-steps/s | fraction of bound |"
        )
        print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for s in (int(v) for v in args.seeds.split(",")):
            bound = bw / mlp_bytes_per_step(sizes, s) * s
            rows = {m: bench(m, s, args.width, args.seconds) for m in METHODS}
            for m, r in rows.items():
                print(
                    f"| {args.width} | {s} | {m} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['user_ms']:.1f} "
                    f"| {r['sys_ms']:.1f} | {rows['bp']['cpu'] / r['cpu']:.2f} | {bound:.1f} "
                    f"| {r['wall'] / bound:.0%} |",
                    flush=True,
                )
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
