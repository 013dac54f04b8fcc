"""Task sequences, per-run gathering and data loading of the image experiments (lop.problems.image_tasks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lop.config import MethodConfig
from lop.data.artifact import ArtifactWriter
from lop.errors import DataError
from lop.nets.convnet import ConvNet
from lop.problems.image_tasks import (
    ClassGroupSequence,
    MinibatchLearner,
    class_examples,
    class_index,
    class_order,
    downsample,
    gather_runs,
    load_cifar_tensors,
    load_imagenet_tensors,
    probe_indices,
)
from lop.rng import RunStreams


def test_every_class_once_per_block_and_fresh_blocks():
    streams = RunStreams([0, 7])
    seq = ClassGroupSequence(streams, n_classes=10, per_task=2)
    tasks = seq.sequence(15)  # 3 blocks of 5 tasks
    assert tasks.shape == (2, 15, 2)
    for s in range(2):
        blocks = [tasks[s, b * 5 : (b + 1) * 5].flatten() for b in range(3)]
        for block in blocks:
            assert sorted(block.tolist()) == list(range(10))  # every class used, none twice
        pairs = [set(map(tuple, tasks[s, b * 5 : (b + 1) * 5].sort(dim=1).values.tolist())) for b in range(3)]
        assert all(len(p) == 5 for p in pairs)  # no pair repeated within a block
        assert not torch.equal(blocks[0], blocks[1])  # a fresh permutation, not a silent repeat
    assert not torch.equal(tasks[0], tasks[1])  # different seeds, different sequences


def test_leftover_classes_are_skipped_when_per_task_does_not_divide():
    seq = ClassGroupSequence(RunStreams([3]), n_classes=7, per_task=2)
    assert seq.tasks_per_block == 3
    first = seq.sequence(3)[0].flatten().tolist()
    assert len(set(first)) == 6 and set(first) <= set(range(7))


def test_sequences_are_deterministic_and_batch_independent():
    alone = ClassGroupSequence(RunStreams([5]), 20).sequence(25)
    again = ClassGroupSequence(RunStreams([5]), 20).sequence(25)
    batch = ClassGroupSequence(RunStreams([1, 5, 9]), 20).sequence(25)
    assert torch.equal(alone, again)
    assert torch.equal(alone[0], batch[1])
    order = class_order(RunStreams([2, 5]), 100)
    assert sorted(order[1].tolist()) == list(range(100))
    assert torch.equal(order[1], class_order(RunStreams([5]), 100)[0])


def test_class_examples_and_gather_runs():
    per_class = torch.arange(4 * 3).view(4, 3, 1)  # class c, image i -> value 3c + i
    classes = torch.tensor([[2, 0], [1, 3]])
    x, y = class_examples(per_class, classes)
    assert x.shape == (2, 6, 1) and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert x[0, :, 0].tolist() == [6, 7, 8, 0, 1, 2] and x[1, :, 0].tolist() == [3, 4, 5, 9, 10, 11]
    idx = torch.tensor([[5, 0], [1, 1]])
    assert gather_runs(x, idx)[..., 0].tolist() == [[2, 6], [4, 4]]
    flat_idx, labels = class_index(classes, 3)  # the same examples, as indices into the flat data
    assert torch.equal(per_class.flatten(0, 1)[flat_idx], x) and torch.equal(labels, y)
    p = probe_indices(RunStreams([0, 1]), "probe", 0, n_pool=10, n=4)
    assert p.shape == (2, 4) and all(len(set(r)) == 4 for r in p.tolist())


def test_downsample_is_an_average_pool():
    x = torch.arange(16.0).view(1, 1, 1, 4, 4).expand(2, 3, 1, 4, 4).contiguous()
    y = downsample(x, 2)
    assert y.shape == (2, 3, 1, 2, 2)
    assert y[0, 0, 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]
    assert downsample(x, 4) is x


def test_loss_uses_only_the_first_n_logits():
    streams = RunStreams([0, 1])
    net = ConvNet(streams, n_out=5)
    learner = MinibatchLearner(net, [MethodConfig(lr=0.1)] * 2, streams)
    w0 = net.params["fc3.weight"].detach().clone()
    x = torch.rand(2, 8, 3, 32, 32)
    y = torch.randint(0, 2, (2, 8))
    loss, acc = learner.step(0, x, y, n_logits=2)
    w1 = net.params["fc3.weight"].detach()
    assert loss.shape == (2,) and acc.shape == (2,)
    assert not torch.equal(w0[:, :2], w1[:, :2])
    assert torch.equal(w0[:, 2:], w1[:, 2:])  # unseen classes' output rows get no gradient


def test_missing_imagenet_dir_says_what_to_run(tmp_path):
    with pytest.raises(DataError, match="lop data"):
        load_imagenet_tensors(
            tmp_path / "nope", torch.device("cpu"), n_classes=0, train_per_class=600, test_per_class=100
        )


def _fake_cifar(path, counts):
    """A prepared CIFAR-100 artifact whose class c has counts[c] training images (+2 val, 3 test)."""
    labels, val_labels = [], []
    for c in range(100):
        labels += [c] * counts[c]
        val_labels += [c] * 2
    train_labels = np.array(labels + val_labels, dtype=np.uint8)
    n = len(train_labels)
    test_labels = np.repeat(np.arange(100, dtype=np.uint8), 3)
    with ArtifactWriter(path, "cifar100", "standin") as w:
        w.save("train_images.npy", np.zeros((n, 3, 32, 32), np.uint8))
        w.save("train_labels.npy", train_labels)
        w.save("test_images.npy", np.zeros((len(test_labels), 3, 32, 32), np.uint8))
        w.save("test_labels.npy", test_labels)
        w.save("train_index.npy", np.arange(len(labels), dtype=np.int64))
        w.save("val_index.npy", np.arange(len(labels), n, dtype=np.int64))
        w.commit({"n_classes": 100})


def test_cifar_class_with_too_few_images_is_named(tmp_path):
    counts = [6] * 100
    counts[37] = 4
    _fake_cifar(tmp_path / "c", counts)
    kw = dict(val_per_class=2, test_per_class=3)
    data = load_cifar_tensors(tmp_path / "c", torch.device("cpu"), train_per_class=4, **kw)
    assert data.train.shape == (100, 4, 3, 32, 32) and data.val.shape[1] == 2 and data.test.shape[1] == 3
    with pytest.raises(DataError, match=r"class 37 has 4 train images.*train_per_class"):
        load_cifar_tensors(tmp_path / "c", torch.device("cpu"), train_per_class=5, **kw)
    with pytest.raises(DataError, match="no prepared CIFAR-100"):
        load_cifar_tensors(tmp_path / "missing", torch.device("cpu"), train_per_class=5, **kw)
