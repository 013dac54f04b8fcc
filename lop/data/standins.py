"""Deterministic, learnable stand-ins written in the EXACT official raw formats (docs/protocols/datasets.md).

For machines without the real datasets (tests, CI, demos). Each generator writes the official file names
and formats plus the marker ``standin.json`` (generator, seed, sizes, md5 of every file), which
`lop data prepare` accepts in place of the official checksums and records as ``source: standin`` and
``stand_in: true`` in the prepared manifest (runs trained on it record ``stand_in: true`` in ``run.json``).

* MNIST: scikit-learn's 8×8 digits, bilinearly resampled into 28×28 with a random scale and shift per
  example, random gain and pixel noise; the train file draws on digits 0..1499, the test file on
  1500..1796 (different writers), as IDX ``.gz`` files.
* CIFAR-10 / CIFAR-100 / ImageNet32: each class is a smooth template (base colour plus three coloured sinusoidal
  gratings of class-specific frequency, orientation and phase); every image is its class template with a
  random shift, horizontal flip, contrast and brightness, plus a random distractor grating and Gaussian
  pixel noise. A small convnet separates the classes well above chance but not perfectly.
* ImageNet32, ``style="textures"`` (an option of `write_imagenet32_standin`; the sizes in `SIZES` use
  the templates): each class is a *texture*, one full-image grating of class-specific frequency and
  orientation drawn at a uniformly random phase (a random translation) in a random colour, on a
  background whose mean colour carries a weak class-specific offset, plus Gaussian pixel noise. Over
  random phases the grating averages to zero, so a linear classifier of the pixels can use only the
  colour offset (≈ 70 % on a pair of classes), while a convnet (local filters, ReLU, max-pooling: a
  translation-invariant energy detector) can separate a pair almost perfectly. Tried as a demo stream
  for Continual ImageNet (docs/image-experiments.md records what it showed).

Data generation uses a numpy ``Generator`` seeded from (seed, dataset); the bytes (and so the md5s) are a
function of the arguments alone (gzip/tar/zip timestamps fixed).
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from lop.data import cifar10, cifar100, imagenet32, mnist
from lop.data.artifact import atomic_file, write_json
from lop.data.digits import load_digits
from lop.data.download import md5sum
from lop.data.idx import write_idx
from lop.data.raw import STANDIN_JSON

GENERATOR = "lop.data.standins"
SIZES: dict[str, dict[str, dict[str, int | str]]] = {
    "mnist": {
        "small": {"n_train": 6000, "n_test": 1000},
        "demo": {"n_train": 60000, "n_test": 10000},
    },
    "cifar100": {
        "small": {"train_bin_per_class": 20, "test_per_class": 5, "val_per_class": 2},
        "demo": {"train_bin_per_class": 500, "test_per_class": 100, "val_per_class": 50},
    },
    "cifar10": {
        "small": {"train_bin_per_class": 20, "test_per_class": 5, "val_per_class": 2},
        "demo": {"train_bin_per_class": 5000, "test_per_class": 1000, "val_per_class": 500},
    },
    "imagenet32": {
        "small": {"n_classes": 10, "per_class": 70, "n_train": 60},
        "demo": {"n_classes": 100, "per_class": 700, "n_train": 600},
    },
}
_DATASET_KEY = {"mnist": 1, "cifar100": 2, "imagenet32": 3, "cifar10": 4}
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_CHUNK = 2048


def _rng(dataset: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _DATASET_KEY[dataset]])


def _finish(raw_dir: Path, dataset: str, names: list[str], seed: int, facts: dict[str, Any]) -> Path:
    info = {
        "dataset": dataset,
        "generator": GENERATOR,
        "seed": int(seed),
        "files": {n: md5sum(raw_dir / n) for n in names},
        "note": "stand-in data in the official format; NOT the real dataset",
        **facts,
    }
    return write_json(raw_dir / STANDIN_JSON, info)


# ---- MNIST ------------------------------------------------------------------------------------------


def _resample_weights(coord: np.ndarray, n_src: int) -> np.ndarray:
    """Bilinear (hat-kernel) weights ``[..., n_src]`` of source pixels at fractional coordinates."""
    return np.maximum(0.0, 1.0 - np.abs(coord[..., None] - np.arange(n_src)))


def render_digits(rng: np.random.Generator, src: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` jittered 28×28 uint8 digits drawn from ``src`` = (images [m, 8, 8] in 0..16, labels [m])."""
    images, labels = src
    pick = rng.integers(0, len(images), n)
    scale = rng.uniform(2.0, 2.5, (n, 2))  # output pixels per source pixel: digit box ≈ 16–20 px
    shift = rng.uniform(-2.0, 2.0, (n, 2))
    gain = rng.uniform(0.8, 1.2, n)
    out = np.arange(28, dtype=np.float64)
    uy = (out[None, :] - 13.5 - shift[:, :1]) / scale[:, :1] + 3.5  # [n, 28] source row coordinates
    ux = (out[None, :] - 13.5 - shift[:, 1:]) / scale[:, 1:] + 3.5
    wy, wx = _resample_weights(uy, 8), _resample_weights(ux, 8)  # [n, 28, 8]
    img = (wy @ images[pick].astype(np.float64)) @ wx.transpose(0, 2, 1)  # [n, 28, 28]
    noise = rng.normal(0.0, 12.0, img.shape) * (img > 0.5)  # background stays 0, as in MNIST
    img = img * (255.0 / 16.0) * gain[:, None, None] + noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), labels[pick].astype(np.uint8)


