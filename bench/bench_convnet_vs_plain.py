"""The ConvNet of Continual ImageNet (docs/protocols/continual_imagenet.md): `lop`'s trainer against a plain PyTorch loop, side by side.

Shared machines drift by tens of percent within minutes, so a ratio to a number measured elsewhere
(the reference's ≈ 2,500 images/s on this 2-core machine) is only as good as the day. This script
measures, alternately and under the same conditions, the images/s of

* ``plain``: what a straightforward PyTorch implementation of the protocol does — ``nn.Conv2d``/
  ``nn.Linear`` modules in the default (NCHW) layout, ``torch.optim.SGD`` (momentum 0.9), cross-entropy,
  batch 100 from a float tensor shuffled each epoch, the loss read back every step; glibc's default
  allocator settings;
* ``lop``: `ContinualImageNetTrainer` with one run (S = 1), i.e. everything `lop run` does per step
  (uint8 gather on the device, normalisation, grouped channels-last convs, batched SGD) with
  `lop.allocator.keep_freed_memory`.

It prints the median of ``--rounds`` measurements of each and their ratio.

    python bench/bench_convnet_vs_plain.py [--rounds 5] [--steps 24] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

BATCH = 100


def plain_convnet() -> nn.Module:
    """The paper's ConvNet (177,218 parameters for 2 outputs) as ordinary modules."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(512, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 2),
    )  # fmt: skip


def bench_plain(steps: int) -> float:
    """Images/s of `steps` SGD steps of the plain loop on 1,200 random 32×32 images."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1200, 3, 32, 32, generator=gen)
    y = torch.randint(0, 2, (1200,), generator=gen)
    net = plain_convnet()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def run(n: int) -> None:
        done = 0
        while done < n:
            perm = torch.randperm(1200, generator=gen)
            for i in range(0, 1200, BATCH):
                idx = perm[i : i + BATCH]
                opt.zero_grad()
                loss = loss_fn(net(x[idx]), y[idx])
                loss.backward()
                opt.step()
                loss.item()
                done += 1
                if done == n:
                    return

    run(4)  # warm-up
    t0 = time.perf_counter()
    run(steps)
    return steps * BATCH / (time.perf_counter() - t0)


def bench_lop(steps: int) -> float:
    """Images/s of `steps` steps of `ContinualImageNetTrainer` (one run, stand-in data)."""
    from lop.allocator import keep_freed_memory
    from lop.config import MethodConfig
    from lop.data.imagenet32 import prepare_imagenet32
    from lop.data.standins import write_standin
    from lop.experiments.base import RunSpec
    from lop.experiments.continual_imagenet import ContinualImageNetProblem, ContinualImageNetTrainer

    keep_freed_memory()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_standin("imagenet32", root / "raw", size="small")
        data = prepare_imagenet32(root / "raw", root / "prepared")
        problem = ContinualImageNetProblem(
            data_dir=str(data), n_tasks=3, epochs_per_task=steps, train_per_class=50, test_per_class=10
        )
        runs = [RunSpec("bp", "default", {}, MethodConfig(lr=0.01, momentum=0.9), 0)]
        trainer = ContinualImageNetTrainer(problem, runs, torch.device("cpu"))
        trainer.train_unit(0)  # warm-up
        t0 = time.perf_counter()
        trainer.train_unit(1)  # `steps` epochs of one batch of 100 + a 20-image test pass
        return steps * BATCH / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=24, help="training steps of 100 images per measurement")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--one", choices=["plain", "lop"], help=argparse.SUPPRESS)  # child process mode
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(bench_plain(args.steps) if args.one == "plain" else bench_lop(args.steps))
        return
    rates: dict[str, list[float]] = {"plain": [], "lop": []}
    for _ in range(args.rounds):
        for kind in rates:  # a fresh process each time: allocator settings and caches start clean
            cmd = [
                sys.executable,
                __file__,
                "--one",
                kind,
                "--steps",
                str(args.steps),
                "--threads",
                str(args.threads),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rates[kind].append(float(out.stdout.strip().splitlines()[-1]))
    plain, ours = statistics.median(rates["plain"]), statistics.median(rates["lop"])
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} alternating rounds of {args.steps} steps\n"
    )
    print("| implementation | images/s (median) | all rounds |")
    print("|---|---:|---|")
    for kind, med in (("plain PyTorch loop", plain), ("lop trainer, S = 1", ours)):
        vals = rates["plain" if kind.startswith("plain") else "lop"]
        print(f"| {kind} | {med:,.0f} | {', '.join(f'{v:,.0f}' for v in vals)} |")
    print(f"\nlop / plain = {ours / plain:.2f}")


if __name__ == "__main__":
    main()
