"""Experiment `cl_permuted_mnist`: permuted MNIST as a continual-learning benchmark, with the accuracy
matrix (docs/protocols/cl_permuted_mnist.md).

Zenke, Poole & Ganguli's protocol: 10 tasks, task 1 the unpermuted images, every later task one fixed
random pixel permutation (per run, from its seed); a 784-2000-2000-10 ReLU network with one shared head
(domain-incremental), Adam 1e-3 without a reset between tasks, batch 256, 20 epochs per task; every task
is tested on its permuted MNIST test set before training and after every task
(`lop.problems.cl_tasks`). ``dataset: digits`` uses the embedded 8×8 digits instead (the offline
"permuted digits" variant; 64 inputs, a 4:1 train/test split), recorded as ``stand_in: true``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lop.algos.method_layer import supported_keys
from lop.experiments.base import ExperimentSpec, RunSpec
from lop.experiments.schemas import CLPermutedMNISTProblem
from lop.nets.mlp_classifier import MLPClassifier
from lop.problems.cl_tasks import TaskSequenceTrainer, load_flat_digits, permuted_tasks
from lop.problems.den_tasks import with_den
from lop.problems.task_sequence import TaskSequenceLearner
from lop.rng import RunStreams


class CLPermutedMNISTTrainer(TaskSequenceTrainer):
    """Permuted (MNIST or digits) tasks on a seed-batched MLP; unit = one task."""

    def __init__(
        self, problem: CLPermutedMNISTProblem, runs: Sequence[RunSpec], device: torch.device
    ) -> None:
        p = self.p = problem
        streams = RunStreams([r.seed for r in runs], device)
        xs, ys, xt, yt, self.stand_in = load_flat_digits(p.dataset, p.data_dir, p.n_train, p.n_test, device)
        data = permuted_tasks(xs, ys, xt, yt, p.n_tasks, streams)
        n_out = self.n_outputs(p.scenario, p.n_tasks, data.k)
        net = MLPClassifier([xs.shape[1]] + [p.width] * p.depth + [n_out], p.activation, streams, init=p.init)
        self.setup_from_problem(p, data, net, runs, streams)


EXPERIMENT = ExperimentSpec(
    name="cl_permuted_mnist",
    problem_cls=CLPermutedMNISTProblem,
    build=with_den(CLPermutedMNISTTrainer),
    description="Permuted MNIST task sequence with the accuracy matrix (Zenke et al. 2017); `dataset: digits` offline",
    needs_data=("mnist",),
    supports=supported_keys(TaskSequenceLearner.HOOK_POINTS) | {"joint", "den"},
)
