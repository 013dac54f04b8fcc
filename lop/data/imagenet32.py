"""ImageNet 32×32 (Chrabaszcz et al. 2017; docs/protocols/continual_imagenet.md, docs/protocols/datasets.md) -> prepared artifact ``data/prepared/imagenet32/``.

Sources:

* official ``Imagenet32_train_npz.zip`` (members ``train_data_batch_1..10.npz`` with ``data`` N×3072 uint8
  in CHW order, ``labels`` 1..1000, ``mean``), read member by member without unpacking the zip to disk
  (stored members are read in place; compressed ones are spooled one at a time to a temp file);
* a folder of full-size images ``<root>/<wnid>/*.JPEG`` (sorted wnids = classes 0..C-1), each image
  resized to 32×32 with a box filter (Pillow ``Image.BOX``), as Chrabaszcz et al. did.

Selection (deterministic, seed-independent): the first 700 images of each class in file order (batch 1..10,
row order; or sorted file names) are kept; of those the first 600 are training, the last 100 test.

Prepared layout: ``class_0000.npy`` … ``class_{C-1:04d}.npy``, each uint8 [700, 3, 32, 32], ``manifest.json``.
ImageNet is licensed for non-commercial research only: never push ImageNet-derived files to a public remote.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from lop.data.artifact import (
    ArtifactWriter,
    check_layout,
    default_raw_dir,
    load_array,
    prepare_command,
    read_manifest,
)
from lop.data.raw import identify_raw, standin_size
from lop.errors import DataError

DATASET = "imagenet32"
ZIP_NAME = "Imagenet32_train_npz.zip"
N_BATCHES = 10
N_CLASSES, PER_CLASS, N_TRAIN = 1000, 700, 600
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
DOWNLOAD_PAGE = "https://image-net.org/download-images.php"
_BATCH_RE = re.compile(r"(?:^|/)train_data_batch_(\d+)\.npz$")
SELECTION = (
    "first {p} images of each class in file order (batches 1..10, row order / sorted file names); "
    "the first {t} of them are train, the last {s} test (seed-independent)"
)


def class_file(c: int) -> str:
    """File name of class ``c`` in the prepared artifact."""
    return f"class_{c:04d}.npy"


def licence_help(raw_dir: Path, out_dir: Path | str = "data/prepared/imagenet32") -> str:
    """Where the official zip comes from and where it goes (it is never downloaded automatically)."""
    return (
        f"Downsampled ImageNet cannot be downloaded automatically: it needs an "
        f"image-net.org account and its licence allows non-commercial research only. Log in at "
        f"{DOWNLOAD_PAGE}, open the 'Downsampled ImageNet' (32x32) section, download {ZIP_NAME} and put it at "
        f"{raw_dir / ZIP_NAME}; then run `lop data prepare imagenet32 --raw {raw_dir} --out {out_dir}` "
        f"(or pass --image-folder <ILSVRC2012 train folder of <wnid>/*.JPEG>). For a learnable stand-in: "
        f"`lop data standin imagenet32 --raw {raw_dir}`. Keep ImageNet-derived files off public remotes"
    )


def _batch_members(zf: zipfile.ZipFile, path: Path) -> list[zipfile.ZipInfo]:
    """The zip's ``train_data_batch_k.npz`` members ordered by k; all of 1..10 exactly once."""
    found: dict[int, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        m = _BATCH_RE.search(info.filename)
        if m and not info.is_dir():
            k = int(m.group(1))
            if k in found:
                raise DataError(f"{path}: holds train_data_batch_{k}.npz twice")
            found[k] = info
    if sorted(found) != list(range(1, N_BATCHES + 1)):
        raise DataError(
            f"{path}: expected members train_data_batch_1..{N_BATCHES}.npz, found batches {sorted(found)}: "
            f"the zip is truncated or corrupt, or not {ZIP_NAME}; download it again"
        )
    return [found[k] for k in range(1, N_BATCHES + 1)]


def _read_npz(source: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(source, allow_pickle=False) as npz:
        for key in ("data", "labels"):
            if key not in npz.files:
                raise DataError(f"{where}: has no '{key}' array (keys: {sorted(npz.files)})")
        return npz["data"], npz["labels"]


def iter_zip_batches(
    zip_path: str | os.PathLike[str], spool_dir: str | os.PathLike[str] | None = None
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield ``(member, data, labels)`` per batch of the official zip, in batch order, with no pickle."""
    zip_path = Path(zip_path)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for info in _batch_members(zf, zip_path):
                where = f"{zip_path}: member {info.filename}"
                try:
                    if info.compress_type == zipfile.ZIP_STORED:
                        with zf.open(info) as f:
                            data, labels = _read_npz(f, where)
                    else:
                        fd, tmp = tempfile.mkstemp(suffix=".npz", dir=spool_dir or zip_path.parent)
                        try:
                            with os.fdopen(fd, "wb") as out, zf.open(info) as f:
                                shutil.copyfileobj(f, out, 1 << 22)
                            data, labels = _read_npz(tmp, where)
                        finally:
                            Path(tmp).unlink(missing_ok=True)
                except DataError:
                    raise
                except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError, zlib.error) as e:
                    raise DataError(
                        f"{where}: unreadable ({type(e).__name__}: {e}); download the zip again"
                    ) from e
                yield info.filename, data, labels
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(
            f"{zip_path}: not a readable zip ({e}); it is truncated or corrupt: download it again"
        ) from e


def _check_batch(where: str, data: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Validate one batch; return 0-based int64 class indices."""
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{where}: 'data' is {data.dtype} {list(data.shape)}, expected uint8 [N, 3072]")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or labels.dtype.kind not in "iu":
        raise DataError(
            f"{where}: 'labels' is {labels.dtype} {list(labels.shape)}, expected integers [{data.shape[0]}]"
        )
    y = labels.astype(np.int64)
    if y.size and (y.min() < 1 or y.max() > n_classes):
        bad = int(y[(y < 1) | (y > n_classes)][0])
        raise DataError(f"{where}: label {bad} outside 1..{n_classes}")
    return y - 1


def _select(y: np.ndarray, counts: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of a batch still needed (first ``per_class`` per class overall, in file order):
    (row index, class, slot within class)."""
    order = np.argsort(y, kind="stable")
    ys = y[order]
    rank = np.arange(ys.size) - np.searchsorted(ys, ys, side="left")
    slot = counts[ys] + rank
    keep = slot < per_class
    return order[keep], ys[keep], slot[keep]


def _check_counts(counts: np.ndarray, per_class: int, where: str) -> None:
    short = np.flatnonzero(counts < per_class)
    if short.size:
        listing = ", ".join(f"class {c} has {int(counts[c])}" for c in short[:5])
        more = f" and {short.size - 5} more" if short.size > 5 else ""
        raise DataError(f"{where}: {short.size} classes have fewer than {per_class} images ({listing}{more})")


def prepare_imagenet32_from_zip(
    zip_path: Path,
    out_dir: Path,
    *,
    source: str,
    n_classes: int,
    per_class: int,
    n_train: int,
    facts: dict[str, Any],
) -> Path:
    """Convert the official zip: keep the first ``per_class`` images of each class in file order.

    Batches are streamed into one scratch memmap ``[C, per_class, 3072]`` (one file descriptor, memory
    bounded by a batch), which is then split into the per-class files.
    """
    counts = np.zeros(n_classes, dtype=np.int64)
    with ArtifactWriter(out_dir, DATASET, source) as w:
        scratch_path = w.tmp / ".scratch.u8"
        scratch = np.memmap(
            scratch_path, dtype=np.uint8, mode="w+", shape=(n_classes, per_class, 3 * 32 * 32)
        )
        for member, data, labels in iter_zip_batches(zip_path, spool_dir=w.tmp):
            y = _check_batch(f"{zip_path}: member {member}", data, labels, n_classes)
            rows, cls, slots = _select(y, counts, per_class)
            scratch[cls, slots] = data[rows]
            counts += np.bincount(y, minlength=n_classes)
            del data, labels
        _check_counts(counts, per_class, str(zip_path))
        for c in range(n_classes):
            w.save(class_file(c), scratch[c].reshape(per_class, 3, 32, 32))
        del scratch
        scratch_path.unlink()
        return w.commit(_facts(n_classes, per_class, n_train, facts))


def _facts(n_classes: int, per_class: int, n_train: int, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "n_classes": n_classes,
        "per_class": per_class,
        "n_train": n_train,
        "n_test": per_class - n_train,
        "layout": "class_XXXX.npy: uint8 [per_class, 3, 32, 32] (NCHW, R,G,B)",
        "split": SELECTION.format(p=per_class, t=n_train, s=per_class - n_train),
        **extra,
    }


def downsample_image(path: Path) -> np.ndarray:
    """One image file -> uint8 [3, 32, 32]: RGB, whole image box-filtered to 32×32 (no crop)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            small = img.convert("RGB").resize((32, 32), Image.Resampling.BOX)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{path}: cannot decode the image ({e}); remove or replace it") from e
    return np.asarray(small, dtype=np.uint8).transpose(2, 0, 1)


def prepare_imagenet32_from_folder(
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    per_class: int = PER_CLASS,
    n_train: int = N_TRAIN,
    workers: int | None = None,
) -> Path:
    """Convert ``<root>/<wnid>/*.JPEG`` (sorted wnids = classes; first ``per_class`` sorted files each)."""
    root, out_dir = Path(root), Path(out_dir)
    _check_split(per_class, n_train)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found (expected <root>/<wnid>/*.JPEG)")
    wnids = sorted(d.name for d in root.iterdir() if d.is_dir())
    if len(wnids) < 2:
        raise DataError(f"{root}: needs one sub-folder per class (<wnid>/*.JPEG), found {len(wnids)}")
    workers = workers or min(8, os.cpu_count() or 1)
    with ArtifactWriter(out_dir, DATASET, "image-folder") as w, ThreadPoolExecutor(workers) as pool:
        for c, wnid in enumerate(wnids):
            folder = root / wnid
            files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if len(files) < per_class:
                raise DataError(
                    f"{folder}: class {c} ({wnid}) has {len(files)} images, needs at least {per_class}"
                )
            w.save(class_file(c), np.stack(list(pool.map(downsample_image, files[:per_class]))))
        return w.commit(
            _facts(
                len(wnids),
                per_class,
                n_train,
                {"class_names": wnids, "resize": "whole image, RGB, Pillow Image.BOX to 32x32"},
            )
        )


def _check_split(per_class: int, n_train: int) -> None:
    if not 0 < n_train < per_class:
        raise DataError(
            f"imagenet32: need 0 < n_train < per_class, got n_train={n_train}, per_class={per_class}"
        )


def prepare_imagenet32(
    raw_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    image_folder: str | os.PathLike[str] | None = None,
    per_class: int | None = None,
    n_train: int | None = None,
) -> Path:
    """Prepare from ``raw_dir/Imagenet32_train_npz.zip`` (official or stand-in) or from ``image_folder``.

    ``per_class`` / ``n_train`` default to 700 / 600 (or the stand-in's values from ``standin.json``).
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if image_folder is not None:
        return prepare_imagenet32_from_folder(
            image_folder, out_dir, per_class=per_class or PER_CLASS, n_train=n_train or N_TRAIN
        )
    source, standin, md5s = identify_raw(
        raw_dir,
        {ZIP_NAME: None},
        DATASET,
        missing=licence_help(raw_dir, out_dir),
        fix="download it again",
    )
    n_classes = N_CLASSES if standin is None else standin_size(standin, "n_classes", raw_dir, N_CLASSES)
    per_class = per_class or (
        PER_CLASS if standin is None else standin_size(standin, "per_class", raw_dir, 10 * PER_CLASS)
    )
    n_train = n_train or (
        N_TRAIN if standin is None else standin_size(standin, "n_train", raw_dir, 10 * N_TRAIN)
    )
    _check_split(per_class, n_train)
    return prepare_imagenet32_from_zip(
        raw_dir / ZIP_NAME,
        out_dir,
        source=source,
        n_classes=n_classes,
        per_class=per_class,
        n_train=n_train,
        facts={"raw_md5": md5s},
    )


def load_imagenet32(
    prepared_dir: str | os.PathLike[str],
    *,
    classes: Sequence[int] | None = None,
    verify: bool = True,
) -> dict[str, np.ndarray]:
    """Load the prepared artifact: ``train_images`` [K, n_train, 3, 32, 32] and ``test_images``
    [K, per_class - n_train, 3, 32, 32] uint8 (views of one array), ``classes`` int64 [K]
    (all classes when ``classes`` is None)."""
    prepared_dir = Path(prepared_dir)
    cmd = prepare_command(DATASET, prepared_dir)
    missing = f"{prepared_dir}: no prepared ImageNet32 (manifest.json missing). " + licence_help(
        default_raw_dir(prepared_dir, DATASET), prepared_dir
    )
    m = read_manifest(prepared_dir, DATASET, missing)
    fix = f"re-run `{cmd}`"
    try:
        n_classes, per_class, n_train = int(m["n_classes"]), int(m["per_class"]), int(m["n_train"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(
            f"{prepared_dir / 'manifest.json'}: missing n_classes/per_class/n_train; {fix}"
        ) from e
    cls = np.arange(n_classes, dtype=np.int64) if classes is None else np.asarray(classes, dtype=np.int64)
    if cls.ndim != 1 or (cls.size and (cls.min() < 0 or cls.max() >= n_classes)):
        raise DataError(f"{prepared_dir}: classes must be indices in 0..{n_classes - 1}")
    images = np.empty((cls.size, per_class, 3, 32, 32), dtype=np.uint8)
    for i, c in enumerate(cls.tolist()):
        a = load_array(prepared_dir, m, class_file(c), verify=verify, mmap=True, fix=fix)
        check_layout(prepared_dir / class_file(c), a, (per_class, 3, 32, 32), "uint8", fix)
        images[i] = a
    return {"train_images": images[:, :n_train], "test_images": images[:, n_train:], "classes": cls}


def verify_prepared(prepared_dir: str | os.PathLike[str], m: dict[str, Any]) -> None:
    """Content checks of a prepared ImageNet32 artifact beyond its sha256s (`lop data verify`): positive
    ``n_classes`` / ``per_class`` / ``n_train`` with ``n_train < per_class`` (and ``n_test`` their
    difference), exactly the files ``class_0000.npy`` .. of ``n_classes`` classes, each uint8
    ``[per_class, 3, 32, 32]`` (read memory-mapped, one class at a time)."""
    prepared_dir = Path(prepared_dir)
    where = prepared_dir / "manifest.json"
    fix = f"re-run `{prepare_command(DATASET, prepared_dir)}`"
    sizes = {}
    for key in ("n_classes", "per_class", "n_train"):
        value = m.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"{where}: {key} must be a positive integer, got {value!r}; {fix}")
        sizes[key] = value
    n_classes, per_class, n_train = sizes["n_classes"], sizes["per_class"], sizes["n_train"]
    if n_train >= per_class or m.get("n_test", per_class - n_train) != per_class - n_train:
        raise DataError(
            f"{where}: n_train {n_train}, n_test {m.get('n_test')!r} and per_class {per_class} disagree; {fix}"
        )
    expected = {class_file(c) for c in range(n_classes)}
    listed = set(m.get("files") or {})
    if listed != expected:
        odd = sorted(listed ^ expected)[0]
        what = "is missing" if odd in expected else "is not a class file of the declared classes"
        raise DataError(f"{prepared_dir / odd}: {what} (n_classes = {n_classes}); {fix}")
    for c in range(n_classes):
        a = load_array(prepared_dir, m, class_file(c), verify=False, mmap=True, fix=fix)
        check_layout(prepared_dir / class_file(c), a, (per_class, 3, 32, 32), "uint8", fix)
