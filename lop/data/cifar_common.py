"""What the CIFAR-10 and CIFAR-100 binary datasets share (`lop.data.cifar10`, `lop.data.cifar100`).

Both prepared artifacts have one layout: ``train_images.npy`` uint8 [N, 3, 32, 32] (NCHW),
``train_labels.npy`` uint8, ``test_images.npy`` uint8 [M, 3, 32, 32], ``test_labels.npy`` uint8,
``train_index.npy`` / ``val_index.npy`` (int64 indices into train) and ``manifest.json``. The validation
split is seed-independent: the last ``val_per_class`` images of each class, in file order, are validation
(`split_train_val`). This module holds the split rule, the per-class count check, the stand-in size
reading, the artifact writer and the loader/verifier of that layout; the dataset modules keep their
record parsing and their own messages.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lop.data.artifact import (
    ArtifactWriter,
    check_layout,
    load_array,
    open_prepared,
    prepare_command,
)
from lop.data.download import safe_extract_tar
from lop.data.raw import identify_raw, standin_size
from lop.errors import DataError

LAYOUTS: dict[str, tuple[tuple[int | None, ...], str]] = {
    "train_images.npy": ((None, 3, 32, 32), "uint8"),
    "train_labels.npy": ((None,), "uint8"),
    "test_images.npy": ((None, 3, 32, 32), "uint8"),
    "test_labels.npy": ((None,), "uint8"),
    "train_index.npy": ((None,), "int64"),
    "val_index.npy": ((None,), "int64"),
}
ARRAYS = tuple(LAYOUTS)


def read_records(path: Path, label_bytes: int, title: str) -> tuple[np.ndarray, np.ndarray]:
    """Split a CIFAR binary file into records of ``label_bytes`` label bytes and 3072 pixel bytes (1024 R,
    1024 G, 1024 B, each 32×32 row-major): (images [N, 3, 32, 32] uint8, labels [N, label_bytes] uint8).
    An empty file or one that is not a whole number of records is a `DataError` naming ``title``."""
    record_bytes = label_bytes + 3 * 32 * 32
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % record_bytes:
        raise DataError(
            f"{path}: {raw.size} bytes is not a whole number of {record_bytes}-byte records; the file is "
            f"truncated or not a {title} binary file: download the archive again"
        )
    rec = raw.reshape(-1, record_bytes)
    return rec[:, label_bytes:].reshape(-1, 3, 32, 32).copy(), rec[:, :label_bytes].copy()


def check_label_range(path: Path, labels: np.ndarray, n: int, what: str = "label") -> None:
    """Every label in 0..n-1, else a `DataError` naming the file and the first bad record."""
    if labels.max() >= n:
        bad = int(np.argmax(labels >= n))
        raise DataError(f"{path}: record {bad} has {what} {int(labels[bad])}, outside 0..{n - 1}")


def split_train_val(labels: np.ndarray, val_per_class: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_index, val_index), sorted int64: the last ``val_per_class`` of each class in file order are
    validation. Every one of the ``n_classes`` classes needs more than ``val_per_class`` examples.

    With ``rank(i)`` the position of example ``i`` among the examples of its class (file order) and
    ``count(c)`` the size of class ``c``: ``i`` is validation iff ``rank(i) >= count(label(i)) - val_per_class``.
    """
    labels = np.asarray(labels).astype(np.int64)
    counts = np.bincount(labels, minlength=n_classes)
    if (counts <= val_per_class).any():
        c = int(np.argmax(counts <= val_per_class))
        raise DataError(f"class {c} has {int(counts[c])} training images, needs more than {val_per_class}")
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    rank = np.arange(labels.size) - np.searchsorted(sorted_labels, sorted_labels, side="left")
    is_val = np.empty(labels.size, dtype=bool)
    is_val[order] = rank >= counts[sorted_labels] - val_per_class
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)


def count_mismatch(labels: np.ndarray, per_class: int, n_classes: int) -> tuple[int, int] | None:
    """``None`` when ``labels`` holds exactly ``per_class`` examples of each class 0..n_classes-1, else
    ``(class, count)`` of the first class whose count differs (a label >= ``n_classes`` counts as a class
    of its own, reported as the last one)."""
    counts = np.bincount(labels, minlength=n_classes)
    if len(counts) == n_classes and not (counts != per_class).any():
        return None
    c = int(np.argmax(counts != per_class)) if len(counts) == n_classes else len(counts) - 1
    return c, int(counts[c])


def split_sizes(
    standin: dict[str, Any] | None, raw_dir: Path, official: tuple[int, int, int]
) -> tuple[int, int, int]:
    """(train_bin_per_class, test_per_class, val_per_class): ``official`` for the official archive, else
    the stand-in's ``standin.json`` sizes, checked (0 < val_per_class < train_bin_per_class, each size at
    most 10 times the official one)."""
    if standin is None:
        return official
    train_official, test_official, _ = official
    train_pc = standin_size(standin, "train_bin_per_class", raw_dir, 10 * train_official)
    test_pc = standin_size(standin, "test_per_class", raw_dir, 10 * test_official)
    val_pc = standin_size(standin, "val_per_class", raw_dir, train_pc - 1 if train_pc > 1 else 1)
    return train_pc, test_pc, val_pc


