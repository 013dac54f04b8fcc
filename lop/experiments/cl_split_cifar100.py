"""Experiment `cl_split_cifar100`: split CIFAR-100, 10 tasks of 10 classes, in the three scenarios
(docs/protocols/cl_split_cifar100.md).

Task ``t`` holds the CIFAR-100 classes ``10t .. 10t+9`` (the dataset's class order), all 500 training
and 100 test images of each. The network is the project's seed-batched ConvNet
(`lop.nets.convnet.ConvNet`, three conv layers and two hidden fully connected layers) with ``T·k``
outputs (task- and class-incremental) or ``k`` (domain-incremental); Adam 1e-3 reset at every task,
batch 256, 60 epochs per task (Zenke et al.'s CIFAR schedule). The offline demo and the tests read a
prepared CIFAR-100 stand-in (``data_dir: data/prepared/cifar100-standin``), recorded as ``stand_in``.

**Zenke et al.'s CIFAR-10 → CIFAR-100 variant** (``first_task: cifar10``, with ``cifar10_dir`` the prepared
CIFAR-10): task 1 is the whole of CIFAR-10 (its 10 classes, 5,000 training and 1,000 test images each),
tasks 2..T are CIFAR-100 classes ``0..9``, ``10..19``, ...; the labels are CIFAR-10's 0..9 followed by
CIFAR-100's shifted by 10, so the task-incremental heads are outputs ``10(t−1) .. 10t−1``
(``classes_per_task`` must be 10). Zenke et al. run 6 tasks (60 outputs) on their convnet (``net: zenke``,
`lop.nets.zenke_convnet.ZenkeConvNet`, with dropout) with a zero-initialised output layer
(``output_init: zero``, also available on the default ``net: convnet``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lop.algos.method_layer import supported_keys
from lop.experiments.base import ExperimentSpec, RunSpec
from lop.experiments.schemas import CLSplitCIFAR100Problem
from lop.nets.convnet import ConvNet
from lop.nets.zenke_convnet import ZenkeConvNet
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


def load_task_images(p: CLSplitCIFAR100Problem) -> tuple[list[np.ndarray], bool]:
    """(x_train, y_train, x_test, y_test) of the task sequence's classes, and whether any source is a stand-in.

    Plain split: CIFAR-100 with its own labels. ``first_task: cifar10``: CIFAR-10 (labels 0..9) followed
    by the CIFAR-100 classes the later tasks use (labels + 10). ``train_per_class``/``test_per_class``
    keep the first images of every class of both datasets in file order (0 = all).
    """
    from lop.data import cifar10, cifar100
    from lop.data.artifact import prepared_stand_in

    def part(a: dict[str, np.ndarray], keep: int, offset: int) -> list[np.ndarray]:
        ys, yt = a["train_labels"].astype(np.int64), a["test_labels"].astype(np.int64)
        tr = first_per_class(ys, p.train_per_class)
        te = first_per_class(yt, p.test_per_class)
        tr, te = tr[ys[tr] < keep], te[yt[te] < keep]
        return [a["train_images"][tr], ys[tr] + offset, a["test_images"][te], yt[te] + offset]

    c10 = p.first_task == "cifar10"
    n_c100 = (p.n_tasks - 1 if c10 else p.n_tasks) * p.classes_per_task
    parts = [part(cifar100.load_cifar100(p.data_dir, verify=p.verify_data), n_c100, 10 if c10 else 0)]
    stand_in = prepared_stand_in(p.data_dir, cifar100.DATASET)
    if c10:
        parts.insert(0, part(cifar10.load_cifar10(p.cifar10_dir, verify=p.verify_data), 10, 0))
        stand_in = stand_in or prepared_stand_in(p.cifar10_dir, cifar10.DATASET)
    return [np.concatenate(arrays) for arrays in zip(*parts, strict=True)], stand_in


class CLSplitCIFAR100Trainer(TaskSequenceTrainer):
    """Split CIFAR-100 tasks (optionally CIFAR-10 first) on a seed-batched convnet; unit = one task."""

    def __init__(
        self, problem: CLSplitCIFAR100Problem, runs: Sequence[RunSpec], device: torch.device
    ) -> None:
        p = self.p = problem
        streams = RunStreams([r.seed for r in runs], device)
        (xs, ys, xt, yt), self.stand_in = load_task_images(p)

        def put(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(x)).to(device)

        data = split_tasks(put(xs), put(ys), put(xt), put(yt), p.n_tasks, p.classes_per_task)
        n_out = self.n_outputs(p.scenario, p.n_tasks, data.k)
        if p.net == "zenke":
            net = ZenkeConvNet(streams, n_out, output_init=p.output_init)
        else:
            net = ConvNet(streams, n_out, output_init=p.output_init)
        self.setup_from_problem(p, data, net, runs, streams)


EXPERIMENT = ExperimentSpec(
    name="cl_split_cifar100",
    problem_cls=CLSplitCIFAR100Problem,
    build=CLSplitCIFAR100Trainer,
    description="Split CIFAR-100 (10 x 10 classes) in the task/domain/class scenarios",
    needs_data=("cifar100", "cifar10"),
    supports=supported_keys(TaskSequenceLearner.HOOK_POINTS) | {"joint"},
)
