"""Forgetting methods against fine-tuning on split digits (the embedded 8×8 digits), printed as a table.

Five tasks of two digits (0/1, 2/3, …), a 64-100-100-10 ReLU MLP, Adam 1e-3, batch 32, ``--epochs``
epochs per task, ``--seeds`` runs trained as one seed batch through
`lop.problems.task_sequence.TaskSequenceLearner`, with the method layer's end-of-task point after each
task. Per-run data order is a seeded permutation; 70 % of each digit trains, 30 % tests. Reports the
final mean accuracy over tasks (ACC) and backward transfer (BWT) of `lop.cl_metrics`, mean ± standard
deviation over runs, for the task-, domain- and class-incremental scenarios.

This is a direct check of the methods on a tiny stream, independent of the experiments' pipeline:

    PYTHONPATH=$PWD python bench/demo_cl_methods.py [--seeds 3] [--epochs 5]

No assertions: this only measures.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch

from lop.cl_metrics import acc, bwt
from lop.config import MethodConfig, from_dict
from lop.data.digits import load_digits
from lop.nets.layers import batched_linear
from lop.problems.task_sequence import TaskSequenceLearner, task_label_mask
from lop.rng import RunStreams

METHODS = {
    "finetune": {},
    "si": {"si": {"c": 1.0, "xi": 1e-3}},
    "ewc": {"ewc": {"lam": 1e4, "fisher": "exact", "fisher_samples": 200}},
    "online_ewc": {"ewc": {"lam": 1e4, "fisher": "exact", "fisher_samples": 200, "online": True, "gamma": 1.0}},
    "replay": {"replay": {"buffer": 200, "batch": 32}},
    "lwf": {"lwf": {"alpha": 1.0, "temperature": 2.0}},
}


class MLP:
    def __init__(self, streams: RunStreams, sizes: list[int]) -> None:
        self.params: list[torch.Tensor] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            bound = (6.0 / a) ** 0.5 if i < len(sizes) - 2 else (1.0 / a) ** 0.5
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


def split(seeds: list[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    x, y = load_digits()
    rng = np.random.default_rng(0)
    tasks = []
    for t in range(5):
        idx = np.flatnonzero((y == 2 * t) | (y == 2 * t + 1))
        idx = rng.permutation(idx)
        n_train = int(0.7 * len(idx))
        tr, te = idx[:n_train], idx[n_train:]
        orders = [np.random.default_rng(1000 + s).permutation(n_train) for s in seeds]
        xtr = torch.stack([torch.from_numpy(x[tr][o]) for o in orders])
        ytr = torch.stack([torch.from_numpy(y[tr][o]) for o in orders])
        xte = torch.from_numpy(x[te]).expand(len(seeds), -1, -1)
        yte = torch.from_numpy(y[te]).expand(len(seeds), -1)
        tasks.append((xtr, ytr, xte, yte))
    return tasks


def run(method: dict, scenario: str, seeds: list[int], epochs: int, tasks) -> np.ndarray:
    streams = RunStreams(seeds)
    cfg = from_dict(MethodConfig, {"optimizer": "adam", "lr": 1e-3, **method})
    mask = task_label_mask([c // 2 for c in range(10)]) if scenario == "task" else None
    n_out = 2 if scenario == "domain" else 10
    learner = TaskSequenceLearner(MLP(streams, [64, 100, 100, n_out]), [cfg] * len(seeds), streams, label_mask=mask)

    def labels(y: torch.Tensor) -> torch.Tensor:
        return y % 2 if scenario == "domain" else y

    def n_logits(task: int) -> int | None:
        return 2 * task + 2 if scenario == "class" else None

    r = np.full((len(seeds), 6, 5), np.nan)

    def evaluate(row: int, seen: int) -> None:
        for j, (_, _, xte, yte) in enumerate(tasks):
            pred = learner.predict(xte, labels(yte), n_logits(seen))
            r[:, row, j] = (pred == labels(yte)).float().mean(1).numpy()

    evaluate(0, 4)
    t = 0
    for task, (xtr, ytr, _, _) in enumerate(tasks):
        for _ in range(epochs):
            for lo in range(0, xtr.shape[1], 32):
                learner.step(t, xtr[:, lo : lo + 32], labels(ytr[:, lo : lo + 32]), n_logits(task))
                t += 1

        def batches(n: int, bs: int, xtr=xtr, ytr=ytr):
            n = min(n, xtr.shape[1])
            for lo in range(0, n, bs):
                yield xtr[:, lo : min(n, lo + bs)], labels(ytr[:, lo : min(n, lo + bs)])

        learner.end_task(task + 1, batches, n_logits(task))
        evaluate(task + 1, task)
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    seeds = list(range(args.seeds))
    tasks = split(seeds)
    print(f"Split digits, 5 tasks, {args.seeds} seeds, {args.epochs} epochs per task; ACC / BWT (mean ± sd)\n")
    print("| method | task-IL ACC | task-IL BWT | domain-IL ACC | domain-IL BWT | class-IL ACC | class-IL BWT |")
    print("|---|---|---|---|---|---|---|")
    for name, method in METHODS.items():
        cells = []
        for scenario in ("task", "domain", "class"):
            r = run(method, scenario, seeds, args.epochs, tasks)
            a, b = np.asarray(acc(r)), np.asarray(bwt(r))
            cells += [f"{a.mean():.3f} ± {a.std():.3f}", f"{b.mean():+.3f} ± {b.std():.3f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
