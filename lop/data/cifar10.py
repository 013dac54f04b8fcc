"""CIFAR-10, binary distribution (docs/protocols/datasets.md) -> prepared artifact ``data/prepared/cifar10/``.

Raw: ``cifar-10-binary.tar.gz`` whose folder ``cifar-10-batches-bin/`` holds five training files
``data_batch_1.bin`` .. ``data_batch_5.bin`` (10,000 records each) and ``test_batch.bin`` (10,000), plus
``batches.meta.txt`` (the 10 class names, one per line). A record is 1 label byte (0..9) and 3072 pixel
bytes (1024 R, 1024 G, 1024 B, each 32×32 row-major). The python distribution is a pickle and is not read.

Prepared layout (the same as CIFAR-100's; shared code in `lop.data.cifar_common`): ``train_images.npy`` uint8
[50000, 3, 32, 32] (NCHW; the five training files concatenated in order), ``train_labels.npy`` uint8,
``test_images.npy`` uint8 [10000, 3, 32, 32], ``test_labels.npy``, ``train_index.npy`` / ``val_index.npy``
(int64 indices into train; 4,500 / 500 per class), ``manifest.json``.

Validation split (seed-independent): the last 500 images of each class, in file order, are validation.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lop.data.cifar_common import (
    check_label_range,
    count_mismatch,
    extracted_archive,
    load_arrays,
    read_records,
    verify_counts,
    write_artifact,
)
from lop.data.download import download
from lop.errors import DataError

DATASET = "cifar10"
ARCHIVE = "cifar-10-binary.tar.gz"
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
FOLDER = "cifar-10-batches-bin"
TRAIN_BINS = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_BIN = "test_batch.bin"
NAMES = "batches.meta.txt"
RECORD_BYTES = 1 + 3 * 32 * 32
N_CLASSES = 10
TRAIN_PER_CLASS, TEST_PER_CLASS, VAL_PER_CLASS = 5000, 1000, 500
SPLIT_RULE = (
    "validation = the last {v} images of each class in file order (data_batch_1..5), train = the rest "
    "(seed-independent)"
)


def download_cifar10(raw_dir: str | os.PathLike[str], url: str = URL, *, timeout: float = 60) -> Path:
    """Download ``cifar-10-binary.tar.gz`` into ``raw_dir`` (md5-verified)."""
    return download(url, Path(raw_dir) / ARCHIVE, MD5, timeout=timeout)


def parse_records(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Parse a CIFAR-10 ``.bin`` file into (images [N,3,32,32] uint8, labels [N] uint8)."""
    path = Path(path)
    images, labels = read_records(path, 1, "CIFAR-10")
    labels = labels[:, 0].copy()
    check_label_range(path, labels, N_CLASSES)
    return images, labels


def _read_split(folder: Path, names: tuple[str, ...], archive: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{archive}: has no member {FOLDER}/{name}; download it again")
        x, y = parse_records(path)
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def prepare_cifar10(raw_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Verify the archive (official md5 or ``standin.json``), extract it safely, parse the six batch files,
    validate (record size, label range, per-class counts, 10 class names), split train/validation and
    write the artifact."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    archive = raw_dir / ARCHIVE
    official = (TRAIN_PER_CLASS, TEST_PER_CLASS, VAL_PER_CLASS)
    with extracted_archive(raw_dir, DATASET, ARCHIVE, MD5, FOLDER, official) as ex:
        parsed = {
            "train": _read_split(ex.folder, TRAIN_BINS, archive),
            "test": _read_split(ex.folder, (TEST_BIN,), archive),
        }
        names_path = ex.folder / NAMES
        if not names_path.is_file():
            raise DataError(f"{archive}: has no member {FOLDER}/{NAMES}; download it again")
        names = [s.strip() for s in names_path.read_text(encoding="utf-8").splitlines() if s.strip()]
    train_pc, test_pc, val_pc = ex.sizes
    for split, per_class in (("train", train_pc), ("test", test_pc)):
        bad = count_mismatch(parsed[split][1], per_class, N_CLASSES)
        if bad is not None:
            raise DataError(
                f"{archive}: the {split} files hold {bad[1]} images of class {bad[0]}, expected {per_class} "
                "per class; the archive is not the expected CIFAR-10 binary distribution"
            )
    if len(names) != N_CLASSES:
        raise DataError(f"{archive}: {FOLDER}/{NAMES} lists {len(names)} class names, expected {N_CLASSES}")
    return write_artifact(
        out_dir,
        DATASET,
        ex.source,
        parsed,
        ex.sizes,
        N_CLASSES,
        {
            "layout": "NCHW uint8, channels R,G,B",
            "split": SPLIT_RULE.format(v=val_pc),
            "class_names": names,
            "raw_md5": ex.md5s,
        },
    )


def load_cifar10(prepared_dir: str | os.PathLike[str], *, verify: bool = True) -> dict[str, np.ndarray]:
    """Load the prepared CIFAR-10 artifact: ``train_images`` [N,3,32,32] uint8, ``train_labels`` [N]
    uint8, ``test_images``, ``test_labels``, ``train_index`` / ``val_index`` int64 (into train)."""
    prepared_dir = Path(prepared_dir)
    out, fix = load_arrays(prepared_dir, DATASET, "CIFAR-10", ARCHIVE, verify=verify)
    if len(out["test_labels"]) != len(out["test_images"]):
        raise DataError(f"{prepared_dir}: test images and labels differ in length; {fix}")
    if out["train_labels"].size and max(out["train_labels"].max(), out["test_labels"].max()) >= N_CLASSES:
        raise DataError(f"{prepared_dir}: a label is outside 0..{N_CLASSES - 1}; {fix}")
    return out


def verify_prepared(prepared_dir: str | os.PathLike[str], m: dict) -> None:
    """Content checks of a prepared CIFAR-10 artifact beyond its sha256s (`lop data verify`): the layout
    of every array, train/validation indices that partition the training set, labels in 0..9, and
    per-class counts equal to the manifest's ``train_per_class`` / ``val_per_class`` / ``test_per_class``
    (official: 4,500 / 500 / 1,000)."""
    prepared_dir = Path(prepared_dir)
    arrays = load_cifar10(prepared_dir, verify=False)
    official = (TRAIN_PER_CLASS - VAL_PER_CLASS, VAL_PER_CLASS, TEST_PER_CLASS)
    verify_counts(prepared_dir, DATASET, m, arrays, N_CLASSES, official)
