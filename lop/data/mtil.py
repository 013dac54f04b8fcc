"""MTIL data: the eleven datasets of multi-domain task-incremental learning, prepared by the user.

The datasets (Aircraft, Caltech101, CIFAR-100, DTD, EuroSAT, Flowers, Food, MNIST, Pets, Cars, SUN397)
have different licences, archive formats and splits; the project downloads none of them. A user converts
each one into the layout below once (docs/protocols/moe_mtil.md, "Data"), with `write_mtil_dataset`
from their own reader; the loaders then check every file against its sha256 before training.

Layout of ``<root>/<name>/`` (``<root>`` is the experiment's ``data_dir``, e.g. ``data/prepared/mtil``;
``<name>`` one of `ORDER_I`):

* ``classes.txt``: the class names, one per line, in label order (label k = line k + 1); the prompt
  "a photo of a {}." is filled with them;
* ``train_images.npy``, ``test_images.npy``: uint8 ``[N, 3, H, H]`` (channel first, square; the CLIP
  preprocessing resizes them to the backbone's input size, so H = 224 keeps the published protocol);
* ``train_labels.npy``, ``test_labels.npy``: int64 ``[N]`` with values in ``[0, n_classes)``;
* ``manifest.json``: ``{"dataset": <name>, "stand_in": bool, "n_classes": int, "files": {file: sha256}}``
  for the five files above.

The arrays are opened memory-mapped, so a dataset larger than the machine's memory is read one minibatch
at a time. Every failure is a `DataError` naming the dataset, the path and how to prepare it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lop.data.artifact import read_json, write_json
from lop.data.download import sha256sum
from lop.data.mtil_order import ORDER_I
from lop.data.standins import class_templates, render_templates
from lop.errors import DataError

#: the published number of classes of each dataset (a prepared folder must match it unless a stand-in)
N_CLASSES = {
    "aircraft": 100,
    "caltech101": 101,
    "cifar100": 100,
    "dtd": 47,
    "eurosat": 10,
    "flowers": 102,
    "food": 101,
    "mnist": 10,
    "pets": 37,
    "cars": 196,
    "sun397": 397,
}
FILES = ("classes.txt", "train_images.npy", "train_labels.npy", "test_images.npy", "test_labels.npy")
MANIFEST = "manifest.json"
HELP = "prepare it as docs/protocols/moe_mtil.md, 'Data' describes (lop.data.mtil.write_mtil_dataset)"


@dataclass
class MtilDataset:
    """One prepared dataset: class names and memory-mapped uint8 images ``[N, 3, H, H]``, int64 labels ``[N]``."""

    name: str
    classes: list[str]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    stand_in: bool


def write_mtil_dataset(
    root: str | os.PathLike[str],
    name: str,
    classes: list[str],
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    stand_in: bool = False,
) -> Path:
    """Write ``<root>/<name>/`` in the layout of the module doc, manifest (sha256 of each file) last.

    ``train`` and ``test`` are (images uint8 ``[N, 3, H, H]``, labels ``[N]`` in ``[0, len(classes))``)."""
    if name not in ORDER_I:
        raise DataError(f"{name!r}: not an MTIL dataset; expected one of {', '.join(ORDER_I)}")
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # an incomplete folder never carries a manifest
    if any("\n" in c or not c.strip() for c in classes):
        raise DataError(f"{name}: class names must be non-empty single lines")
    (folder / "classes.txt").write_text("".join(c.strip() + "\n" for c in classes), encoding="utf-8")
    for split, (x, y) in (("train", train), ("test", test)):
        x, y = np.asarray(x), np.asarray(y, dtype=np.int64)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
            raise DataError(f"{name}/{split}: images must be uint8 [N, 3, H, H]; got {x.dtype} {x.shape}")
        if y.shape != (x.shape[0],) or (y.size and (y.min() < 0 or y.max() >= len(classes))):
            raise DataError(f"{name}/{split}: labels must be [N] within [0, {len(classes)})")
        np.save(folder / f"{split}_images.npy", x, allow_pickle=False)
        np.save(folder / f"{split}_labels.npy", y, allow_pickle=False)
    files = {f: sha256sum(folder / f) for f in FILES}
    write_json(
        folder / MANIFEST, {"dataset": name, "stand_in": stand_in, "n_classes": len(classes), "files": files}
    )
    return folder


def load_mtil_dataset(root: str | os.PathLike[str], name: str, *, verify: bool = True) -> MtilDataset:
    """Open ``<root>/<name>/``, checking presence, sha256 (when `verify`), shapes, dtypes and labels."""
    folder = Path(root) / name
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"MTIL dataset {name}: {manifest_path} is missing; {HELP}")
    m = read_json(manifest_path)
    if m.get("dataset") != name or not isinstance(m.get("files"), dict):
        raise DataError(f"MTIL dataset {name}: {manifest_path} is not the manifest of {name}; {HELP}")
    for f in FILES:
        path = folder / f
        if not path.is_file():
            raise DataError(f"MTIL dataset {name}: {path} is missing; {HELP}")
        if f not in m["files"]:
            raise DataError(f"MTIL dataset {name}: {manifest_path} lists no checksum for {f}; {HELP}")
        if verify and sha256sum(path) != m["files"][f]:
            raise DataError(
                f"MTIL dataset {name}: {path} does not match its sha256 in {manifest_path}; {HELP}"
            )
    classes = [
        ln.strip() for ln in (folder / "classes.txt").read_text(encoding="utf-8").splitlines() if ln.strip()
    ]
    stand_in = bool(m.get("stand_in", False))
    if not stand_in and len(classes) != N_CLASSES[name]:
        raise DataError(
            f"MTIL dataset {name}: {folder / 'classes.txt'} has {len(classes)} classes, the protocol "
            f"{N_CLASSES[name]}; {HELP}"
        )
    arrays = {}
    for split in ("train", "test"):
        try:
            x = np.load(folder / f"{split}_images.npy", mmap_mode="r", allow_pickle=False)
            y = np.load(folder / f"{split}_labels.npy", allow_pickle=False)
        except ValueError as e:
            raise DataError(f"MTIL dataset {name}: {folder}/{split}_*.npy unreadable ({e}); {HELP}") from e
        if (
            x.dtype != np.uint8
            or x.ndim != 4
            or x.shape[1] != 3
            or x.shape[2] != x.shape[3]
            or x.shape[0] < 1
        ):
            raise DataError(
                f"MTIL dataset {name}: {folder / f'{split}_images.npy'} must be uint8 [N >= 1, 3, H, H], got "
                f"{x.dtype} {tuple(x.shape)}; {HELP}"
            )
        if y.dtype != np.int64 or y.shape != (x.shape[0],) or y.min() < 0 or y.max() >= len(classes):
            raise DataError(
                f"MTIL dataset {name}: {folder / f'{split}_labels.npy'} must be int64 [{x.shape[0]}] within "
                f"[0, {len(classes)}); {HELP}"
            )
        arrays[split] = (x, y)
    return MtilDataset(name, classes, *arrays["train"], *arrays["test"], stand_in=stand_in)


def write_mtil_standin(
    root: str | os.PathLike[str],
    *,
    n_classes: int = 3,
    n_train: int = 8,
    n_test: int = 4,
    size: int = 32,
    seed: int = 0,
    names: tuple[str, ...] = ORDER_I,
) -> Path:
    """Tiny learnable stand-ins of the MTIL datasets (NOT real data): `n_classes` classes per dataset,
    `n_train` / `n_test` images per class of coloured gratings (`lop.data.standins`), class names
    ``"<dataset> <k>"``; written with ``stand_in: true`` in each manifest."""
    if size != 32:
        raise ValueError("stand-in images are 32 x 32")
    for i, name in enumerate(names):
        rng = np.random.default_rng([seed, 15, i])
        t = class_templates(rng, n_classes)
        ytr = np.repeat(np.arange(n_classes, dtype=np.int64), n_train)
        yte = np.repeat(np.arange(n_classes, dtype=np.int64), n_test)
        classes = [f"{name} {k}" for k in range(n_classes)]
        write_mtil_dataset(
            root,
            name,
            classes,
            (render_templates(rng, t, ytr), ytr),
            (render_templates(rng, t, yte), yte),
            stand_in=True,
        )
    return Path(root)
