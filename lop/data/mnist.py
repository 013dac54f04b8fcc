"""MNIST (docs/protocols/permuted_mnist.md, docs/protocols/datasets.md): official IDX files -> prepared artifact ``data/prepared/mnist/``.

Prepared layout: ``train_images.npy`` uint8 [60000, 28, 28], ``train_labels.npy`` uint8 [60000],
``test_images.npy`` uint8 [10000, 28, 28], ``test_labels.npy`` uint8 [10000], ``manifest.json``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
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
from lop.data.download import download
from lop.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx
from lop.data.raw import STANDIN_JSON, identify_raw
from lop.errors import DataError

DATASET = "mnist"
TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
FILES: dict[str, str] = {
    TRAIN_IMAGES: "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    TRAIN_LABELS: "d53e105ee54ea40749a09fcbcd1e9432",
    TEST_IMAGES: "9fb629c4189551a2d022fa330f9573f3",
    TEST_LABELS: "ec29112dd5afa0611ce80d1b7f02629c",
}
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
N_TRAIN, N_TEST, N_CLASSES = 60_000, 10_000, 10
ARRAYS = ("train_images.npy", "train_labels.npy", "test_images.npy", "test_labels.npy")


def download_mnist(
    raw_dir: str | os.PathLike[str], base_url: str | Sequence[str] | None = None, *, timeout: float = 60
) -> list[Path]:
    """Download the four official IDX files into ``raw_dir`` (md5-verified; mirrors tried in order)."""
    raw_dir = Path(raw_dir)
    bases = list(MIRRORS) if base_url is None else [base_url] if isinstance(base_url, str) else list(base_url)
    out = []
    for name, md5 in FILES.items():
        errors: list[DataError] = []
        for base in bases:
            try:
                out.append(download(base.rstrip("/") + "/" + name, raw_dir / name, md5, timeout=timeout))
                break
            except DataError as e:
                errors.append(e)
        else:
            if len(errors) == 1:
                raise errors[0]
            raise DataError(f"{name}: every mirror failed: " + " | ".join(str(e) for e in errors))
    return out


def _missing(raw_dir: Path) -> str:
    return (
        f"Put the four official MNIST files ({', '.join(FILES)}) in {raw_dir} "
        f"(`lop data download mnist --raw {raw_dir}` fetches them), or write a stand-in with "
        f"`lop data standin mnist --raw {raw_dir}`"
    )


def split_sizes(raw_dir: Path, standin: dict[str, Any] | None) -> tuple[int, int]:
    """(n_train, n_test): the official sizes, or the stand-in's (positive integers, checked)."""
    if standin is None:
        return N_TRAIN, N_TEST
    sizes = []
    for key in ("n_train", "n_test"):
        n = standin.get(key)
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= 10 * N_TRAIN:
            raise DataError(
                f"{raw_dir / STANDIN_JSON}: {key} must be an integer in 1..{10 * N_TRAIN}, got {n!r}"
            )
        sizes.append(n)
    return sizes[0], sizes[1]


def read_raw_arrays(raw_dir: Path, n_train: int, n_test: int) -> dict[str, np.ndarray]:
    """Read and check the four IDX files: magic numbers, dims against the expected counts (the read is
    capped at the expected size, so a gzip bomb stops there), 28x28 images, labels in 0..9."""
    arrays = {}
    for split, (img_name, lab_name, n) in {
        "train": (TRAIN_IMAGES, TRAIN_LABELS, n_train),
        "test": (TEST_IMAGES, TEST_LABELS, n_test),
    }.items():
        x = read_idx(raw_dir / img_name, magic=IMAGES_MAGIC, max_bytes=16 + n * 28 * 28)
        y = read_idx(raw_dir / lab_name, magic=LABELS_MAGIC, max_bytes=8 + n)
        if x.shape != (n, 28, 28):
            raise DataError(
                f"{raw_dir / img_name}: images have shape {list(x.shape)}, expected [{n}, 28, 28]"
            )
        if y.shape != (n,):
            raise DataError(f"{raw_dir / lab_name}: labels have shape {list(y.shape)}, expected [{n}]")
        if y.max(initial=0) >= N_CLASSES:
            raise DataError(f"{raw_dir / lab_name}: label {int(y.max())} out of range 0..9")
        arrays[f"{split}_images.npy"], arrays[f"{split}_labels.npy"] = x, y
    return arrays


def prepare_mnist(raw_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Verify the raw IDX files (official md5s or ``standin.json``) and write the prepared artifact."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    source, standin, md5s = identify_raw(
        raw_dir,
        dict(FILES),
        DATASET,
        missing=_missing(raw_dir),
        fix=f"delete it and run `lop data download mnist --raw {raw_dir}`",
    )
    n_train, n_test = split_sizes(raw_dir, standin)
    arrays = read_raw_arrays(raw_dir, n_train, n_test)
    with ArtifactWriter(out_dir, DATASET, source) as w:
        for name in ARRAYS:
            w.save(name, arrays[name])
        return w.commit(
            {
                "n_classes": N_CLASSES,
                "n_train": n_train,
                "n_test": n_test,
                "image_shape": [28, 28],
                "split": "official training file = train, official t10k file = test",
                "raw_md5": md5s,
            }
        )


def load_mnist(prepared_dir: str | os.PathLike[str], *, verify: bool = True) -> dict[str, np.ndarray]:
    """Load the prepared MNIST artifact: ``train_images`` [N,28,28] uint8, ``train_labels`` [N] uint8,
    ``test_images``, ``test_labels`` (sha256-verified unless ``verify=False``)."""
    prepared_dir = Path(prepared_dir)
    m, fix = open_prepared(prepared_dir, DATASET, "MNIST", f"the four official files ({', '.join(FILES)})")
    out = {}
    for name in ARRAYS:
        a = load_array(prepared_dir, m, name, verify=verify, mmap=False, fix=fix)
        layout = (None, 28, 28) if name.endswith("images.npy") else (None,)
        check_layout(prepared_dir / name, a, layout, "uint8", fix)
        out[name.removesuffix(".npy")] = a
    for split in ("train", "test"):
        if len(out[f"{split}_images"]) != len(out[f"{split}_labels"]):
            raise DataError(f"{prepared_dir}: {split} images and labels differ in length; {fix}")
    return out


def verify_prepared(prepared_dir: str | os.PathLike[str], m: dict[str, Any]) -> None:
    """Content checks of a prepared MNIST artifact beyond its sha256s (`lop data verify`): the layout of
    the four arrays and split sizes equal to the manifest's ``n_train`` / ``n_test`` (official 60000/10000)."""
    prepared_dir = Path(prepared_dir)
    arrays = load_mnist(prepared_dir, verify=False)
    for split, default in (("train", N_TRAIN), ("test", N_TEST)):
        declared = m.get(f"n_{split}", default)
        if len(arrays[f"{split}_labels"]) != declared:
            raise DataError(
                f"{prepared_dir}: the {split} split holds {len(arrays[f'{split}_labels'])} images, the manifest "
                f"declares n_{split} = {declared!r}; re-run `{prepare_command(DATASET, prepared_dir)}`"
            )