@dataclass(frozen=True)
class Extracted:
    """An identified and extracted raw archive: ``folder`` = the archive's top folder in a temporary
    extraction (deleted on leaving `extracted_archive`), ``source`` / ``md5s`` as from `identify_raw`,
    ``sizes`` as from `split_sizes`."""

    folder: Path
    source: str
    md5s: dict[str, str]
    sizes: tuple[int, int, int]


@contextmanager
def extracted_archive(
    raw_dir: Path, dataset: str, archive: str, md5: str, folder: str, official: tuple[int, int, int]
) -> Iterator[Extracted]:
    """Verify ``raw_dir / archive`` (the official md5 or a ``standin.json``), read the split sizes
    (`split_sizes`) and extract the archive safely into a temporary folder in ``raw_dir``, removed on exit."""
    source, standin, md5s = identify_raw(
        raw_dir,
        {archive: md5},
        dataset,
        missing=(
            f"Put the official {archive} (md5 {md5}) in {raw_dir} (`lop data download {dataset} --raw "
            f"{raw_dir}` fetches it), or write a stand-in with `lop data standin {dataset} --raw {raw_dir}`"
        ),
        fix=f"delete it and run `lop data download {dataset} --raw {raw_dir}`",
    )
    sizes = split_sizes(standin, raw_dir, official)
    work = Path(tempfile.mkdtemp(prefix=f".{dataset}.", suffix=".extract", dir=raw_dir))
    try:
        safe_extract_tar(raw_dir / archive, work)
        yield Extracted(work / folder, source, md5s, sizes)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_artifact(
    out_dir: Path,
    dataset: str,
    source: str,
    parsed: dict[str, tuple[np.ndarray, np.ndarray]],
    sizes: tuple[int, int, int],
    n_classes: int,
    facts: dict[str, Any],
) -> Path:
    """Split ``parsed["train"]`` (`split_train_val`) and write the six arrays of `LAYOUTS` plus a manifest
    holding the class count and split sizes (``sizes`` as from `split_sizes`) and ``facts``."""
    train_pc, test_pc, val_pc = sizes
    train_index, val_index = split_train_val(parsed["train"][1], val_pc, n_classes)
    with ArtifactWriter(out_dir, dataset, source) as w:
        w.save("train_images.npy", parsed["train"][0])
        w.save("train_labels.npy", parsed["train"][1])
        w.save("test_images.npy", parsed["test"][0])
        w.save("test_labels.npy", parsed["test"][1])
        w.save("train_index.npy", train_index)
        w.save("val_index.npy", val_index)
        return w.commit(
            {
                "n_classes": n_classes,
                "train_bin_per_class": train_pc,
                "train_per_class": train_pc - val_pc,
                "val_per_class": val_pc,
                "test_per_class": test_pc,
                **facts,
            }
        )


def load_arrays(
    prepared_dir: Path, dataset: str, title: str, archive: str, *, verify: bool
) -> tuple[dict[str, np.ndarray], str]:
    """Read the manifest and the six arrays of `LAYOUTS` (sha256-verified unless ``verify=False``), check
    their layouts and that train/validation indices partition the training set. Returns the arrays (keyed
    by file name without ``.npy``) and the fix hint used in messages."""
    m, fix = open_prepared(prepared_dir, dataset, title, f"the official {archive}")
    out = {}
    for name, (shape, dtype) in LAYOUTS.items():
        a = load_array(prepared_dir, m, name, verify=verify, mmap=False, fix=fix)
        check_layout(prepared_dir / name, a, shape, dtype, fix)
        out[name.removesuffix(".npy")] = a
    n = len(out["train_images"])
    idx = np.concatenate([out["train_index"], out["val_index"]])
    if len(out["train_labels"]) != n or idx.size != n or not np.array_equal(np.sort(idx), np.arange(n)):
        raise DataError(f"{prepared_dir}: train/validation indices do not partition the training set; {fix}")
    return out, fix


def verify_counts(
    prepared_dir: Path,
    dataset: str,
    m: dict[str, Any],
    arrays: dict[str, np.ndarray],
    n_classes: int,
    official: tuple[int, int, int],
) -> None:
    """Check that the train, validation and test splits hold exactly the manifest's ``train_per_class`` /
    ``val_per_class`` / ``test_per_class`` images of every class (``official`` = the defaults of those
    three keys when absent)."""
    fix = f"re-run `{prepare_command(dataset, prepared_dir)}`"
    expected = {}
    for key, default in zip(("train_per_class", "val_per_class", "test_per_class"), official, strict=True):
        value = m.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"{prepared_dir / 'manifest.json'}: {key} must be a positive integer; {fix}")
        expected[key] = value
    train_labels = arrays["train_labels"]
    for what, labels, key in (
        ("train", train_labels[arrays["train_index"]], "train_per_class"),
        ("validation", train_labels[arrays["val_index"]], "val_per_class"),
        ("test", arrays["test_labels"], "test_per_class"),
    ):
        bad = count_mismatch(labels, expected[key], n_classes)
        if bad is not None:
            raise DataError(
                f"{prepared_dir}: the {what} split has {bad[1]} images of class {bad[0]}, the manifest "
                f"declares {key} = {expected[key]}; {fix}"
            )
