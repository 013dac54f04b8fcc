"""Cost of the forgetting methods' end-of-task and per-step work, printed as a markdown table.

* EWC's Fisher (`lop.algos.fisher.diagonal_fisher`) per estimator on a 784-W-W-10 ReLU MLP (the
  permuted-MNIST shape of Zenke et al. at W = 2000), for ``--samples`` examples and S runs: seconds per
  call and per example, and the number of examples per vectorised backward pass (the chunk);
* one training step of `lop.problems.task_sequence.TaskSequenceLearner` (Adam, batch 256) with each
  method on, against plain training, after one task end (so every penalty and the LwF teacher are live).

    PYTHONPATH=$PWD python bench/bench_cl_methods.py [--width 2000] [--samples 64] [--seeds 1] [--steps 5]

No assertions: this only measures (times of a whole call, `time.perf_counter`).
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from lop.algos.fisher import chunk_size, diagonal_fisher
from lop.config import MethodConfig, from_dict
from lop.nets.layers import batched_linear
from lop.problems.task_sequence import TaskSequenceLearner, masked_log_probs
from lop.rng import RunStreams


class MLP:
    """784-W-W-10 ReLU, seed-batched, autograd parameters."""

    def __init__(self, streams: RunStreams, width: int) -> None:
        sizes = [784, width, width, 10]
        self.params: list[torch.Tensor] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            bound = (6.0 / a) ** 0.5
            self.params.append(streams.uniform(f"w{i}", 0, (b, a), -bound, bound).requires_grad_(True))
            self.params.append(torch.zeros(streams.n, b, requires_grad=True))

    def parameters(self) -> list[torch.Tensor]:
        return self.params

    def __call__(self, x: torch.Tensor, return_activations: bool = False):
        h = x
        for i in range(0, len(self.params), 2):
            h = batched_linear(h, self.params[i], self.params[i + 1])
            if i + 2 < len(self.params):
                h = torch.relu(h)
        return (h, {}) if return_activations else h


def data(s: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(s, n, 784, generator=g), torch.randint(0, 10, (s, n), generator=g)


def batches_of(x: torch.Tensor, y: torch.Tensor):
    def batches(n: int, bs: int):
        n = min(n, x.shape[1])
        for lo in range(0, n, bs):
            yield x[:, lo : min(n, lo + bs)], y[:, lo : min(n, lo + bs)]

    return batches


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    s = args.seeds
    streams = RunStreams(list(range(s)))
    net = MLP(streams, args.width)
    x, y = data(s, max(args.samples, 256))
    print(f"## Fisher: 784-{args.width}-{args.width}-10, S = {s}, {args.samples} examples, "
          f"{torch.get_num_threads()} threads\n")
    print("| estimator | examples per backward | seconds | ms per example |\n|---|---|---|---|")
    for kind in ("exact", "sample", "empirical", "pred", "batched"):
        t0 = time.perf_counter()
        diagonal_fisher(kind, args.samples, batches_of(x, y), lambda a, b: masked_log_probs(net(a), b),
                        net.parameters(), streams, 1, fisher_batch=32)
        dt = time.perf_counter() - t0
        per = chunk_size(net.parameters(), 10 if kind == "exact" else 1) if kind != "batched" else 32
        print(f"| {kind} | {per} | {dt:.2f} | {1000 * dt / args.samples:.1f} |")
    print(f"\n## One step, batch 256, Adam, after one task end (S = {s})\n")
    print("| method | ms per step | × plain |\n|---|---|---|")
    methods = {
        "plain": {},
        "si": {"si": {"c": 0.1}},
        "ewc": {"ewc": {"lam": 100.0, "fisher_samples": 8}},
        "replay": {"replay": {"buffer": 1000, "batch": 64}},
        "lwf": {"lwf": {}},
    }
    base = None
    for name, m in methods.items():
        cfg = from_dict(MethodConfig, {"optimizer": "adam", "lr": 1e-3, **m})
        learner = TaskSequenceLearner(MLP(streams, args.width), [cfg] * s, streams)
        learner.step(0, x[:, :256], y[:, :256])
        learner.end_task(1, batches_of(x, y))
        learner.step(1, x[:, :256], y[:, :256])
        t0 = time.perf_counter()
        for t in range(args.steps):
            learner.step(2 + t, x[:, :256], y[:, :256])
        ms = 1000 * (time.perf_counter() - t0) / args.steps
        base = base or ms
        print(f"| {name} | {ms:.0f} | {ms / base:.2f} |")


if __name__ == "__main__":
    main()
