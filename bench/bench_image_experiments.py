"""Throughput of the image experiments' training step (docs/protocols/continual_imagenet.md, docs/protocols/incremental_cifar.md), as a markdown table.

A *step* is everything the trainers do per mini-batch: per-run data sampling (epoch shuffle + gather of
uint8 images on the device), conversion/augmentation, forward and backward of the seed-batched net,
the batched SGD update and, for CBP, the utility update and replacements. Measured through the real
trainers on small stand-in data written to a temporary folder:

* ConvNet (Continual ImageNet): `ContinualImageNetTrainer.train_unit` with tasks of 100 training images
  (one batch of 100 per epoch), so a unit is `epochs` steps plus one test pass of 20 images per run;
* ResNet-18 (class-incremental CIFAR-100, 32×32, batch 90 with the full augmentation):
  `IncrementalCifarTrainer._train_epoch` over 90 images (one step per epoch).

Columns: images/s over all runs, images/s per run (= per seed), and CPU-seconds per 1,000 images
(process time, all threads; on shared cores wall time alone is misleading).

    python bench/bench_image_experiments.py [--device cpu] [--seeds 1,8,30] [--steps 6] [--resnet-steps 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from lop.allocator import keep_freed_memory
from lop.config import CBPConfig, MethodConfig
from lop.data.cifar100 import prepare_cifar100
from lop.data.imagenet32 import prepare_imagenet32
from lop.data.standins import write_standin
from lop.experiments.base import RunSpec
from lop.experiments.continual_imagenet import ContinualImageNetProblem, ContinualImageNetTrainer
from lop.experiments.incremental_cifar import IncrementalCifarProblem, IncrementalCifarTrainer

METHODS = {
    "bp": {"imagenet": MethodConfig(lr=0.01, momentum=0.9), "cifar": MethodConfig(lr=0.1, momentum=0.9)},
    "cbp": {
        "imagenet": MethodConfig(
            lr=0.01,
            momentum=0.9,
            cbp=CBPConfig(replacement_rate=3e-4, maturity=100, utility="adaptable_contribution"),
        ),
        "cifar": MethodConfig(
            lr=0.1,
            momentum=0.9,
            weight_decay=5e-4,
            cbp=CBPConfig(replacement_rate=1e-5, maturity=1000, utility="contribution"),
        ),
    },
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> tuple[float, float]:
    _sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - w0, time.process_time() - c0


def bench_convnet(
    data: Path, method: str, n_runs: int, steps: int, device: torch.device
) -> tuple[float, float]:
    """(wall s, CPU s) per step of the Continual ImageNet trainer with `n_runs` seeds."""
    problem = ContinualImageNetProblem(
        data_dir=str(data), n_tasks=3, epochs_per_task=steps, train_per_class=50, test_per_class=10
    )
    runs = [RunSpec(method, "default", {}, METHODS[method]["imagenet"], s) for s in range(n_runs)]
    trainer = ContinualImageNetTrainer(problem, runs, device)
    trainer.train_unit(0)  # warm-up (allocations, oneDNN kernels)
    wall, cpu = _timed(lambda: trainer.train_unit(1), device)
    return wall / steps, cpu / steps


def bench_resnet(
    data: Path, method: str, n_runs: int, steps: int, device: torch.device
) -> tuple[float, float]:
    """(wall s, CPU s) per step of the class-incremental CIFAR trainer (90 images per run and step)."""
    problem = IncrementalCifarProblem(
        data_dir=str(data), train_per_class=18, val_per_class=2, test_per_class=5, epochs_per_increment=200
    )
    runs = [RunSpec(method, "default", {}, METHODS[method]["cifar"], s) for s in range(n_runs)]
    trainer = IncrementalCifarTrainer(problem, runs, device)
    trainer._train_epoch(0, 5)  # warm-up
    wall, cpu = _timed(lambda: [trainer._train_epoch(1 + i, 5) for i in range(steps)], device)
    return wall / steps, cpu / steps


def main() -> None:
    keep_freed_memory()  # as `lop run` does (lop.allocator)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seeds", default="1,8,30", help="ConvNet batch sizes S (runs per process)")
    ap.add_argument("--steps", type=int, default=6, help="ConvNet steps per measurement")
    ap.add_argument("--resnet-steps", type=int, default=3, help="ResNet-18 steps per measurement")
    ap.add_argument("--resnet-seeds", default="1", help="ResNet-18 batch sizes S")
    ap.add_argument("--methods", default="bp,cbp")
    args = ap.parse_args()
    device = torch.device(args.device)
    methods = args.methods.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_standin("imagenet32", root / "raw-in", size="small")
        imagenet = prepare_imagenet32(root / "raw-in", root / "imagenet32")
        write_standin("cifar100", root / "raw-c", size="small")
        cifar = prepare_cifar100(root / "raw-c", root / "cifar100")
        for net, fn, batch, seeds, steps in (
            ("ConvNet", bench_convnet, 100, args.seeds, args.steps),
            ("ResNet-18", bench_resnet, 90, args.resnet_seeds, args.resnet_steps),
        ):
            for method in methods:
                for s in (int(v) for v in seeds.split(",") if v):
                    wall, cpu = fn(imagenet if net == "ConvNet" else cifar, method, s, steps, device)
                    images = batch * s
                    rows.append((net, method, s, images / wall, images / wall / s, 1000 * cpu / images))
                    print(f"  measured {net} {method} S={s}", flush=True)
    print()
    print(
        f"device: {device} ({torch.get_num_threads()} torch threads), torch {torch.__version__}; "
        "images/s of whole training steps"
    )
    print()
    print("| net | method | S | images/s (all runs) | images/s per run | CPU-s per 1k images |")
    print("|---|---|---:|---:|---:|---:|")
    for net, method, s, total, per, cpu in rows:
        print(f"| {net} | {method} | {s} | {total:,.0f} | {per:,.0f} | {cpu:.2f} |")


if __name__ == "__main__":
    main()
