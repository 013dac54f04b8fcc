"""Throughput of the seed-batched image networks: images/s for forward + backward + SGD step.

ConvNet of Continual ImageNet (docs/protocols/continual_imagenet.md, batch 100 per run) at S = 1, 8, 30 runs, five designs:

* ``grouped-cl``  — library default: grouped conv (groups=S) on channels-last activations;
* ``grouped``     — the same on contiguous NCHW activations (``ConvNet(channels_last=False)``);
* ``vmap``        — ``torch.func.vmap`` of a single-run functional ConvNet over the run axis;
* ``loop``        — a Python loop over runs of the single-run network (baseline), NCHW;
* ``loop-cl``     — the same loop on channels-last images.

ResNet-18 (docs/protocols/incremental_cifar.md, batch 90, S = 1), channels-last and NCHW. "images/s" counts all runs'
images (S × batch per step). Timings interleave the designs and report the best and the median
wall-clock rate of the timed steps, and images per second of this process's CPU time (all threads),
which is less sensitive to other processes sharing the CPU. Runs on CUDA too when it is available.

    python bench/bench_image_nets.py [--reps 2] [--sizes 1 8 30] [--device cpu] [--threads N]
                                     [--designs grouped-cl loop-cl] [--skip-resnet]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lop.allocator import keep_freed_memory
from lop.nets.convnet import ConvNet
from lop.nets.resnet import ResNet18
from lop.rng import RunStreams

LR = 0.01


def _single_forward(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """One run's ConvNet with plain torch ops (weights without the run axis), for vmap/loop."""
    h = x
    for name in ("conv1", "conv2", "conv3"):
        h = torch.relu(F.max_pool2d(F.conv2d(h, p[f"{name}.weight"], p[f"{name}.bias"]), 2))
    h = h.flatten(1)
    h = torch.relu(F.linear(h, p["fc1.weight"], p["fc1.bias"]))
    h = torch.relu(F.linear(h, p["fc2.weight"], p["fc2.bias"]))
    return F.linear(h, p["fc3.weight"], p["fc3.bias"])


def forward_vmap(net: ConvNet, x: torch.Tensor) -> torch.Tensor:
    return torch.func.vmap(_single_forward)(net.params, x)


def forward_loop(net: ConvNet, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    outs = [
        _single_forward({k: v[s] for k, v in net.params.items()}, x[s].contiguous(memory_format=fmt))
        for s in range(net.n_runs)
    ]
    return torch.stack(outs)


def _sgd_step(params: list[torch.Tensor], loss: torch.Tensor) -> None:
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        torch._foreach_add_(params, grads, alpha=-LR)


def _make_step(
    forward: Callable[[torch.Tensor], torch.Tensor],
    params: list[torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
) -> Callable[[], None]:
    s, b = y.shape

    def step() -> None:
        logits = forward(x)
        loss = F.cross_entropy(logits.reshape(s * b, -1), y.reshape(-1), reduction="sum") / b
        _sgd_step(params, loss)

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


Timing = tuple[list[float], list[float]]  # (wall seconds, process CPU seconds) per timed step


SLOW_STEP_S = 5.0  # a design whose warm-up step takes longer is not run again: that step is its timing


def _time_designs(steps: dict[str, Callable[[], None]], reps: int, device: torch.device) -> dict[str, Timing]:
    """Seconds per step of each design; designs interleaved after one warm-up step each.

    A slow design (warm-up step > SLOW_STEP_S) reports its warm-up step instead, whose one-off setup
    costs (kernel selection, allocation) are then negligible; this keeps the whole bench short.
    """
    times: dict[str, Timing] = {name: ([], []) for name in steps}
    slow: set[str] = set()
    for name, step in steps.items():
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        _sync(device)
        if time.perf_counter() - t0 > SLOW_STEP_S:
            slow.add(name)
            times[name][0].append(time.perf_counter() - t0)
            times[name][1].append(time.process_time() - c0)
    for _ in range(reps):
        for name, step in steps.items():
            if name in slow:
                continue
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            _sync(device)
            times[name][0].append(time.perf_counter() - t0)
            times[name][1].append(time.process_time() - c0)
    return times


def _rates(n_img: int, times: dict[str, Timing]) -> list[tuple[str, float, float, float]]:
    """(design, images/s best wall, images/s median wall, images per CPU-second best)."""
    return [(k, n_img / min(w), n_img / statistics.median(w), n_img / min(c)) for k, (w, c) in times.items()]


def bench_convnet(
    n_runs: int, batch: int, reps: int, device: torch.device, designs: list[str] | None = None
) -> list[tuple[str, float, float, float]]:
    streams = RunStreams(range(n_runs), device)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(n_runs, batch, 3, 32, 32, generator=g, device=device)
    y = torch.randint(0, 2, (n_runs, batch), generator=g, device=device)
    nets = {
        "grouped-cl": ConvNet(streams, channels_last=True),
        "grouped": ConvNet(streams, channels_last=False),
        "vmap": ConvNet(streams),
        "loop": ConvNet(streams),
        "loop-cl": ConvNet(streams),
    }
    fwd = {
        "grouped-cl": nets["grouped-cl"].forward,
        "grouped": nets["grouped"].forward,
        "vmap": lambda t: forward_vmap(nets["vmap"], t),
        "loop": lambda t: forward_loop(nets["loop"], t),
        "loop-cl": lambda t: forward_loop(nets["loop-cl"], t, channels_last=True),
    }
    steps = {k: _make_step(fwd[k], nets[k].parameters(), x, y) for k in nets if not designs or k in designs}
    return _rates(n_runs * batch, _time_designs(steps, reps, device))


def bench_resnet(batch: int, reps: int, device: torch.device) -> list[tuple[str, float, float, float]]:
    streams = RunStreams([0], device)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(1, batch, 3, 32, 32, generator=g, device=device)
    y = torch.randint(0, 100, (1, batch), generator=g, device=device)
    nets = {
        "grouped-cl": ResNet18(streams, channels_last=True),
        "grouped": ResNet18(streams, channels_last=False),
    }
    steps = {k: _make_step(n.forward, n.parameters(), x, y) for k, n in nets.items()}
    return _rates(batch, _time_designs(steps, reps, device))


def main() -> None:
    keep_freed_memory()  # as `lop run` does (lop.allocator)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2, help="timed steps per design (after 1 warm-up)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 30], help="ConvNet run counts S")
    ap.add_argument("--device", default=None, help="cpu, cuda (default: cpu, and cuda if available)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--designs", nargs="+", default=None, help="ConvNet designs to run (default: all)")
    ap.add_argument("--skip-resnet", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device(args.device)] if args.device else [torch.device("cpu")]
    if not args.device and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}")
    if not torch.cuda.is_available():
        print("CUDA: not available on this machine (CPU rows only)")
    print()
    print(
        "| device | network | S | batch/run | design | images/s (best) | images/s (median) | images/CPU-s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for dev in devices:
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
        for s in args.sizes:
            for design, best, med, cpu in bench_convnet(s, 100, args.reps, dev, args.designs):
                row = f"| {name} | ConvNet | {s} | 100 | {design} | {best:,.0f} | {med:,.0f} | {cpu:,.0f} |"
                print(row, flush=True)
        if not args.skip_resnet:
            for design, best, med, cpu in bench_resnet(90, args.reps, dev):
                row = f"| {name} | ResNet-18 | 1 | 90 | {design} | {best:,.1f} | {med:,.1f} | {cpu:,.1f} |"
                print(row, flush=True)


if __name__ == "__main__":
    main()
