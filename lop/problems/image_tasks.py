"""Task sequences and on-device image data of the image experiments (docs/protocols/continual_imagenet.md, docs/protocols/incremental_cifar.md).

Everything random is drawn from `lop.rng.RunStreams` (row ``s`` depends only on run seed ``s``):

* Continual ImageNet (docs/protocols/continual_imagenet.md): tasks are disjoint groups of ``k`` classes (pairs) taken from a seeded
  permutation of the classes; after ``n_classes // k`` tasks every class has been used once and a
  *fresh* permutation is drawn (block ``b`` uses counter ``b`` of the stream), so no group repeats
  silently when the run is longer than one pass over the classes.
* Class-incremental CIFAR-100 (docs/protocols/incremental_cifar.md): one seeded order of the classes; the first ``classes_start``
  classes form increment 0, each later increment adds ``classes_per_increment``.
* Per-epoch shuffles and probe samples are ``[S, n]`` permutations / index draws at counters derived
  from the task or epoch number, so a resumed run draws the same numbers.

The data live on the training device as uint8 tensors laid out per class (``[K, n_per_class, 3, H, W]``)
and are gathered per run with index tensors, so a batch of S runs with different classes is one gather.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lop.algos.cbp import ContinualBackprop
from lop.algos.method_layer import MethodStack
from lop.config import MethodConfig
from lop.errors import DataError
from lop.nets.units import UnitLayer
from lop.rng import RunStreams

CLASS_ORDER_STREAM = "tasks/class_order"


# ---- class sequences --------------------------------------------------------------------------------
class ClassGroupSequence:
    """Seeded sequence of disjoint class groups (docs/protocols/continual_imagenet.md): task ``t`` uses classes ``classes(t)`` ``[S, k]``.

    Task ``t`` lies in block ``b = t // (n_classes // k)``; block ``b`` is a fresh permutation of the
    classes (stream ``name``, counter ``b``) cut into consecutive groups of ``k``. Within a block every
    class appears at most once; classes left over when ``k`` does not divide ``n_classes`` are unused
    in that block. With ``repeat=True`` every block reuses block 0's permutation, as the reference code
    did (task ``t`` and task ``t + n_classes // k`` train on the same classes).
    """

    def __init__(
        self,
        streams: RunStreams,
        n_classes: int,
        per_task: int = 2,
        name: str = CLASS_ORDER_STREAM,
        repeat: bool = False,
    ) -> None:
        if per_task < 1 or n_classes < per_task:
            raise ValueError(f"need 1 <= per_task <= n_classes, got {per_task} and {n_classes}")
        self.streams = streams
        self.n_classes = n_classes
        self.per_task = per_task
        self.name = name
        self.tasks_per_block = n_classes // per_task
        self.repeat = repeat
        self._block = -1
        self._perm: torch.Tensor | None = None

    def permutation(self, block: int) -> torch.Tensor:
        """``[S, n_classes]`` class permutation of block ``block`` (cached for the current block)."""
        if block != self._block or self._perm is None:
            self._perm = self.streams.permutation(self.name, block, self.n_classes)
            self._block = block
        return self._perm

    def classes(self, task: int) -> torch.Tensor:
        """``[S, per_task]`` int64 class indices of task ``task`` (0-based)."""
        if task < 0:
            raise ValueError(f"task must be >= 0, got {task}")
        block, j = divmod(task, self.tasks_per_block)
        k = self.per_task
        return self.permutation(0 if self.repeat else block)[:, j * k : (j + 1) * k]

    def sequence(self, n_tasks: int) -> torch.Tensor:
        """``[S, n_tasks, per_task]`` classes of the first ``n_tasks`` tasks (for inspection and tests)."""
        return torch.stack([self.classes(t) for t in range(n_tasks)], dim=1)


def class_order(streams: RunStreams, n_classes: int, name: str = CLASS_ORDER_STREAM) -> torch.Tensor:
    """``[S, n_classes]`` seeded class order of class-incremental learning (docs/protocols/incremental_cifar.md)."""
    return streams.permutation(name, 0, n_classes)


def seen_classes(order: torch.Tensor, increment: int, start: int, per_increment: int) -> int:
    """Number of classes seen during increment ``increment`` (0-based): start + increment·per_increment."""
    n = start + increment * per_increment
    if n > order.shape[1]:
        raise ValueError(f"increment {increment} needs {n} classes, the order has {order.shape[1]}")
    return n


# ---- per-run gathering ------------------------------------------------------------------------------
def gather_runs(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``out[s, j] = x[s, idx[s, j]]`` for x ``[S, N, ...]`` and idx ``[S, B]`` -> ``[S, B, ...]``."""
    rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
    return x[rows, idx]


def class_examples(per_class: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Examples of per-run class lists: per_class ``[K, n, ...]``, classes ``[S, c]`` ->
    (x ``[S, c·n, ...]``, labels ``[c·n]``) with label j = position of the class in the run's list."""
    x = per_class[classes]  # [S, c, n, ...]
    labels = torch.arange(classes.shape[1], device=per_class.device).repeat_interleave(per_class.shape[1])
    return x.flatten(1, 2), labels


def class_index(classes: torch.Tensor, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat example indices of per-run class lists without copying images: classes ``[S, c]`` ->
    (index ``[S, c·per_class]`` into a ``[K·per_class, ...]`` view of per-class data, labels ``[c·per_class]``
    with label j = position of the class in the run's list)."""
    offsets = torch.arange(per_class, device=classes.device)
    idx = (classes.unsqueeze(-1) * per_class + offsets).flatten(1)
    labels = torch.arange(classes.shape[1], device=classes.device).repeat_interleave(per_class)
    return idx, labels


def to_float_images(x: torch.Tensor, scale: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images -> float ``x · scale`` (scale 1/255 gives [0, 1])."""
    out = x.to(dtype)
    return out if scale == 1.0 else out.mul_(scale)


def downsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Average-pool float images ``[S, B, C, H, W]`` to ``size × size`` (H must be a multiple of size)."""
    h = x.shape[-1]
    if size == h:
        return x
    if h % size:
        raise ValueError(f"image size {h} is not a multiple of {size}")
    s, b, c = x.shape[:3]
    y = torch.nn.functional.avg_pool2d(x.reshape(s * b, c, h, h), h // size)
    return y.view(s, b, c, size, size)


# ---- Continual ImageNet data ------------------------------------------------------------------------
@dataclass
class ImageNetTensors:
    """Prepared ImageNet32 classes on the device: train ``[K, n_train, 3, 32, 32]``, test
    ``[K, n_test, ...]``; ``stand_in``: the artifact was prepared from stand-in files (its manifest's flag)."""

    train: torch.Tensor
    test: torch.Tensor
    stand_in: bool = False

    @property
    def n_classes(self) -> int:
        return int(self.train.shape[0])


def load_imagenet_tensors(
    data_dir: str | Path,
    device: torch.device,
    *,
    n_classes: int,
    train_per_class: int,
    test_per_class: int,
    verify: bool = True,
) -> ImageNetTensors:
    """Load classes ``0..n_classes-1`` (0 = all) of a prepared ImageNet32 artifact onto `device`.

    Uses the first `train_per_class` images of each class's train split and the first `test_per_class`
    of its test split (the artifact keeps the first 700 images per class in file order: 600 train,
    100 test). Missing or corrupt artifacts raise the loader's `DataError`; an artifact with fewer
    images than asked raises `DataError` naming the key to change.
    """
    from lop.data.artifact import MANIFEST, prepared_stand_in, read_json
    from lop.data.imagenet32 import DATASET, load_imagenet32

    data_dir = Path(data_dir)
    manifest = data_dir / MANIFEST
    available = None
    if manifest.is_file():
        available = int(read_json(manifest).get("n_classes", 0))
    if n_classes and available is not None and n_classes > available:
        raise DataError(
            f"{data_dir}: the prepared ImageNet32 has {available} classes, problem.n_classes asks for "
            f"{n_classes}; lower n_classes or prepare the full dataset"
        )
    classes = None if not n_classes else list(range(n_classes))
    arrays = load_imagenet32(data_dir, classes=classes, verify=verify)
    tr, te = arrays["train_images"], arrays["test_images"]
    for split, have, want, key in (
        ("train", tr.shape[1], train_per_class, "train_per_class"),
        ("test", te.shape[1], test_per_class, "test_per_class"),
    ):
        if have < want:
            raise DataError(
                f"{data_dir}: every class has {have} {split} images but problem.{key} = {want}; lower "
                f"{key} or prepare the artifact with more images per class (`lop data prepare imagenet32`)"
            )
    if tr.shape[0] < 2:
        raise DataError(f"{data_dir}: needs at least 2 classes, found {tr.shape[0]}")
    train = torch.from_numpy(np.ascontiguousarray(tr[:, :train_per_class])).to(device)
    test = torch.from_numpy(np.ascontiguousarray(te[:, :test_per_class])).to(device)
    return ImageNetTensors(train, test, stand_in=prepared_stand_in(data_dir, DATASET))


# ---- CIFAR-100 data ---------------------------------------------------------------------------------
@dataclass
class CifarTensors:
    """Prepared CIFAR-100 on the device, per class: train/val/test ``[100, n, 3, 32, 32]`` uint8;
    ``stand_in``: the artifact was prepared from stand-in files (its manifest's flag)."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    stand_in: bool = False


def _by_class(
    labels: np.ndarray, index: np.ndarray, per_class: int, n_classes: int, what: str, key: str, where: Path
) -> np.ndarray:
    """``[n_classes, per_class]`` indices: the first `per_class` entries of `index` of each class."""
    lab = labels[index].astype(np.int64)
    counts = np.bincount(lab, minlength=n_classes)
    short = np.flatnonzero(counts[:n_classes] < per_class)
    if short.size:
        c = int(short[0])
        raise DataError(
            f"{where}: class {c} has {int(counts[c])} {what} images but problem.{key} = {per_class}; "
            f"lower {key} or re-prepare the dataset (`lop data prepare cifar100`)"
        )
    order = np.argsort(lab, kind="stable")
    starts = np.searchsorted(lab[order], np.arange(n_classes))
    take = starts[:, None] + np.arange(per_class)[None, :]
    return index[order[take]]


def first_validation_split(
    labels: np.ndarray, train_index: np.ndarray, val_index: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(train_index, val_index), sorted: the same images and the same hold-out size per class as the
    artifact's split, but the hold-out is the *first* images of each class in file order instead of
    the last (the reference code's split)."""
    pool = np.sort(np.concatenate([train_index, val_index]))
    lab = np.asarray(labels)[pool].astype(np.int64)
    n_val = np.bincount(np.asarray(labels)[val_index].astype(np.int64), minlength=int(lab.max(initial=0)) + 1)
    order = np.argsort(lab, kind="stable")
    sorted_lab = lab[order]
    rank = np.empty(lab.size, dtype=np.int64)
    rank[order] = np.arange(lab.size) - np.searchsorted(sorted_lab, sorted_lab, side="left")
    is_val = rank < n_val[lab]
    return pool[~is_val].astype(np.int64), pool[is_val].astype(np.int64)


def load_cifar_tensors(
    data_dir: str | Path,
    device: torch.device,
    *,
    train_per_class: int,
    val_per_class: int,
    test_per_class: int,
    n_classes: int = 100,
    verify: bool = True,
    validation_split: str = "last",
) -> CifarTensors:
    """Load a prepared CIFAR-100 artifact onto `device`, grouped by class (first images of each split).

    The artifact's split is 450 train + 50 validation images per class (the last 50 of each class in
    file order are validation) and 100 test images per class. ``validation_split="first"`` moves the
    hold-out to the *first* images of each class in file order (as many per class as the artifact holds
    out), as the reference code split it (`first_validation_split`). A class with fewer images than the
    problem asks for raises `DataError` naming the class and the key.
    """
    from lop.data.artifact import prepared_stand_in
    from lop.data.cifar100 import DATASET, load_cifar100

    data_dir = Path(data_dir)
    a = load_cifar100(data_dir, verify=verify)
    train_index, val_index = a["train_index"], a["val_index"]
    if validation_split == "first":
        train_index, val_index = first_validation_split(a["train_labels"], train_index, val_index)
    elif validation_split != "last":
        raise ValueError(f"validation_split must be 'last' or 'first', got {validation_split!r}")
    tr_idx = _by_class(
        a["train_labels"], train_index, train_per_class, n_classes, "train", "train_per_class", data_dir
    )
    va_idx = _by_class(
        a["train_labels"], val_index, val_per_class, n_classes, "validation", "val_per_class", data_dir
    )
    te_all = np.arange(len(a["test_labels"]))
    te_idx = _by_class(
        a["test_labels"], te_all, test_per_class, n_classes, "test", "test_per_class", data_dir
    )

    def put(images: np.ndarray, idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(images[idx])).to(device)

    return CifarTensors(
        put(a["train_images"], tr_idx),
        put(a["train_images"], va_idx),
        put(a["test_images"], te_idx),
        stand_in=prepared_stand_in(data_dir, DATASET),
    )


def probe_indices(streams: RunStreams, name: str, counter: int, n_pool: int, n: int) -> torch.Tensor:
    """``[S, min(n, n_pool)]`` distinct indices into a pool of ``n_pool`` examples (a seeded sample)."""
    return streams.permutation(name, counter, n_pool)[:, : min(n, n_pool)]


# ---- mini-batch learner -----------------------------------------------------------------------------
class MinibatchLearner:
    """A seed-batched image classifier's update: cross-entropy, then the method layer's points in their
    documented order (`lop.algos.method_layer`): data hook, gradient edits, batched SGD/Adam (L2 inside the
    optimiser), after-step hooks (Shrink & Perturb noise, then continual backprop over `cbp_layers`).

    ``net(x, return_activations=True)`` must return ``(logits, {layer name: activation})``. Non-finite
    losses are recorded per run on the device (`bad`), never synchronised per step.
    """

    HOOK_POINTS = frozenset({"mix_batch", "edit_grads", "after_step"})

    def __init__(
        self,
        net,
        methods: Sequence[MethodConfig],
        streams: RunStreams,
        cbp_layers: Sequence[UnitLayer] = (),
    ) -> None:
        self.net = net
        self.params = net.parameters()
        self.cbp_layers = list(cbp_layers)
        self.methods = MethodStack(
            methods,
            streams,
            params=self.params,
            unit_layers=self.cbp_layers,
            net=net,
            learner_points=self.HOOK_POINTS,
        )
        self.optimizer = self.methods.optimizer
        cbp = self.methods.get("cbp")
        self.cbp: ContinualBackprop | None = cbp.impl if cbp is not None else None  # type: ignore[attr-defined]
        self.bad = torch.zeros(streams.n, dtype=torch.bool, device=streams.device)

    def step(
        self, t: int, x: torch.Tensor, y: torch.Tensor, n_logits: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One update on images x ``[S, B, ...]`` with labels y ``[S, B]``; the loss uses only the first
        `n_logits` outputs (the classes seen so far). Returns (mean loss ``[S]``, accuracy ``[S]``)."""
        x, y = self.methods.mix_batch(t, x, y)
        acts: dict[str, torch.Tensor] = {}
        if self.methods.needs_activations:
            logits, acts = self.net(x, return_activations=True)
        else:
            logits = self.net(x)
        if n_logits is not None:
            logits = logits[..., :n_logits]
        logp = torch.log_softmax(logits.float(), dim=-1)
        loss = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(1)  # [S]
        grads = list(torch.autograd.grad(loss.sum(), self.params))
        self.methods.step(t, grads, [acts[layer.name].detach() for layer in self.cbp_layers] if acts else ())
        loss = loss.detach()
        self.bad |= ~torch.isfinite(loss)
        acc = (logits.detach().argmax(-1) == y).to(torch.float32).mean(1)
        return loss, acc

    @torch.no_grad()
    def reset_optimizer_state(self, tensors: Sequence[torch.Tensor] | None = None) -> None:
        """Zero the optimiser state (momentum, Adam moments and step counts) of `tensors` (default: all)."""
        for p in self.params if tensors is None else tensors:
            for st in self.optimizer.state_views(p):
                st.zero_()

    def state_dict(self) -> dict[str, Any]:
        return {"methods": self.methods.state_dict(), "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.methods.load_state_dict(state["methods"])
        self.bad.copy_(state["bad"])
