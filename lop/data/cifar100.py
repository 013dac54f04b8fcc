"""CIFAR-100, binary distribution (docs/protocols/incremental_cifar.md, docs/protocols/datasets.md) -> prepared artifact ``data/prepared/cifar100/``.

Raw: ``cifar-100-binary.tar.gz`` whose ``train.bin`` / ``test.bin`` hold records of 1 coarse-label byte,
1 fine-label byte and 3072 pixel bytes (1024 R, 1024 G, 1024 B, each 32×32 row-major).

Prepared layout: ``train_images.npy`` uint8 [50000, 3, 32, 32] (NCHW), ``train_labels.npy`` uint8 (fine),
``test_images.npy`` uint8 [10000, 3, 32, 32], ``test_labels.npy``, ``train_index.npy`` / ``val_index.npy``
(int64 indices into train; 450 / 50 per class), ``manifest.json``.

Validation split (seed-independent): the last 50 images of each fine class, in ``train.bin`` file order,
are validation; the first 450 are training.
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

DATASET = "cifar100"
ARCHIVE = "cifar-100-binary.tar.gz"
MD5 = "03b5dce01913d631647c71ecec9e9cb8"
URL = "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"
FOLDER = "cifar-100-binary"
TRAIN_BIN, TEST_BIN = "train.bin", "test.bin"
FINE_NAMES, COARSE_NAMES = "fine_label_names.txt", "coarse_label_names.txt"
RECORD_BYTES = 2 + 3 * 32 * 32
N_CLASSES, N_COARSE = 100, 20
TRAIN_PER_CLASS, TEST_PER_CLASS, VAL_PER_CLASS = 500, 100, 50
SPLIT_RULE = (
    "validation = the last {v} images of each fine class in train.bin file order, train = the rest "
    "(seed-independent)"
)


def download_cifar100(raw_dir: str | os.PathLike[str], url: str = URL, *, timeout: float = 60) -> Path:
    """Download ``cifar-100-binary.tar.gz`` into ``raw_dir`` (md5-verified)."""
    return download(url, Path(raw_dir) / ARCHIVE, MD5, timeout=timeout)


def parse_records(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse a CIFAR-100 ``.bin`` file into (images [N,3,32,32] uint8, fine [N] uint8, coarse [N] uint8)."""
    path = Path(path)
    images, labels = read_records(path, 2, "CIFAR-100")
    coarse, fine = labels[:, 0].copy(), labels[:, 1].copy()
    check_label_range(path, fine, N_CLASSES, "fine label")
    check_label_range(path, coarse, N_COARSE, "coarse label")
    return images, fine, coarse


def _read_names(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: missing from the archive; download it again")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def prepare_cifar100(raw_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Verify the archive (official md5 or ``standin.json``), extract it safely, parse, validate
    (record size, label range, per-class counts), split train/validation and write the artifact."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    official = (TRAIN_PER_CLASS, TEST_PER_CLASS, VAL_PER_CLASS)
    with extracted_archive(raw_dir, DATASET, ARCHIVE, MD5, FOLDER, official) as ex:
        train_pc, test_pc, val_pc = ex.sizes
        parsed = {}
        for split, fname, per_class in (("train", TRAIN_BIN, train_pc), ("test", TEST_BIN, test_pc)):
            path = ex.folder / fname
            if not path.is_file():
                raise DataError(f"{raw_dir / ARCHIVE}: has no member {FOLDER}/{fname}; download it again")
            images, fine, _ = parse_records(path)
            bad = count_mismatch(fine, per_class, N_CLASSES)
            if bad is not None:
                raise DataError(
                    f"{raw_dir / ARCHIVE}: {fname} has {bad[1]} images of class {bad[0]}, expected "
                    f"{per_class} per class; the archive is not the expected CIFAR-100 binary distribution"
                )
            parsed[split] = (images, fine)
        fine_names = _read_names(ex.folder / FINE_NAMES)
        coarse_names = _read_names(ex.folder / COARSE_NAMES)
    if len(fine_names) != N_CLASSES or len(coarse_names) != N_COARSE:
        raise DataError(
            f"{raw_dir / ARCHIVE}: label-name files list {len(fine_names)}/{len(coarse_names)} names"
        )
    return write_artifact(
        out_dir,
        DATASET,
        ex.source,
        parsed,
        ex.sizes,
        N_CLASSES,
        {
            "layout": "NCHW uint8, channels R,G,B; labels = fine labels",
            "split": SPLIT_RULE.format(v=val_pc),
            "class_names": fine_names,
            "coarse_names": coarse_names,
            "raw_md5": ex.md5s,
        },
    )


def load_cifar100(prepared_dir: str | os.PathLike[str], *, verify: bool = True) -> dict[str, np.ndarray]:
    """Load the prepared CIFAR-100 artifact: ``train_images`` [N,3,32,32] uint8, ``train_labels`` [N]
    uint8, ``test_images``, ``test_labels``, ``train_index`` / ``val_index`` int64 (into train)."""
    prepared_dir = Path(prepared_dir)
    return load_arrays(prepared_dir, DATASET, "CIFAR-100", ARCHIVE, verify=verify)[0]


def verify_prepared(prepared_dir: str | os.PathLike[str], m: dict) -> None:
    """Content checks of a prepared CIFAR-100 artifact beyond its sha256s (`lop data verify`): the layout
    of every array, train/validation indices that partition the training set, and per-class counts equal
    to the manifest's ``train_per_class`` / ``val_per_class`` / ``test_per_class`` (official: 450/50/100)."""
    prepared_dir = Path(prepared_dir)
    arrays = load_cifar100(prepared_dir, verify=False)
    official = (TRAIN_PER_CLASS - VAL_PER_CLASS, VAL_PER_CLASS, TEST_PER_CLASS)
    verify_counts(prepared_dir, DATASET, m, arrays, N_CLASSES, official)
