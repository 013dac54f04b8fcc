"""Speed of one MoE-adapter training step on a frozen CLIP (issue 15), printed as a markdown table.

One step = image and text encoders with adapters (forward), cross-entropy on the cosine logits of the
images against a task's class prompts, backward into the adapters and routers only, and AdamW — what
`lop.experiments.moe_cifar` does per minibatch. Random backbone weights (speed does not depend on them)
and random images at the backbone's resolution; `--widths` picks the tiny smoke model and/or the
ViT-B/16 widths (12×768 image blocks at 224 px, 12×512 text blocks, 77 tokens). For S runs batched the
frozen backbone is shared and the activations are ``[S, B, T, d]``.

Columns: images per wall-second (all runs together) and per CPU-second (process time, all threads),
seconds per step. Use `--device cuda` on a GPU machine for the paper scale's budget.

    PYTHONPATH=$PWD python bench/bench_moe_clip.py [--widths tiny,vit_b16] [--seeds 1,4] [--batch 8]

No assertions: this only measures.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torch.nn.functional as F

from lop.algos.adamw import RunAdamW
from lop.nets.clip import ARCHS, encode_image, encode_text, random_clip_state
from lop.nets.moe_adapters import MoEAdapters
from lop.rng import RunStreams


def step_fn(arch_name: str, s: int, batch: int, classes: int, experts: int, device: torch.device):
    """A closure doing one training step of S runs (and its images per step)."""
    a = ARCHS[arch_name]
    w = {k: v.to(device) for k, v in random_clip_state(a).items()}
    ad = MoEAdapters(RunStreams(list(range(s)), device), a, n_experts=experts, top_k=2, n_routers=1)
    opt = RunAdamW(ad.params, torch.full((s,), 1e-3, device=device))
    images = torch.randn(s, batch, 3, a.image_size, a.image_size, device=device)
    tokens = torch.randint(1, 300, (s, classes, a.context_length), device=device)
    tokens[:, :, 10] = a.vocab_size - 1  # end token
    labels = torch.randint(0, classes, (s * batch,), device=device)
    counter = [0]

    def step() -> None:
        ad.ctx.training, ad.ctx.noise, ad.ctx.step, ad.ctx.route = True, True, counter[0], 0
        counter[0] += 1
        img = F.normalize(encode_image(images, w, a, ad), dim=-1)
        txt = F.normalize(encode_text(tokens, w, a, ad), dim=-1)
        logits = 100.0 * torch.bmm(img, txt.transpose(1, 2))
        loss = F.cross_entropy(logits.flatten(0, 1), labels) + 0.01 * ad.take_balance_loss().sum()
        for p in ad.params.values():
            p.grad = None
        loss.backward()
        opt.step()

    return step


def measure(step, seconds: float, device: torch.device) -> tuple[float, float, int]:
    """(wall s/step, CPU s/step, steps), after one warm-up step."""
    step()
    n, w0, c0 = 0, time.perf_counter(), time.process_time()
    while True:
        step()
        n += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        if time.perf_counter() - w0 >= seconds:
            break
    return (time.perf_counter() - w0) / n, (time.process_time() - c0) / n, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="tiny,vit_b16")
    ap.add_argument("--seeds", default="1,4")
    ap.add_argument("--batch", type=int, default=8, help="images per run per step")
    ap.add_argument("--classes", type=int, default=10, help="class prompts per step (a 10-step task)")
    ap.add_argument("--experts", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(
        f"# MoE-adapter step on a frozen CLIP — {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}"
    )
    print(f"batch {args.batch} images/run, {args.classes} prompts, {args.experts} experts top-2\n")
    print("| backbone | S | images/s (wall) | images/CPU-s | s/step | steps |")
    print("|---|---|---|---|---|---|")
    for arch in args.widths.split(","):
        for s in (int(x) for x in args.seeds.split(",")):
            step = step_fn(arch, s, args.batch, args.classes, args.experts, device)
            wall, cpu, n = measure(step, args.seconds, device)
            imgs = s * args.batch
            print(f"| {arch} | {s} | {imgs / wall:.1f} | {imgs / cpu:.1f} | {wall:.3f} | {n} |", flush=True)


if __name__ == "__main__":
    main()
