"""Experiment `cl_split_mnist`: split MNIST, 5 tasks of 2 digits, in the three scenarios
(docs/protocols/cl_split_mnist.md).

Task ``t`` holds digits ``2t`` and ``2t+1`` (0/1, 2/3, ...). ``scenario: task`` trains a 10-output head
whose softmax is masked to the example's task (the multi-head of Zenke et al.), ``domain`` one shared
2-output head (odd or even position in the pair), ``class`` the 10 outputs with the softmax over the
digits seen so far (`lop.problems.cl_tasks`). Defaults follow Zenke et al.: a 784-256-256 ReLU MLP,
Adam 1e-3 reset at every task, batch 64, 10 epochs per task. ``dataset: digits`` uses the embedded 8×8
digits ("split digits", the offline demo), recorded as ``stand_in: true``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from lop.algos.method_layer import supported_keys
from lop.config import check
from lop.experiments.base import ExperimentSpec, RunSpec
from lop.nets.mlp_classifier import MLPClassifier
from lop.problems.cl_tasks import Scenario, TaskSequenceTrainer, load_flat_digits, split_tasks
from lop.problems.den_tasks import with_den
from lop.problems.task_sequence import TaskSequenceLearner
from lop.rng import RunStreams


@dataclass(frozen=True)
class CLSplitMNISTProblem:
    """Problem settings; defaults are Zenke et al.'s split-MNIST protocol (task-incremental)."""

    dataset: Literal["mnist", "digits"] = "mnist"
    data_dir: str = "data/prepared/mnist"
    n_train: int = 0  # training examples used (0 = all)
    n_test: int = 0  # test examples used (0 = all)
    n_tasks: int = 5
    classes_per_task: int = 2
    width: int = 256
    depth: int = 2
    activation: Literal["relu", "tanh", "sigmoid", "leaky_relu", "elu", "swish", "selu"] = "relu"
    init: Literal["kaiming_uniform", "lecun_uniform", "torch_default"] = "kaiming_uniform"
    scenario: Scenario = "task"
    epochs_per_task: int = 10
    batch_size: int = 64
    reset_optimizer: bool = True
    probe_examples: int = 500
    eval_batch: int = 2000

    def validate(self) -> list[tuple[str, str]]:
        return (
            check(self.n_train >= 0, "n_train", "must be >= 0 (0 = all)")
            + check(self.n_test >= 0, "n_test", "must be >= 0 (0 = all)")
            + check(self.classes_per_task >= 2, "classes_per_task", "must be >= 2")
            + check(
                0 < self.n_tasks * self.classes_per_task <= 10,
                "n_tasks",
                "n_tasks × classes_per_task must be within 1..10 (the digits)",
            )
            + check(self.width > 0 and self.depth >= 1, "width", "need width > 0 and depth >= 1")
            + check(self.epochs_per_task > 0, "epochs_per_task", "must be > 0")
            + check(self.batch_size > 0, "batch_size", "must be > 0")
            + check(self.probe_examples > 0, "probe_examples", "must be > 0")
            + check(self.eval_batch > 0, "eval_batch", "must be > 0")
        )


class CLSplitMNISTTrainer(TaskSequenceTrainer):
    """Split (MNIST or digits) tasks on a seed-batched MLP; unit = one task."""

    def __init__(self, problem: CLSplitMNISTProblem, runs: Sequence[RunSpec], device: torch.device) -> None:
        p = self.p = problem
        streams = RunStreams([r.seed for r in runs], device)
        xs, ys, xt, yt, self.stand_in = load_flat_digits(p.dataset, p.data_dir, p.n_train, p.n_test, device)
        data = split_tasks(xs, ys, xt, yt, p.n_tasks, p.classes_per_task)
        n_out = self.n_outputs(p.scenario, p.n_tasks, data.k)
        net = MLPClassifier([xs.shape[1]] + [p.width] * p.depth + [n_out], p.activation, streams, init=p.init)
        self.setup(
            data, net, runs, streams,
            scenario=p.scenario, epochs_per_task=p.epochs_per_task, batch_size=p.batch_size,
            probe_examples=p.probe_examples, eval_batch=p.eval_batch, reset_optimizer=p.reset_optimizer,
        )


EXPERIMENT = ExperimentSpec(
    name="cl_split_mnist",
    problem_cls=CLSplitMNISTProblem,
    build=with_den(CLSplitMNISTTrainer),
    description="Split MNIST (5 x 2 digits) in the task/domain/class scenarios; `dataset: digits` offline",
    needs_data=("mnist",),
    supports=supported_keys(TaskSequenceLearner.HOOK_POINTS) | {"joint", "den"},
)
