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

import torch

from lop.algos.method_layer import supported_keys
from lop.experiments.base import ExperimentSpec, RunSpec
from lop.experiments.schemas import CLSplitMNISTProblem
from lop.nets.mlp_classifier import MLPClassifier
from lop.problems.cl_tasks import TaskSequenceTrainer, load_flat_digits, split_tasks
from lop.problems.den_tasks import with_den
from lop.problems.task_sequence import TaskSequenceLearner
from lop.rng import RunStreams


class CLSplitMNISTTrainer(TaskSequenceTrainer):
    """Split (MNIST or digits) tasks on a seed-batched MLP; unit = one task."""

    def __init__(self, problem: CLSplitMNISTProblem, runs: Sequence[RunSpec], device: torch.device) -> None:
        p = self.p = problem
        streams = RunStreams([r.seed for r in runs], device)
        xs, ys, xt, yt, self.stand_in = load_flat_digits(p.dataset, p.data_dir, p.n_train, p.n_test, device)
        data = split_tasks(xs, ys, xt, yt, p.n_tasks, p.classes_per_task)
        n_out = self.n_outputs(p.scenario, p.n_tasks, data.k)
        sizes = [xs.shape[1]] + [p.width] * p.depth + [n_out]
        net = MLPClassifier(sizes, p.activation, streams, init=p.init, output_init=p.output_init)
        self.setup_from_problem(p, data, net, runs, streams)


EXPERIMENT = ExperimentSpec(
    name="cl_split_mnist",
    problem_cls=CLSplitMNISTProblem,
    build=with_den(CLSplitMNISTTrainer),
    description="Split MNIST (5 x 2 digits) in the task/domain/class scenarios; `dataset: digits` offline",
    needs_data=("mnist",),
    supports=supported_keys(TaskSequenceLearner.HOOK_POINTS) | {"joint", "den"},
)
