"""Experiment `permuted_mnist`: online permuted MNIST (Extended Data Figs. 3 and 4; docs/protocols/permuted_mnist.md).

Each task is a fresh random permutation of the input pixels and a pass over the examples in a fresh
random order (both from the run seed); batch size 1, cross-entropy. Online accuracy is the prediction
on each example *before* the update on it, averaged per task. At the start of every task a probe of
`probe_examples` examples (the first of the task's order, permuted) measures the internals of each
hidden layer: dead units, effective rank, approximate rank, and the weight magnitude.

Internals as the reference plotted them (Extended Data Figs. 3–4), under their own names:

* ``weight_magnitude_every: k > 0`` logs ``weight_magnitude_task_mean`` per task (step = task): the mean
  over the task of mean |w| (all weights, as ``weight_magnitude``), sampled after the update on every
  k-th example of the task (examples k, 2k, …): (1/N) Σ_{j=1..N} mean|w|(after step jk), N = ⌊steps/k⌋.
  k = 1 is every step, the reference's average; mean |w| drifts slowly, so k = 100 (600 samples per
  60,000-step task) is the same average at a hundredth of the cost (docs/online-experiments.md gives a
  measurement: ~600 samples per task differ from k = 1 by ~1 % of the seed-to-seed spread).
* ``reference_internals: true`` logs at every probe ``effective_rank_fraction/layer{l}`` (effective rank
  / the layer's width; the figures show it in % of width) and ``dead_units_pooled`` (dead units of all
  hidden layers / all hidden units: Σ_l dead_l / Σ_l width_l, the reference's pooling; equal to the mean
  of ``dead_units/layer*`` because every hidden layer here has the same width).

`dataset: digits` swaps MNIST for scikit-learn's embedded 8×8 digits (64 inputs, 1,797 examples): the
offline "permuted digits" variant used by the demo scale; such runs are recorded as ``stand_in: true``
in ``run.json``, like runs on a prepared MNIST stand-in (real MNIST IDX files give ``false``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lop import metrics
from lop.algos.method_layer import supported_keys
from lop.algos.online import OnlineMLPLearner
from lop.experiments.base import ExperimentSpec, MetricBlock, RunSpec, Trainer
from lop.experiments.schemas import PermutedMNISTProblem
from lop.nets.mlp import BatchedMLP
from lop.rng import RunStreams


def load_dataset(problem: PermutedMNISTProblem) -> tuple[torch.Tensor, torch.Tensor]:
    """(x float32 [N, D] in [0, 1], y int64 [N]) of the configured dataset."""
    if problem.dataset == "digits":
        from lop.data.digits import load_digits

        x_np, y_np = load_digits()
        x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    else:
        from lop.data.mnist import load_mnist

        d = load_mnist(problem.data_dir)
        x = torch.from_numpy(d["train_images"]).reshape(len(d["train_images"]), -1).float() / 255.0
        y = torch.from_numpy(d["train_labels"]).long()
    if problem.n_examples:
        if problem.n_examples > len(x):
            from lop.errors import ConfigError

            raise ConfigError(
                "problem.n_examples", f"{problem.n_examples} > {len(x)} examples in the dataset"
            )
        x, y = x[: problem.n_examples], y[: problem.n_examples]
    return x, y


def dataset_stand_in(problem: PermutedMNISTProblem) -> bool:
    """Whether the configured dataset is a stand-in: the embedded digits always, MNIST per its manifest."""
    if problem.dataset == "digits":
        return True
    from lop.data.artifact import prepared_stand_in
    from lop.data.mnist import DATASET

    return prepared_stand_in(problem.data_dir, DATASET)


class PermutedMNISTTrainer(Trainer):
    """Unit = `unit_examples` online steps (a task is one or more units)."""

    unit_name = "block"
    state_attrs = ("learner", "correct", "loss_sum", "wm_sum", "wm_count")

    def __init__(self, problem: PermutedMNISTProblem, runs: Sequence[RunSpec], device: torch.device) -> None:
        self.p = problem
        self.device = device
        self.streams = RunStreams([r.seed for r in runs], device)
        x, y = load_dataset(problem)
        self.stand_in = dataset_stand_in(problem)
        self.x, self.y = x.to(device), y.to(device)
        self.n, self.dim = self.x.shape
        self.per_task = problem.examples_per_task or self.n
        self.unit_examples = min(problem.unit_examples, self.per_task)
        if self.per_task % self.unit_examples:
            from lop.errors import ConfigError

            raise ConfigError(
                "problem.unit_examples", f"{self.unit_examples} must divide examples_per_task {self.per_task}"
            )
        self.units_per_task = self.per_task // self.unit_examples
        self.n_units = problem.n_tasks * self.units_per_task
        arch = runs[0].config.arch
        sizes = [self.dim, 10] if arch == "linear" else [self.dim] + [problem.width] * problem.depth + [10]
        self.net = BatchedMLP(
            sizes, problem.activation, self.streams, init=problem.init, output_gain=problem.output_gain
        )
        self.learner = OnlineMLPLearner(self.net, [r.config for r in runs], self.streams, "cross_entropy")
        s = self.streams.n
        self.correct = torch.zeros(s, device=device)
        self.loss_sum = torch.zeros(s, device=device)
        self.init_divergence(s, device)
        # running sum and count of the task's mean-|w| samples (`weight_magnitude_every`)
        self.wm_sum = torch.zeros(s, dtype=torch.float64, device=device)
        self.wm_count = torch.zeros((), dtype=torch.int64)
        self._task_cache: tuple[int, torch.Tensor, torch.Tensor] | None = None

    # ---- the stream ----------------------------------------------------------------------------
    def task_stream(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel permutation ``[S, D]``, example order ``[S, per_task]``) of task `task`."""
        if self._task_cache is not None and self._task_cache[0] == task:
            return self._task_cache[1], self._task_cache[2]
        perm = self.streams.permutation("pmnist/pixels", task, self.dim)
        passes = -(-self.per_task // self.n)
        order = torch.cat(
            [self.streams.permutation("pmnist/order", task * 1_000_003 + k, self.n) for k in range(passes)], 1
        )[:, : self.per_task]
        self._task_cache = (task, perm, order)
        return perm, order

    def examples(self, task: int, start: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Examples [start, start+size) of a task: x ``[S, size, D]`` (permuted), y ``[S, size]``."""
        perm, order = self.task_stream(task)
        idx = order[:, start : start + size]
        x = self.x[idx]  # [S, size, D]
        x = x.gather(2, perm.unsqueeze(1).expand(-1, size, -1))
        return x, self.y[idx]

    # ---- training ---------------------------------------------------------------------------------
    def train_unit(self, unit: int) -> list[MetricBlock]:
        task, part = divmod(unit, self.units_per_task)
        blocks: list[MetricBlock] = []
        p = self.p
        if part == 0:
            self.correct.zero_()
            self.loss_sum.zero_()
            self.wm_sum.zero_()
            self.wm_count.zero_()
            if p.probe_every and task % p.probe_every == 0:
                blocks += self.probe(task)
        t_task0 = task * self.per_task
        start = part * self.unit_examples
        end = start + self.unit_examples
        every = p.weight_magnitude_every
        for c0 in range(start, end, p.chunk):
            size = min(p.chunk, end - c0)
            x, y = self.examples(task, c0, size)
            # step-major copies: each step then reads one contiguous [S, ...] block
            xs = x.transpose(0, 1).contiguous().unsqueeze(2)  # [size, S, 1, D]
            ys = y.transpose(0, 1).contiguous().unsqueeze(2)  # [size, S, 1]
            for j in range(size):
                loss, out = self.learner.step(t_task0 + c0 + j, xs[j], ys[j])
                self.correct += out[:, 0].argmax(-1) == ys[j, :, 0]
                self.loss_sum += loss[:, 0]
                if every and (c0 + j + 1) % every == 0:
                    self.wm_sum += metrics.weight_magnitude(self.net.weights)
                    self.wm_count += 1
        self._track_divergence(t_task0 + end)
        if part == self.units_per_task - 1:
            steps = torch.tensor([task], dtype=torch.int64)
            blocks.append(MetricBlock("online_accuracy", steps, (self.correct / self.per_task).unsqueeze(1)))
            blocks.append(MetricBlock("loss", steps, (self.loss_sum / self.per_task).unsqueeze(1)))
            if every:
                n = int(self.wm_count)
                mean_wm = self.wm_sum / n if n else torch.full_like(self.wm_sum, math.nan)
                blocks.append(MetricBlock("weight_magnitude_task_mean", steps, mean_wm.unsqueeze(1)))
        return blocks

    def _track_divergence(self, step: int) -> None:
        self.mark_diverged(~torch.isfinite(self.loss_sum), step)

    @torch.no_grad()
    def probe(self, task: int) -> list[MetricBlock]:
        """Internals at the start of `task` on its first `probe_examples` examples (docs/protocols/permuted_mnist.md, docs/protocols/metrics.md)."""
        n = min(self.p.probe_examples, self.per_task)
        x, _ = self.examples(task, 0, n)
        _, cache = self.net.forward(x)
        steps = torch.tensor([task], dtype=torch.int64)
        out = [
            MetricBlock("weight_magnitude", steps, metrics.weight_magnitude(self.net.weights).unsqueeze(1))
        ]
        dead = torch.zeros(self.streams.n, dtype=torch.float64, device=self.device)
        for layer, h in enumerate(cache.post, start=1):
            ranks = metrics.rank_metrics(h)
            out.append(MetricBlock(f"dead_units/layer{layer}", steps, metrics.dead_units(h).unsqueeze(1)))
            for name in ("effective_rank", "approximate_rank"):
                out.append(MetricBlock(f"{name}/layer{layer}", steps, ranks[name].unsqueeze(1)))
            if self.p.reference_internals:
                frac = ranks["effective_rank"].to(torch.float64) / h.shape[-1]
                out.append(MetricBlock(f"effective_rank_fraction/layer{layer}", steps, frac.unsqueeze(1)))
                dead += metrics.dead_units(h).to(torch.float64) * h.shape[-1]
        if self.p.reference_internals and cache.post:
            units = sum(h.shape[-1] for h in cache.post)
            out.append(MetricBlock("dead_units_pooled", steps, (dead / units).unsqueeze(1)))
        return out


EXPERIMENT = ExperimentSpec(
    name="permuted_mnist",
    problem_cls=PermutedMNISTProblem,
    build=PermutedMNISTTrainer,
    description="Online permuted MNIST (Extended Data Figs. 3, 4); `dataset: digits` for offline use",
    needs_data=("mnist",),
    supports=supported_keys(OnlineMLPLearner.HOOK_POINTS) | {"arch"},
)
