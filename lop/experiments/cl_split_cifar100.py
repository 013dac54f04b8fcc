"""Experiment `cl_split_cifar100`: split CIFAR-100, 10 tasks of 10 classes, in the three scenarios
(docs/protocols/cl_split_cifar100.md).

Task ``t`` holds the CIFAR-100 classes ``10t .. 10t+9`` (the dataset's class order), all 500 training
and 100 test images of each. The network is the project's seed-batched ConvNet
(`lop.nets.convnet.ConvNet`, three conv layers and two hidden fully connected layers) with ``T·k``
outputs (task- and class-incremental) or ``k`` (domain-incremental); Adam 1e-3 reset at every task,
batch 256, 60 epochs per task (Zenke et al.'s CIFAR schedule). The offline demo and the tests read a
prepared CIFAR-100 stand-in (``data_dir: data/prepared/cifar100-standin``), recorded as ``stand_in``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lop.algos.method_layer import supported_keys
from lop.experiments.base import ExperimentSpec, RunSpec
from lop.experiments.schemas import CLSplitCIFAR100Problem
from lop.nets.convnet import ConvNet
from lop.problems.cl_tasks import TaskSequenceTrainer, split_tasks
from lop.problems.task_sequence import TaskSequenceLearner
from lop.rng import RunStreams


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` examples of every class, in file order (0 = all)."""
    if not per_class:
        return np.arange(len(labels))
    rank = np.zeros(len(labels), dtype=np.int64)
    seen: dict[int, int] = {}
    for i, c in enumerate(labels.tolist()):
        rank[i] = seen.get(c, 0)
        seen[c] = rank[i] + 1
    return np.flatnonzero(rank < per_class)


class CLSplitCIFAR100Trainer(TaskSequenceTrainer):
    """Split CIFAR-100 tasks on the seed-batched ConvNet; unit = one task."""

    def __init__(
        self, problem: CLSplitCIFAR100Problem, runs: Sequence[RunSpec], device: torch.device
    ) -> None:
        from lop.data.artifact import prepared_stand_in
        from lop.data.cifar100 import DATASET, load_cifar100

        p = self.p = problem
        streams = RunStreams([r.seed for r in runs], device)
        a = load_cifar100(p.data_dir, verify=p.verify_data)
        self.stand_in = prepared_stand_in(p.data_dir, DATASET)
        ys, yt = a["train_labels"].astype(np.int64), a["test_labels"].astype(np.int64)
        tr, te = first_per_class(ys, p.train_per_class), first_per_class(yt, p.test_per_class)

        def put(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(x)).to(device)

        data = split_tasks(
            put(a["train_images"][tr]),
            put(ys[tr]),
            put(a["test_images"][te]),
            put(yt[te]),
            p.n_tasks,
            p.classes_per_task,
        )
        net = ConvNet(streams, self.n_outputs(p.scenario, p.n_tasks, data.k))
        self.setup(
            data,
            net,
            runs,
            streams,
            scenario=p.scenario,
            epochs_per_task=p.epochs_per_task,
            batch_size=p.batch_size,
            probe_examples=p.probe_examples,
            eval_batch=p.eval_batch,
            reset_optimizer=p.reset_optimizer,
        )


EXPERIMENT = ExperimentSpec(
    name="cl_split_cifar100",
    problem_cls=CLSplitCIFAR100Problem,
    build=CLSplitCIFAR100Trainer,
    description="Split CIFAR-100 (10 x 10 classes) in the task/domain/class scenarios",
    needs_data=("cifar100",),
    supports=supported_keys(TaskSequenceLearner.HOOK_POINTS) | {"joint"},
)
