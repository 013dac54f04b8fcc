"""Task sequences of continual learning with a held-out test set per task, and their trainer
(docs/protocols/cl_permuted_mnist.md, docs/protocols/cl_split_mnist.md, docs/protocols/cl_split_cifar100.md).

**Tasks.** A `TaskData` holds the base examples of the train and test splits, each example's *local*
label (its class's position within its task, 0..k−1), the rows of every task and, for permuted tasks,
one input-pixel permutation per run and task (``perms [S, T, D]``, task 1 the identity). Split tasks
take consecutive groups of ``k`` classes (of the dataset's natural class order); permuted tasks use
every example with all ``k`` classes in every task.

**Scenarios** (the output layer and its masks):

* ``domain``: one shared head of ``k`` outputs; the label is the local label;
* ``task``: ``T·k`` outputs, the label of an example of task ``t`` (0-based) is ``t·k + local``, and the
  softmax of each example is restricted to its own task's ``k`` outputs (`task_label_mask`);
* ``class``: ``T·k`` outputs and the same labels, the softmax over the classes seen so far: while
  training task ``t`` (1-based) the first ``t·k`` outputs; when evaluating task ``j`` after task ``i``
  the first ``max(i, j)·k`` outputs (a task not trained yet is scored among the outputs up to its own,
  which gives the random-init baseline of forward transfer a meaning).

**Protocol of a run** (unit = one task, `TaskSequenceTrainer`): before the first task every task's test
set is evaluated (row 0 of the accuracy matrix, the random-init baseline) and the internals are probed;
task ``t`` then trains ``epochs_per_task`` epochs over its training examples (``joint: true``: over the
union of tasks 1..t) in mini-batches of ``batch_size``, reshuffled every epoch from the run's seed; then
the method layer's ``end_task`` point runs (consolidation), then ``at_boundary`` (ReDo) with a probe
batch, then every task is tested. A network with a training mode (dropout) is in training mode only
for the updates of a task; tests, probes and the end-of-task statistics run in evaluation mode. Metrics
at step ``i`` (= tasks trained): ``test_accuracy/task_<j>`` for every ``j`` (the accuracy matrix R[i, j]),
``train_loss``/``train_accuracy`` (means over the task's
last epoch, data term only), and the plasticity probes on the first ``probe_examples`` test examples
of task ``max(i, 1)``: ``dead_units/<layer>``, ``dormant_units/<layer>`` (active on < 1 % of the probe),
``effective_rank/<layer>`` and ``stable_rank/<layer>`` (fully connected layers), ``weight_magnitude``.
After the last task the summaries of `lop.cl_metrics` (``acc``, ``bwt``, ``fwt``, ``forgetting``,
``avg_incremental_acc``) at step ``T``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lop import cl_metrics, metrics
from lop.errors import ConfigError
from lop.experiments.base import MetricBlock, RunSpec, Trainer
from lop.problems.task_sequence import TaskSequenceLearner, task_label_mask
from lop.rng import RunStreams

SCENARIOS: tuple[str, ...] = ("task", "domain", "class")


@dataclass
class Split:
    """One split (train or test): base examples ``x [N, ...]`` (float in [0, 1] or uint8 images),
    local labels ``local [N]`` (0..k−1) and the rows of each task (``rows[t]`` int64)."""

    x: torch.Tensor
    local: torch.Tensor
    rows: list[torch.Tensor]


@dataclass
class TaskData:
    """A task sequence: train/test splits, ``k`` classes per task, optional permutations ``[S, T, D]``."""

    train: Split
    test: Split
    k: int
    perms: torch.Tensor | None = None
    uint8_scale: float = 1.0 / 255.0

    @property
    def n_tasks(self) -> int:
        return len(self.train.rows)


def split_tasks(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    n_tasks: int,
    k: int,
    first_class: int = 0,
) -> TaskData:
    """Task ``t`` (0-based) = classes ``first_class + t·k .. first_class + (t+1)·k − 1``."""

    def split(x: torch.Tensor, y: torch.Tensor) -> Split:
        rel = y - first_class
        task = torch.div(rel, k, rounding_mode="floor")
        rows = [torch.nonzero((task == t) & (rel >= 0)).flatten() for t in range(n_tasks)]
        return Split(x, torch.remainder(rel, k), rows)

    return TaskData(split(x_train, y_train), split(x_test, y_test), k)


def permuted_tasks(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    n_tasks: int,
    streams: RunStreams,
    n_classes: int = 10,
) -> TaskData:
    """Every task uses every example; task ``t ≥ 1`` (0-based) permutes the input pixels with a per-run
    permutation (stream ``cl/pixels``, counter ``t``); task 0 is unpermuted."""
    dim = x_train.shape[1]
    ident = torch.arange(dim, device=streams.device).expand(streams.n, dim)
    perms = [ident] + [streams.permutation("cl/pixels", t, dim) for t in range(1, n_tasks)]
    return TaskData(
        Split(x_train, y_train, [torch.arange(len(x_train), device=x_train.device)] * n_tasks),
        Split(x_test, y_test, [torch.arange(len(x_test), device=x_test.device)] * n_tasks),
        n_classes,
        torch.stack(perms, 1),
    )


def holdout_split(x: np.ndarray, y: np.ndarray, every: int = 5) -> tuple[np.ndarray, ...]:
    """A fixed train/test split of one array: every ``every``-th example is a test example."""
    test = np.arange(len(x)) % every == 0
    return x[~test], y[~test], x[test], y[test]


def check_scenario(scenario: str, runs: Sequence[RunSpec]) -> None:
    """A method whose config lists the scenarios it works in (its ``SCENARIOS``) must list this one."""
    for r in runs:
        for f in dataclasses.fields(r.config):
            value = getattr(r.config, f.name)
            allowed = getattr(value, "SCENARIOS", None)
            if allowed is not None and scenario not in allowed:
                raise ConfigError(
                    f"methods.{r.method}.{f.name}",
                    f"works in the {'/'.join(sorted(allowed))}-incremental scenario(s) only, and this run uses "
                    f"scenario: {scenario}; change problem.scenario or remove the method",
                )


class TaskSequenceTrainer(Trainer):
    """Trains S runs on a `TaskData` sequence under one scenario; unit = one task (see the module doc).

    Subclasses (the experiments) load the data and build the network, then call `setup`.
    """

    unit_name = "task"
    state_attrs = ("net", "learner", "matrix", "step_count")

    def setup(
        self,
        data: TaskData,
        net,
        runs: Sequence[RunSpec],
        streams: RunStreams,
        *,
        scenario: str,
        epochs_per_task: int,
        batch_size: int,
        probe_examples: int,
        eval_batch: int,
        reset_optimizer: bool = False,
    ) -> None:
        if scenario not in SCENARIOS:
            raise ConfigError("problem.scenario", f"must be one of {', '.join(SCENARIOS)}, got {scenario!r}")
        check_scenario(scenario, runs)
        if any(len(r) == 0 for r in data.train.rows + data.test.rows):
            raise ConfigError(
                "problem.n_tasks", "a task has no train or test examples; lower n_tasks or use more data"
            )
        self.data, self.net, self.streams = data, net, streams
        self.scenario = scenario
        self.epochs, self.batch_size = epochs_per_task, batch_size
        self.probe_examples, self.eval_batch = probe_examples, eval_batch
        self.reset_optimizer = reset_optimizer
        self.joint = bool(runs[0].config.joint)
        if any(bool(r.config.joint) != self.joint for r in runs):
            raise ConfigError("joint", "all runs of one batch must set joint alike")
        self.n_units = data.n_tasks
        t, k, dev = data.n_tasks, data.k, streams.device
        mask = None
        if scenario == "task":
            mask = task_label_mask(torch.arange(t * k, device=dev) // k, dev)
        self.cbp_layers = net.unit_layers()
        self.learner = TaskSequenceLearner(net, [r.config for r in runs], streams, self.cbp_layers, mask)
        self.matrix = torch.full((streams.n, t + 1, t), float("nan"), dtype=torch.float64, device=dev)
        self.step_count = torch.zeros((), dtype=torch.int64)
        self.init_divergence(streams.n, dev)

    def setup_from_problem(
        self, problem: Any, data: TaskData, net, runs: Sequence[RunSpec], streams: RunStreams
    ) -> None:
        """`setup` with the options the task-sequence problems share: ``problem.scenario``,
        ``epochs_per_task``, ``batch_size``, ``probe_examples``, ``eval_batch`` and ``reset_optimizer``."""
        self.setup(
            data,
            net,
            runs,
            streams,
            scenario=problem.scenario,
            epochs_per_task=problem.epochs_per_task,
            batch_size=problem.batch_size,
            probe_examples=problem.probe_examples,
            eval_batch=problem.eval_batch,
            reset_optimizer=problem.reset_optimizer,
        )

    @staticmethod
    def n_outputs(scenario: str, n_tasks: int, k: int) -> int:
        """Width of the output layer: ``k`` (domain) or ``T·k`` (task, class)."""
        return k if scenario == "domain" else n_tasks * k

    # ---- data ------------------------------------------------------------------------------------
    def gather(
        self, split: Split, rows: torch.Tensor, tasks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Examples of per-run rows ``[S, B]`` of tasks ``[S, B]`` (0-based): (x ``[S, B, ...]``, y ``[S, B]``)."""
        x = split.x[rows]
        if self.data.perms is not None:
            runs = torch.arange(rows.shape[0], device=rows.device).unsqueeze(1)
            x = x.gather(2, self.data.perms[runs, tasks])
        if x.dtype == torch.uint8:
            x = x.to(torch.float32).mul_(self.data.uint8_scale)
        y = split.local[rows]
        if self.scenario != "domain":
            y = y + tasks * self.data.k
        return x, y

    def n_logits(self, tasks_seen: int) -> int | None:
        """Outputs of the softmax in class-incremental learning (None otherwise)."""
        return self.data.k * max(tasks_seen, 1) if self.scenario == "class" else None

    def task_batches(self, task: int) -> Callable[[int, int], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
        """The ``batches(n, batch_size)`` of `lop.algos.method_layer.TaskEnd` for task ``task`` (0-based):
        the first ``n`` of the task's training examples in a per-run order fixed by the task number."""
        rows = self.data.train.rows[task]

        def batches(n: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            order = self.streams.permutation("cl/end_task", task, len(rows))[:, : min(n, len(rows))]
            sel = rows[order]
            for b0 in range(0, sel.shape[1], batch_size):
                r = sel[:, b0 : b0 + batch_size]
                yield self.gather(self.data.train, r, torch.full_like(r, task))

        return batches

    # ---- training ----------------------------------------------------------------------------------
    def set_training(self, mode: bool) -> None:
        """Training or evaluation mode of a network that has one (dropout: `lop.nets.zenke_convnet`);
        the updates run in training mode, everything else (tests, probes, end-of-task statistics) in
        evaluation mode."""
        if hasattr(self.net, "training"):
            self.net.training = mode

    def train_unit(self, unit: int) -> list[MetricBlock]:
        blocks: list[MetricBlock] = []
        self.set_training(False)
        if unit == 0:
            blocks += self.evaluate(0) + self.probe(0)
        task, s, dev = unit + 1, self.streams.n, self.streams.device
        if self.reset_optimizer and unit > 0:
            self.learner.reset_optimizer_state()
        tasks = range(task) if self.joint else [unit]
        train = self.data.train
        pool_rows = torch.cat([train.rows[t] for t in tasks])
        pool_tasks = torch.cat([torch.full_like(train.rows[t], t) for t in tasks])
        n, bs = len(pool_rows), self.batch_size
        n_batches = -(-n // bs)
        n_logits = self.n_logits(task)
        t = int(self.step_count)
        loss_sum = torch.zeros(s, device=dev)
        acc_sum = torch.zeros(s, device=dev)
        self.set_training(True)
        for epoch in range(self.epochs):
            order = self.streams.permutation("cl/order", unit * self.epochs + epoch, n)
            rows, rtasks = pool_rows[order], pool_tasks[order]
            last = epoch == self.epochs - 1
            for b in range(n_batches):
                sl = slice(b * bs, (b + 1) * bs)
                x, y = self.gather(train, rows[:, sl], rtasks[:, sl])
                loss, acc = self.learner.step(t, x, y, n_logits)
                t += 1
                if last:
                    loss_sum += loss
                    acc_sum += acc
        self.step_count.fill_(t)
        self.set_training(False)
        self.learner.end_task(task, self.task_batches(unit), n_logits)
        if self.learner.methods.has_boundary:
            probe_x = self.probe_batch(unit, train)

            def probe() -> list[torch.Tensor]:
                with torch.no_grad():
                    _, acts = self.net(probe_x, return_activations=True)
                return [acts[layer.name] for layer in self.cbp_layers]

            self.learner.at_boundary(task, probe)
        self.mark_diverged(self.learner.bad, task)
        blocks += [
            self.metric("train_loss", task, loss_sum / n_batches),
            self.metric("train_accuracy", task, acc_sum / n_batches),
        ]
        blocks += self.evaluate(task) + self.probe(task)
        if task == self.n_units:
            blocks += self.summaries()
        return blocks

    # ---- evaluation --------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, trained: int) -> list[MetricBlock]:
        """Test accuracy on every task after ``trained`` tasks: row ``trained`` of the accuracy matrix."""
        test, s = self.data.test, self.streams.n
        for j, rows in enumerate(test.rows):
            correct = torch.zeros(s, dtype=torch.float64, device=self.streams.device)
            for b0 in range(0, len(rows), self.eval_batch):
                r = rows[b0 : b0 + self.eval_batch].expand(s, -1)
                x, y = self.gather(test, r, torch.full_like(r, j))
                pred = self.learner.predict(x, y, self.n_logits(max(trained, j + 1)))
                correct += (pred == y).sum(1, dtype=torch.float64)
            self.matrix[:, trained, j] = correct / len(rows)
        return [
            self.metric(cl_metrics.task_metric(j + 1), trained, self.matrix[:, trained, j])
            for j in range(len(test.rows))
        ]

    def probe_batch(self, task: int, split: Split) -> torch.Tensor:
        rows = split.rows[task][: self.probe_examples].expand(self.streams.n, -1)
        return self.gather(split, rows, torch.full_like(rows, task))[0]

    @torch.no_grad()
    def probe(self, trained: int) -> list[MetricBlock]:
        """Plasticity probes on the first test examples of task ``max(trained, 1)``."""
        x = self.probe_batch(max(trained, 1) - 1, self.data.test)
        _, acts = self.net(x, return_activations=True)
        out = [self.metric("weight_magnitude", trained, metrics.weight_magnitude(self.learner.params))]
        for name, h in acts.items():
            pos = h.dim() - 3
            out.append(self.metric(f"dead_units/{name}", trained, metrics.dead_units(h, pos)))
            out.append(self.metric(f"dormant_units/{name}", trained, metrics.dormant_units(h, 0.01, pos)))
            if pos == 0:
                ranks = metrics.rank_metrics(h)
                for key in ("effective_rank", "stable_rank"):
                    out.append(self.metric(f"{key}/{name}", trained, ranks[key]))
        return out

    def summaries(self) -> list[MetricBlock]:
        """``acc``, ``bwt``, ``fwt``, ``forgetting``, ``avg_incremental_acc`` of each run's matrix."""
        values = cl_metrics.summaries(self.matrix.cpu().numpy())
        return [
            self.metric(name, self.n_units, torch.as_tensor(np.asarray(values[name]), dtype=torch.float64))
            for name in cl_metrics.SUMMARY_METRICS
        ]


# ---- data loading -------------------------------------------------------------------------------------
def _limit(a: np.ndarray, b: np.ndarray, n: int, key: str) -> tuple[np.ndarray, np.ndarray]:
    if n > len(a):
        raise ConfigError(f"problem.{key}", f"{n} > {len(a)} examples in the dataset; lower it (0 = all)")
    return (a[:n], b[:n]) if n else (a, b)


def load_flat_digits(
    dataset: str, data_dir: str, n_train: int, n_test: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """(x_train ``[N, D]`` in [0, 1], y_train, x_test, y_test, stand_in) of MNIST or the embedded 8×8
    digits (a fixed 4:1 train/test split of its 1,797 examples, `holdout_split`); ``n_train``/``n_test``
    keep the first examples (0 = all)."""
    if dataset == "digits":
        from lop.data.digits import load_digits

        xs, ys, xt, yt = holdout_split(*load_digits())
        stand_in = True
    else:
        from lop.data.artifact import prepared_stand_in
        from lop.data.mnist import DATASET, load_mnist

        d = load_mnist(data_dir)
        xs = d["train_images"].reshape(len(d["train_images"]), -1).astype(np.float32) / 255.0
        xt = d["test_images"].reshape(len(d["test_images"]), -1).astype(np.float32) / 255.0
        ys, yt = d["train_labels"].astype(np.int64), d["test_labels"].astype(np.int64)
        stand_in = prepared_stand_in(data_dir, DATASET)
    xs, ys = _limit(xs, ys, n_train, "n_train")
    xt, yt = _limit(xt, yt, n_test, "n_test")

    def put(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    return put(xs), put(ys.astype(np.int64)), put(xt), put(yt.astype(np.int64)), stand_in
