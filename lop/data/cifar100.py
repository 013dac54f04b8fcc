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
import shutil
import tempfile
from pathlib import Path

import numpy as np

from lop.data.artifact import (
    ArtifactWriter,
    check_layout,
    default_raw_dir,
    load_array,
    prepare_command,
    read_manifest,
)
from lop.data.download import download, safe_extract_tar
from lop.data.raw import identify_raw, standin_size
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
ARRAYS = (
    "train_images.npy",
    "train_labels.npy",
    "test_images.npy",
    "test_labels.npy",
    "train_index.npy",
    "val_index.npy",
)
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
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise DataError(
            f"{path}: {raw.size} bytes is not a whole number of {RECORD_BYTES}-byte records; the file is "
            "truncated or not a CIFAR-100 binary file: download the archive again"
        )
    rec = raw.reshape(-1, RECORD_BYTES)
    coarse, fine = rec[:, 0].copy(), rec[:, 1].copy()
    if fine.max() >= N_CLASSES:
        bad = int(np.argmax(fine >= N_CLASSES))
        raise DataError(f"{path}: record {bad} has fine label {int(fine[bad])}, outside 0..{N_CLASSES - 1}")
    if coarse.max() >= N_COARSE:
        bad = int(np.argmax(coarse >= N_COARSE))
        raise DataError(
            f"{path}: record {bad} has coarse label {int(coarse[bad])}, outside 0..{N_COARSE - 1}"
        )
    images = rec[:, 2:].reshape(-1, 3, 32, 32).copy()
    return images, fine, coarse