def write_mnist_standin(raw_dir: str | os.PathLike[str], *, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Write the four MNIST IDX ``.gz`` files (official names) + ``standin.json`` into ``raw_dir``."""
    raw_dir = Path(raw_dir)
    rng = _rng("mnist", seed)
    x, y = load_digits()
    src = (x.reshape(-1, 8, 8) * 16.0, y)
    cut = 1500
    train = render_digits(rng, (src[0][:cut], src[1][:cut]), n_train)
    test = render_digits(rng, (src[0][cut:], src[1][cut:]), n_test)
    write_idx(raw_dir / mnist.TRAIN_IMAGES, train[0])
    write_idx(raw_dir / mnist.TRAIN_LABELS, train[1])
    write_idx(raw_dir / mnist.TEST_IMAGES, test[0])
    write_idx(raw_dir / mnist.TEST_LABELS, test[1])
    return _finish(raw_dir, "mnist", list(mnist.FILES), seed, {"n_train": n_train, "n_test": n_test})


# ---- CIFAR-100 / ImageNet32 images ------------------------------------------------------------------


def class_templates(rng: np.random.Generator, n_classes: int, k: int = 3) -> dict[str, np.ndarray]:
    """Per-class template parameters: base colour and ``k`` coloured gratings."""
    return {
        "colour": rng.uniform(80.0, 175.0, (n_classes, 3)),
        "freq": rng.uniform(0.5, 4.0, (n_classes, k)),  # cycles per 32 pixels
        "theta": rng.uniform(0.0, np.pi, (n_classes, k)),
        "phase": rng.uniform(0.0, 2 * np.pi, (n_classes, k)),
        "amp": rng.uniform(-40.0, 40.0, (n_classes, k, 3)),
    }


def _grating(freq, theta, phase, x, y) -> np.ndarray:
    """sin(2π f (x cos θ + y sin θ)/32 + φ) for per-image parameters ``[n]`` and coords ``[n, 32]`` (float32)."""
    w = (2 * np.pi / 32.0) * freq
    gx = (w * np.cos(theta)).astype(np.float32)[:, None, None] * x[:, None, :]
    gy = (w * np.sin(theta)).astype(np.float32)[:, None, None] * y[:, :, None]
    return np.sin(gx + gy + phase.astype(np.float32)[:, None, None])  # [n, 32(y), 32(x)]


def render_templates(rng: np.random.Generator, t: dict[str, np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Images uint8 [n, 3, 32, 32] of classes ``labels`` (0-based) from templates ``t`` (see module doc)."""
    out = np.empty((len(labels), 3, 32, 32), dtype=np.uint8)
    coords = np.arange(32, dtype=np.float32)
    f32 = np.float32
    for start in range(0, len(labels), _CHUNK):
        lab = labels[start : start + _CHUNK]
        n = len(lab)
        dx, dy = rng.integers(-4, 5, (2, n)).astype(f32)
        flip = rng.random(n) < 0.5
        contrast = rng.uniform(0.6, 1.4, n)
        x = np.where(flip[:, None], 31.0 - coords, coords) + dx[:, None]
        y = coords[None, :] + dy[:, None]
        base = t["colour"][lab] + rng.normal(0.0, 25.0, (n, 3))  # class colour + brightness jitter
        img = np.broadcast_to(base.astype(f32)[:, :, None, None], (n, 3, 32, 32)).copy()
        for j in range(t["freq"].shape[1]):
            g = _grating(t["freq"][lab, j], t["theta"][lab, j], t["phase"][lab, j], x, y)
            img += (contrast[:, None] * t["amp"][lab, j]).astype(f32)[:, :, None, None] * g[:, None]
        for _ in range(2):  # distractor gratings
            d = _grating(
                rng.uniform(0.5, 6.0, n), rng.uniform(0, np.pi, n), rng.uniform(0, 2 * np.pi, n), x, y
            )
            img += rng.uniform(-40.0, 40.0, (n, 3)).astype(f32)[:, :, None, None] * d[:, None]
        img += rng.standard_normal(img.shape, dtype=f32) * f32(25.0)
        out[start : start + n] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


TEXTURE = {
    "freq": (3.0, 8.0),  # cycles per 32 pixels: resolvable by 5x5 filters, never a constant image
    "amplitude": 110.0,  # grating amplitude (grey levels) of the largest colour channel
    "background": (90.0, 165.0),  # per-image mean colour, uniform per channel
    "class_offset": 40.0,  # class-specific background offset, uniform in ±40 per channel: the linear cue
    "noise": 15.0,  # Gaussian pixel noise (grey levels)
}


def texture_classes(rng: np.random.Generator, n_classes: int) -> dict[str, np.ndarray]:
    """Per-class texture parameters: grating frequency (cycles per 32 px), orientation and colour offset."""
    lo, hi = TEXTURE["freq"]
    off = TEXTURE["class_offset"]
    return {
        "freq": rng.uniform(lo, hi, n_classes),
        "theta": rng.uniform(0.0, np.pi, n_classes),
        "offset": rng.uniform(-off, off, (n_classes, 3)),
    }


def render_textures(rng: np.random.Generator, t: dict[str, np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Images uint8 [n, 3, 32, 32] of classes ``labels`` (0-based) from texture classes ``t``.

    ``img[c, y, x] = b_c + o[label, c] + A·u_c·sin(2π f (x cos θ + y sin θ)/32 + φ) + ε``, with per-image
    background ``b ~ U(90, 165)³``, colour ``u = v / max|v|``, ``v ~ U(-1, 1)³``, phase ``φ ~ U(0, 2π)``
    and noise ``ε ~ N(0, 15²)`` per pixel; ``(f, θ, o)`` are the class's (`texture_classes`).
    """
    out = np.empty((len(labels), 3, 32, 32), dtype=np.uint8)
    coords = np.arange(32, dtype=np.float32)
    f32 = np.float32
    lo, hi = TEXTURE["background"]
    for start in range(0, len(labels), _CHUNK):
        lab = labels[start : start + _CHUNK]
        n = len(lab)
        phase = rng.uniform(0.0, 2 * np.pi, n)
        colour = rng.uniform(-1.0, 1.0, (n, 3))
        colour *= TEXTURE["amplitude"] / np.abs(colour).max(axis=1, keepdims=True)
        base = rng.uniform(lo, hi, (n, 3)) + t["offset"][lab]
        xs = np.broadcast_to(coords, (n, 32))
        g = _grating(t["freq"][lab], t["theta"][lab], phase, xs, xs)  # [n, 32(y), 32(x)]
        img = base.astype(f32)[:, :, None, None] + colour.astype(f32)[:, :, None, None] * g[:, None]
        img += rng.standard_normal(img.shape, dtype=f32) * f32(TEXTURE["noise"])
        out[start : start + n] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes | None) -> None:
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    if data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tf.addfile(info)
    else:
        info.size, info.mode = len(data), 0o644
        tf.addfile(info, io.BytesIO(data))


def _cifar_records(rng: np.random.Generator, t: dict[str, np.ndarray], per_class: int) -> bytes:
    fine = rng.permutation(np.repeat(np.arange(cifar100.N_CLASSES), per_class))
    images = render_templates(rng, t, fine)
    rec = np.empty((len(fine), cifar100.RECORD_BYTES), dtype=np.uint8)
    rec[:, 0] = fine // 5
    rec[:, 1] = fine
    rec[:, 2:] = images.reshape(len(fine), -1)
    return rec.tobytes()


def _write_cifar_archive(archive: Path, folder: str, members: list[tuple[str, bytes]]) -> None:
    """A reproducible ``.tar.gz`` like the official CIFAR archives: the directory `folder`, then each
    ``(name, bytes)`` member under it, in order (fixed gzip mtime, PAX format; written atomically)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with (
        atomic_file(archive) as tmp,
        open(tmp, "wb") as f,
        gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=1) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf,
    ):
        _tar_add(tf, folder, None)
        for name, data in members:
            _tar_add(tf, f"{folder}/{name}", data)


def _cifar_facts(train_bin_per_class: int, test_per_class: int, val_per_class: int) -> dict[str, int]:
    """The sizes a CIFAR stand-in's ``standin.json`` records; ValueError unless
    0 < val_per_class < train_bin_per_class and test_per_class >= 1."""
    if not 0 < val_per_class < train_bin_per_class or test_per_class < 1:
        raise ValueError("need 0 < val_per_class < train_bin_per_class and test_per_class >= 1")
    return {
        "train_bin_per_class": train_bin_per_class,
        "test_per_class": test_per_class,
        "val_per_class": val_per_class,
    }


def write_cifar100_standin(
    raw_dir: str | os.PathLike[str],
    *,
    train_bin_per_class: int,
    test_per_class: int,
    val_per_class: int,
    seed: int = 0,
) -> Path:
    """Write ``cifar-100-binary.tar.gz`` (official members and record format) + ``standin.json``."""
    raw_dir = Path(raw_dir)
    facts = _cifar_facts(train_bin_per_class, test_per_class, val_per_class)
    rng = _rng("cifar100", seed)
    t = class_templates(rng, cifar100.N_CLASSES)
    train = _cifar_records(rng, t, train_bin_per_class)
    test = _cifar_records(rng, t, test_per_class)
    fine_names = "".join(f"standin_class_{c:02d}\n" for c in range(cifar100.N_CLASSES)).encode()
    coarse_names = "".join(f"standin_superclass_{c:02d}\n" for c in range(cifar100.N_COARSE)).encode()
    members = [
        (cifar100.COARSE_NAMES, coarse_names),
        (cifar100.FINE_NAMES, fine_names),
        (cifar100.TEST_BIN, test),
        (cifar100.TRAIN_BIN, train),
    ]
    _write_cifar_archive(raw_dir / cifar100.ARCHIVE, cifar100.FOLDER, members)
    return _finish(raw_dir, "cifar100", [cifar100.ARCHIVE], seed, facts)


def write_cifar10_standin(
    raw_dir: str | os.PathLike[str],
    *,
    train_bin_per_class: int,
    test_per_class: int,
    val_per_class: int,
    seed: int = 0,
) -> Path:
    """Write ``cifar-10-binary.tar.gz`` (official members ``cifar-10-batches-bin/data_batch_1..5.bin``,
    ``test_batch.bin``, ``batches.meta.txt``; 1 label byte + 3072 pixel bytes per record) +
    ``standin.json``. The shuffled training records are cut into five files of (nearly) equal size, so
    a file's class counts are unequal, as in the real files."""
    raw_dir = Path(raw_dir)
    facts = _cifar_facts(train_bin_per_class, test_per_class, val_per_class)
    rng = _rng("cifar10", seed)
    t = class_templates(rng, cifar10.N_CLASSES)

    def records(per_class: int) -> np.ndarray:
        labels = rng.permutation(np.repeat(np.arange(cifar10.N_CLASSES), per_class))
        rec = np.empty((len(labels), cifar10.RECORD_BYTES), dtype=np.uint8)
        rec[:, 0] = labels
        rec[:, 1:] = render_templates(rng, t, labels).reshape(len(labels), -1)
        return rec

    train, test = records(train_bin_per_class), records(test_per_class)
    names = "".join(f"standin_class_{c}\n" for c in range(cifar10.N_CLASSES)).encode()
    parts = np.array_split(train, len(cifar10.TRAIN_BINS))
    members = [(cifar10.NAMES, names)]
    members += [(name, part.tobytes()) for name, part in zip(cifar10.TRAIN_BINS, parts, strict=True)]
    members.append((cifar10.TEST_BIN, test.tobytes()))
    _write_cifar_archive(raw_dir / cifar10.ARCHIVE, cifar10.FOLDER, members)
    return _finish(raw_dir, "cifar10", [cifar10.ARCHIVE], seed, facts)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed ``.npz`` (zip of ``.npy``) with fixed timestamps: byte-stable, no pickle."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for key, value in arrays.items():
            with zf.open(zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE), "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)
    return buf.getvalue()


def write_imagenet32_standin(
    raw_dir: str | os.PathLike[str],
    *,
    n_classes: int,
    per_class: int,
    n_train: int,
    seed: int = 0,
    compress: bool = False,
    style: str = "templates",
) -> Path:
    """Write ``Imagenet32_train_npz.zip`` (members ``Imagenet32_train_npz/train_data_batch_1..10.npz`` with
    ``data`` N×3072 uint8 CHW, ``labels`` 1..C int64, ``mean``) + ``standin.json``. Each class has
    ``per_class`` images plus up to 10% extra (so the first-in-file-order selection matters); the rows are
    shuffled across the 10 batches. ``style``: ``templates`` (class templates, `render_templates`) or
    ``textures`` (random-phase texture classes, `render_textures`; see the module doc)."""
    raw_dir = Path(raw_dir)
    if not 0 < n_train < per_class or n_classes < 2:
        raise ValueError("need 0 < n_train < per_class and n_classes >= 2")
    if style not in ("templates", "textures"):
        raise ValueError(f"unknown style {style!r}; choose 'templates' or 'textures'")
    rng = _rng("imagenet32", seed)
    classes, render = (
        (class_templates, render_templates) if style == "templates" else (texture_classes, render_textures)
    )
    t = classes(rng, n_classes)
    counts = per_class + rng.integers(0, per_class // 10 + 1, n_classes)
    labels = rng.permutation(np.repeat(np.arange(n_classes), counts))
    images = render(rng, t, labels).reshape(len(labels), -1)
    raw_dir.mkdir(parents=True, exist_ok=True)
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with atomic_file(raw_dir / imagenet32.ZIP_NAME) as tmp, zipfile.ZipFile(tmp, "w", method) as zf:
        zf.writestr(zipfile.ZipInfo("Imagenet32_train_npz/", date_time=_ZIP_DATE), b"")
        for k, rows in enumerate(np.array_split(np.arange(len(labels)), imagenet32.N_BATCHES), start=1):
            data = images[rows]
            payload = npz_bytes(
                {"data": data, "labels": labels[rows].astype(np.int64) + 1, "mean": data.mean(axis=0)}
            )
            info = zipfile.ZipInfo(f"Imagenet32_train_npz/train_data_batch_{k}.npz", date_time=_ZIP_DATE)
            info.compress_type = method
            zf.writestr(info, payload)
    facts = {"n_classes": n_classes, "per_class": per_class, "n_train": n_train, "style": style}
    return _finish(raw_dir, "imagenet32", [imagenet32.ZIP_NAME], seed, facts)


def write_standin(dataset: str, raw_dir: str | os.PathLike[str], size: str = "small", seed: int = 0) -> Path:
    """Write the ``size`` (``small`` | ``demo``) stand-in of ``dataset`` into ``raw_dir``."""
    if dataset not in SIZES or size not in SIZES[dataset]:
        raise ValueError(f"unknown stand-in {dataset!r}/{size!r}; choose from {sorted(SIZES)} x small|demo")
    (Path(raw_dir) / STANDIN_JSON).unlink(missing_ok=True)  # stale md5s must not vouch for new files
    writer = {
        "mnist": write_mnist_standin,
        "cifar10": write_cifar10_standin,
        "cifar100": write_cifar100_standin,
        "imagenet32": write_imagenet32_standin,
    }[dataset]
    return writer(raw_dir, seed=seed, **SIZES[dataset][size])
