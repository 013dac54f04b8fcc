"""Experiment `continual_imagenet`: Continual ImageNet, binary tasks on 32×32 ImageNet (Fig. 1; docs/protocols/continual_imagenet.md).

Each task is a new group of `classes_per_task` classes (a pair) from a seeded permutation of the classes,
with a fresh permutation every ``n_classes // classes_per_task`` tasks (``class_order: repeat`` reuses the
first permutation, as the reference code did). A task trains for
`epochs_per_task` epochs over its ``classes_per_task × train_per_class`` images (600 per class) in
mini-batches of `batch_size`, reshuffled every epoch from the run's seed; the output layer is zeroed at
the start of every task. Unit = one task; metrics per task (step = task number, 1-based):
``test_accuracy`` (on the task's ``classes_per_task × test_per_class`` test images after the last epoch),
``train_accuracy`` / ``train_loss`` (means over the task's last epoch), ``weight_magnitude`` (mean |θ|),
and ``replaced_units`` (cumulative CBP replacements, CBP only).

The whole dataset lives on the training device as uint8; all S runs of a group train in one process
(the ConvNet is seed-batched). ``arch: linear`` trains the 3072 → 2 linear baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lop.algos.method_layer import supported_keys
from lop.errors import DataError
from lop.experiments.base import ExperimentSpec, MetricBlock, RunSpec, Trainer
from lop.experiments.schemas import ContinualImageNetProblem
from lop.metrics import weight_magnitude
from lop.nets.convnet import build_imagenet_net
from lop.problems.image_tasks import (
    ClassGroupSequence,
    MinibatchLearner,
    class_examples,
    gather_runs,
    load_imagenet_tensors,
    to_float_images,
)
from lop.rng import RunStreams

INPUT_SCALES = {"unit": 1.0 / 255.0, "raw": 1.0}


class ContinualImageNetTrainer(Trainer):
    """Trains S runs (seeds × settings of one method) on their own task sequences; unit = one task."""

    unit_name = "task"
    state_attrs = ("net", "learner")

    def __init__(
        self, problem: ContinualImageNetProblem, runs: Sequence[RunSpec], device: torch.device
    ) -> None:
        self.p = problem
        self.streams = RunStreams([r.seed for r in runs], device)
        self.data = load_imagenet_tensors(
            problem.data_dir,
            device,
            n_classes=problem.n_classes,
            train_per_class=problem.train_per_class,
            test_per_class=problem.test_per_class,
            verify=problem.verify_data,
        )
        self.stand_in = self.data.stand_in
        if self.data.n_classes < problem.classes_per_task:
            raise DataError(
                f"{problem.data_dir}: {self.data.n_classes} classes, fewer than problem.classes_per_task"
            )
        arch = "linear" if runs[0].config.arch == "linear" else "convnet"
        self.net = build_imagenet_net(
            arch, self.streams, problem.classes_per_task, channels_last=problem.channels_last
        )
        configs = [r.config for r in runs]
        self.learner = MinibatchLearner(self.net, configs, self.streams, self.net.unit_layers())
        self.tasks = ClassGroupSequence(
            self.streams,
            self.data.n_classes,
            problem.classes_per_task,
            repeat=problem.class_order == "repeat",
        )
        self.scale = INPUT_SCALES[problem.input_scale]
        self.n_train = problem.classes_per_task * problem.train_per_class
        self.n_batches = -(-self.n_train // problem.batch_size)
        self.steps_per_task = problem.epochs_per_task * self.n_batches
        self.n_units = problem.n_tasks
        self.head = [t for name, t in self.net.named_parameters() if name.startswith(self._head_prefix())]
        self.init_divergence(len(runs), device)

    def _head_prefix(self) -> str:
        return "fc3." if "fc3.weight" in self.net.params else "fc."

    def train_unit(self, unit: int) -> list[MetricBlock]:
        """Train task `unit` from a zeroed output layer and test on its held-out images."""
        p, s = self.p, self.streams.n
        classes = self.tasks.classes(unit)
        x_train, y = class_examples(self.data.train, classes)
        y_train = y.expand(s, -1)
        self.net.reset_head()
        if p.head_reset_clears_momentum:
            self.learner.reset_optimizer_state(self.head)
        self.net.train()
        dev = self.streams.device
        loss_sum = torch.zeros(s, device=dev)
        acc_sum = torch.zeros(s, device=dev)
        base = unit * self.steps_per_task
        for epoch in range(p.epochs_per_task):
            perm = self.streams.permutation("tasks/shuffle", unit * p.epochs_per_task + epoch, self.n_train)
            xs, ys = gather_runs(x_train, perm), gather_runs(y_train, perm)
            last = epoch == p.epochs_per_task - 1
            for b in range(self.n_batches):
                sl = slice(b * p.batch_size, (b + 1) * p.batch_size)
                xb = to_float_images(xs[:, sl], self.scale)
                loss, acc = self.learner.step(base + epoch * self.n_batches + b, xb, ys[:, sl])
                if last:
                    loss_sum += loss
                    acc_sum += acc
        test_acc = self.evaluate(classes)
        task = unit + 1
        self.mark_diverged(self.learner.bad, task)
        step = torch.tensor([task], dtype=torch.int64)
        blocks = [
            MetricBlock("test_accuracy", step, test_acc.unsqueeze(1)),
            MetricBlock("train_accuracy", step, (acc_sum / self.n_batches).unsqueeze(1)),
            MetricBlock("train_loss", step, (loss_sum / self.n_batches).unsqueeze(1)),
            MetricBlock("weight_magnitude", step, weight_magnitude(self.learner.params).unsqueeze(1)),
        ]
        if self.learner.cbp is not None:
            replaced = torch.stack(self.learner.cbp.n_replaced).sum(0).to(torch.float64)
            blocks.append(MetricBlock("replaced_units", step, replaced.unsqueeze(1)))
        return blocks

    @torch.no_grad()
    def evaluate(self, classes: torch.Tensor) -> torch.Tensor:
        """Accuracy ``[S]`` of every run on the test images of its task's classes."""
        self.net.eval()
        x, y = class_examples(self.data.test, classes)
        logits = self.net(to_float_images(x, self.scale))
        self.net.train()
        return (logits.argmax(-1) == y).to(torch.float64).mean(1)


EXPERIMENT = ExperimentSpec(
    name="continual_imagenet",
    problem_cls=ContinualImageNetProblem,
    build=ContinualImageNetTrainer,
    description="Continual ImageNet: binary tasks on 32x32 ImageNet (Fig. 1)",
    needs_data=("imagenet32",),
    # the output layer is zeroed at every task start anyway: no head_reset/retrain
    supports=supported_keys(MinibatchLearner.HOOK_POINTS) | {"arch"},
)