def split_train_val(
    labels: np.ndarray, val_per_class: int, n_classes: int = N_CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """(train_index, val_index), sorted int64: the last ``val_per_class`` of each class in file order are
    validation. Every one of the ``n_classes`` classes needs more than ``val_per_class`` examples."""
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


def _read_names(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: missing from the archive; download it again")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _missing(raw_dir: Path) -> str:
    return (
        f"Put the official {ARCHIVE} (md5 {MD5}) in {raw_dir} (`lop data download cifar100 --raw {raw_dir}` "
        f"fetches it), or write a stand-in with `lop data standin cifar100 --raw {raw_dir}`"
    )


def prepare_cifar100(raw_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Verify the archive (official md5 or ``standin.json``), extract it safely, parse, validate
    (record size, label range, per-class counts), split train/validation and write the artifact."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    source, standin, md5s = identify_raw(
        raw_dir,
        {ARCHIVE: MD5},
        DATASET,
        missing=_missing(raw_dir),
        fix=f"delete it and run `lop data download cifar100 --raw {raw_dir}`",
    )
    if standin is None:
        train_pc, test_pc, val_pc = TRAIN_PER_CLASS, TEST_PER_CLASS, VAL_PER_CLASS
    else:  # the stand-in's sizes, checked: 0 < val_per_class < train_bin_per_class
        train_pc = standin_size(standin, "train_bin_per_class", raw_dir, 10 * TRAIN_PER_CLASS)
        test_pc = standin_size(standin, "test_per_class", raw_dir, 10 * TEST_PER_CLASS)
        val_pc = standin_size(standin, "val_per_class", raw_dir, train_pc - 1 if train_pc > 1 else 1)
    work = Path(tempfile.mkdtemp(prefix=".cifar100.", suffix=".extract", dir=raw_dir))
    try:
        safe_extract_tar(raw_dir / ARCHIVE, work)
        folder = work / FOLDER
        parsed = {}
        for split, fname, per_class in (("train", TRAIN_BIN, train_pc), ("test", TEST_BIN, test_pc)):
            path = folder / fname
            if not path.is_file():
                raise DataError(f"{raw_dir / ARCHIVE}: has no member {FOLDER}/{fname}; download it again")
            images, fine, _ = parse_records(path)
            counts = np.bincount(fine, minlength=N_CLASSES)
            if (counts != per_class).any():
                c = int(np.argmax(counts != per_class))
                raise DataError(
                    f"{raw_dir / ARCHIVE}: {fname} has {int(counts[c])} images of class {c}, expected "
                    f"{per_class} per class; the archive is not the expected CIFAR-100 binary distribution"
                )
            parsed[split] = (images, fine)
        fine_names = _read_names(folder / FINE_NAMES)
        coarse_names = _read_names(folder / COARSE_NAMES)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if len(fine_names) != N_CLASSES or len(coarse_names) != N_COARSE:
        raise DataError(
            f"{raw_dir / ARCHIVE}: label-name files list {len(fine_names)}/{len(coarse_names)} names"
        )
    train_index, val_index = split_train_val(parsed["train"][1], val_pc)
    with ArtifactWriter(out_dir, DATASET, source) as w:
        w.save("train_images.npy", parsed["train"][0])
        w.save("train_labels.npy", parsed["train"][1])
        w.save("test_images.npy", parsed["test"][0])
        w.save("test_labels.npy", parsed["test"][1])
        w.save("train_index.npy", train_index)
        w.save("val_index.npy", val_index)
        return w.commit(
            {
                "n_classes": N_CLASSES,
                "train_bin_per_class": train_pc,
                "train_per_class": train_pc - val_pc,
                "val_per_class": val_pc,
                "test_per_class": test_pc,
                "layout": "NCHW uint8, channels R,G,B; labels = fine labels",
                "split": SPLIT_RULE.format(v=val_pc),
                "class_names": fine_names,
                "coarse_names": coarse_names,
                "raw_md5": md5s,
            }
        )


def load_cifar100(prepared_dir: str | os.PathLike[str], *, verify: bool = True) -> dict[str, np.ndarray]:
    """Load the prepared CIFAR-100 artifact: ``train_images`` [N,3,32,32] uint8, ``train_labels`` [N]
    uint8, ``test_images``, ``test_labels``, ``train_index`` / ``val_index`` int64 (into train)."""
    prepared_dir = Path(prepared_dir)
    cmd = prepare_command(DATASET, prepared_dir)
    raw = default_raw_dir(prepared_dir, DATASET)
    missing = (
        f"{prepared_dir}: no prepared CIFAR-100 (manifest.json missing). Put the official {ARCHIVE} in {raw} "
        f"(or run `lop data download cifar100 --raw {raw}`), then run `{cmd}`"
    )
    m = read_manifest(prepared_dir, DATASET, missing)
    fix = f"re-run `{cmd}`"
    layouts = {
        "train_images.npy": ((None, 3, 32, 32), "uint8"),
        "train_labels.npy": ((None,), "uint8"),
        "test_images.npy": ((None, 3, 32, 32), "uint8"),
        "test_labels.npy": ((None,), "uint8"),
        "train_index.npy": ((None,), "int64"),
        "val_index.npy": ((None,), "int64"),
    }
    out = {}
    for name, (shape, dtype) in layouts.items():
        a = load_array(prepared_dir, m, name, verify=verify, mmap=False, fix=fix)
        check_layout(prepared_dir / name, a, shape, dtype, fix)
        out[name.removesuffix(".npy")] = a
    n = len(out["train_images"])
    idx = np.concatenate([out["train_index"], out["val_index"]])
    if len(out["train_labels"]) != n or idx.size != n or not np.array_equal(np.sort(idx), np.arange(n)):
        raise DataError(f"{prepared_dir}: train/validation indices do not partition the training set; {fix}")
    return out


def verify_prepared(prepared_dir: str | os.PathLike[str], m: dict) -> None:
    """Content checks of a prepared CIFAR-100 artifact beyond its sha256s (`lop data verify`): the layout
    of every array, train/validation indices that partition the training set, and per-class counts equal
    to the manifest's ``train_per_class`` / ``val_per_class`` / ``test_per_class`` (official: 450/50/100)."""
    prepared_dir = Path(prepared_dir)
    fix = f"re-run `{prepare_command(DATASET, prepared_dir)}`"
    arrays = load_cifar100(prepared_dir, verify=False)
    expected = {}
    for key, default in (
        ("train_per_class", TRAIN_PER_CLASS - VAL_PER_CLASS),
        ("val_per_class", VAL_PER_CLASS),
        ("test_per_class", TEST_PER_CLASS),
    ):
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
        counts = np.bincount(labels, minlength=N_CLASSES)
        if len(counts) != N_CLASSES or (counts != expected[key]).any():
            c = int(np.argmax(counts != expected[key])) if len(counts) == N_CLASSES else len(counts) - 1
            raise DataError(
                f"{prepared_dir}: the {what} split has {int(counts[c])} images of class {c}, the manifest "
                f"declares {key} = {expected[key]}; {fix}"
            )
