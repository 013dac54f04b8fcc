"""`lop data verify` catches forged data (docs/reliability.md, "Data verification").

Each test forges one kind of file the way a forger who knows the formats would: the data file is changed
*and* the checksum that vouches for it (``standin.json`` md5, ``manifest.json`` sha256) is rewritten to
match, so only the pinned stand-in checksums (`lop.data.standin_pins`) or the content checks can catch it.
Every forged folder must stop with exit code 2 and one ``error:`` line naming the file or folder.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lop.data import cifar100, imagenet32, mnist
from lop.data.artifact import sha256sum
from lop.data.download import md5sum
from lop.data.idx import read_idx, write_idx
from lop.data.raw import STANDIN_JSON
from lop.data.standin_pins import PINS, pin_for_standin
from lop.data.standins import npz_bytes, write_standin


def verify(folder: Path) -> tuple[int, str, str]:
    """`lop data verify <folder>` in-process: (exit code, stdout, stderr)."""
    from lop.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["data", "verify", str(folder)])
    return code, out.getvalue(), err.getvalue()


def assert_caught(folder: Path, *words: str) -> str:
    code, out, err = verify(folder)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, out, err)
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """Small stand-ins (seed 0, pinned) of the three datasets, raw and prepared, written once."""
    root = tmp_path_factory.mktemp("standins")
    from lop.cli import main

    for dataset in ("mnist", "cifar100", "imagenet32"):
        write_standin(dataset, root / f"raw_{dataset}", size="small", seed=0)
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["data", "prepare", dataset, "--raw", str(root / f"raw_{dataset}"), "--out",
                         str(root / f"prep_{dataset}")]) == 0  # fmt: skip
    return root


@pytest.fixture
def copy(made, tmp_path):
    """A fresh copy of one made folder to forge."""

    def get(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(made / name, dst)
        return dst

    return get


def _restamp_standin(raw: Path, **changes) -> None:
    """Rewrite standin.json as a forger would: the md5 of every file recomputed, optional fields changed."""
    info = json.loads((raw / STANDIN_JSON).read_text())
    info["files"] = {name: md5sum(raw / name) for name in info["files"]}
    info.update(changes)
    (raw / STANDIN_JSON).write_text(json.dumps(info))


def _restamp_manifest(prep: Path, **changes) -> None:
    """Rewrite manifest.json as a forger would: sha256 and shape of every listed file recomputed."""
    m = json.loads((prep / "manifest.json").read_text())
    for name in list(m["files"]):
        if not (prep / name).is_file():
            del m["files"][name]
            continue
        a = np.load(prep / name, mmap_mode="r")
        m["files"][name] = {"sha256": sha256sum(prep / name), "shape": list(a.shape), "dtype": a.dtype.name}
    m.update(changes)
    (prep / "manifest.json").write_text(json.dumps(m))


def test_unforged_folders_verify(made):
    """The control: every made folder verifies, and the small seed-0 stand-ins are pinned."""
    for name in (
        "raw_mnist",
        "prep_mnist",
        "raw_cifar100",
        "prep_cifar100",
        "raw_imagenet32",
        "prep_imagenet32",
    ):
        code, out, err = verify(made / name)
        assert code == 0 and out.startswith("ok: "), (name, err)
    for dataset in ("mnist", "cifar100", "imagenet32"):
        info = json.loads((made / f"raw_{dataset}" / STANDIN_JSON).read_text())
        assert pin_for_standin(info) is PINS[(dataset, "small")]


def test_empty_folder_is_an_error(tmp_path):
    assert_caught(tmp_path, str(tmp_path), "neither a prepared artifact")


# ---- raw stand-ins ------------------------------------------------------------------------------


def test_raw_mnist_in_range_label_change_is_caught_by_the_pin(copy):
    """A plausible edit (one label changed to another digit) passes every content check; the pin catches it."""
    raw = copy("raw_mnist")
    path = raw / mnist.TRAIN_LABELS
    labels = read_idx(path).copy()
    labels[0] = (labels[0] + 1) % 10
    write_idx(path, labels)
    _restamp_standin(raw)
    assert_caught(raw, str(path), "altered after it was written")


def test_raw_mnist_truncated_unpinned_is_caught_by_content(copy):
    """Claiming another seed escapes the pin; the IDX content check still catches a truncated file."""
    raw = copy("raw_mnist")
    path = raw / mnist.TEST_IMAGES
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[: len(data) // 2]))
    _restamp_standin(raw, seed=7)
    assert_caught(raw, str(path))


def _rewrite_cifar(raw: Path, edit) -> None:
    """Rewrite the stand-in archive with ``edit(records uint8 [N, 3074])`` applied to train.bin."""
    path = raw / cifar100.ARCHIVE
    with tarfile.open(path) as tf:
        members = [(m, tf.extractfile(m).read() if m.isfile() else None) for m in tf.getmembers()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for m, data in members:
            if data is not None and m.name.endswith(cifar100.TRAIN_BIN):
                rec = np.frombuffer(data, dtype=np.uint8).reshape(-1, cifar100.RECORD_BYTES).copy()
                data = edit(rec).tobytes()
                m.size = len(data)
            tf.addfile(m, io.BytesIO(data) if data is not None else None)
    path.write_bytes(buf.getvalue())


def test_raw_cifar100_pixel_change_is_caught_by_the_pin(copy):
    raw = copy("raw_cifar100")

    def edit(rec):
        rec[0, 100] ^= 1
        return rec

    _rewrite_cifar(raw, edit)
    _restamp_standin(raw)
    assert_caught(raw, str(raw / cifar100.ARCHIVE), "altered after it was written")


def _fine_label(value):
    def edit(rec):
        rec[0, 1] = value(int(rec[0, 1]))
        return rec

    return edit


@pytest.mark.parametrize(
    "kind, edit, words",
    [
        ("label out of range", _fine_label(lambda v: 150), "fine label 150"),
        ("one record dropped", lambda rec: rec[:-1], "images of class"),
        ("counts off (label moved)", _fine_label(lambda v: (v + 1) % 100), "images of class"),
    ],
)
def test_raw_cifar100_forgeries_unpinned_are_caught_by_content(copy, kind, edit, words):
    """Claiming another seed escapes the pin; the record/label/count checks still catch the edit."""
    raw = copy("raw_cifar100")
    _rewrite_cifar(raw, edit)
    _restamp_standin(raw, seed=7)
    assert_caught(raw, words)


def _rewrite_imagenet32(raw: Path, edit) -> None:
    """Rewrite batch 1 of the stand-in zip with ``edit(data, labels) -> (data, labels)``."""
    path = raw / imagenet32.ZIP_NAME
    with zipfile.ZipFile(path) as zf:
        members = [(i, zf.read(i)) for i in zf.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for info, data in members:
            if info.filename.endswith("train_data_batch_1.npz"):
                with np.load(io.BytesIO(data)) as z:
                    x, y = edit(z["data"].copy(), z["labels"].copy())
                data = npz_bytes({"data": x, "labels": y, "mean": x.mean(axis=0)})
            zf.writestr(info, data)


def test_raw_imagenet32_pixel_change_is_caught_by_the_pin(copy):
    raw = copy("raw_imagenet32")

    def edit(x, y):
        x[0, 0] ^= 1
        return x, y

    _rewrite_imagenet32(raw, edit)
    _restamp_standin(raw)
    assert_caught(raw, str(raw / imagenet32.ZIP_NAME), "altered after it was written")


@pytest.mark.parametrize(
    "kind, edit",
    [
        ("label 0 (labels are 1..C)", lambda x, y: (x, np.where(np.arange(len(y)) == 0, 0, y))),
        ("label above C", lambda x, y: (x, np.where(np.arange(len(y)) == 0, 10_000, y))),
        ("rows of the wrong width", lambda x, y: (x[:, :100], y)),
        ("labels and rows differ in count", lambda x, y: (x, y[:-1])),
    ],
)
def test_raw_imagenet32_forgeries_unpinned_are_caught_by_content(copy, kind, edit):
    raw = copy("raw_imagenet32")
    _rewrite_imagenet32(raw, edit)
    _restamp_standin(raw, seed=7)
    assert_caught(raw, imagenet32.ZIP_NAME)


# ---- prepared artifacts -------------------------------------------------------------------------


@pytest.mark.parametrize("dataset, name", [("mnist", "train_images.npy"), ("cifar100", "test_images.npy"),
                                           ("imagenet32", "class_0003.npy")])  # fmt: skip
def test_prepared_pixel_change_is_caught_by_the_pin(copy, dataset, name):
    """In-range pixel edits with the manifest's sha256 rewritten pass every content check but the pin."""
    prep = copy(f"prep_{dataset}")
    a = np.load(prep / name)
    a.reshape(-1)[0] ^= 1
    np.save(prep / name, a)
    _restamp_manifest(prep)
    assert_caught(prep, str(prep / name), "altered after it was prepared")


def _unpin(prep: Path) -> None:
    """Claim other raw files, so the artifact is no longer recognised as a pinned stand-in's."""
    m = json.loads((prep / "manifest.json").read_text())
    m["raw_md5"] = {k: "0" * 32 for k in m["raw_md5"]}
    (prep / "manifest.json").write_text(json.dumps(m))


def test_prepared_cifar100_class_counts_are_checked(copy):
    prep = copy("prep_cifar100")
    labels = np.load(prep / "test_labels.npy")
    labels[labels == 3] = 4  # class 3 vanishes from the test split; labels stay in range
    np.save(prep / "test_labels.npy", labels)
    _restamp_manifest(prep)
    _unpin(prep)
    assert_caught(prep, "test split", "class 3")


def test_prepared_cifar100_indices_must_partition_train(copy):
    prep = copy("prep_cifar100")
    idx = np.load(prep / "val_index.npy")
    idx[0] = idx[1]
    np.save(prep / "val_index.npy", idx)
    _restamp_manifest(prep)
    _unpin(prep)
    assert_caught(prep, "partition")


def test_prepared_cifar100_declared_sizes_are_checked(copy):
    prep = copy("prep_cifar100")
    _restamp_manifest(prep, train_per_class=17)
    _unpin(prep)
    assert_caught(prep, "train_per_class = 17")


def test_prepared_imagenet32_missing_class_file(copy):
    prep = copy("prep_imagenet32")
    (prep / "class_0009.npy").unlink()
    _restamp_manifest(prep)
    _unpin(prep)
    assert_caught(prep, "class_0009.npy", "missing")


def test_prepared_imagenet32_declared_sizes_are_checked(copy):
    prep = copy("prep_imagenet32")
    _restamp_manifest(prep, per_class=80, n_test=20)  # consistent with n_train, not with the files
    _unpin(prep)
    assert_caught(prep, "class_0000.npy", "80")
    _restamp_manifest(prep, per_class=80, n_test=10)  # n_test no longer per_class - n_train
    assert_caught(prep, "manifest.json", "n_test")
    _restamp_manifest(prep, per_class=70, n_train=70)
    assert_caught(prep, "n_train")


def test_prepared_mnist_declared_sizes_are_checked(copy):
    prep = copy("prep_mnist")
    _restamp_manifest(prep, n_test=999)
    _unpin(prep)
    assert_caught(prep, "n_test = 999")


@pytest.mark.slow
def test_pin_table_is_current(tmp_path):
    """Every pinned stand-in (small and demo), regenerated and prepared now, has the pinned checksums
    (minutes; regenerate the table with `python -m lop.data.standin_pins` when a generator changes)."""
    from lop.data.standin_pins import compute_pins

    assert compute_pins(tmp_path) == PINS


@pytest.mark.parametrize(
    "dataset, key, value",
    [
        ("cifar100", "train_bin_per_class", "abc"),
        ("cifar100", "val_per_class", None),
        ("imagenet32", "n_classes", None),
        ("imagenet32", "per_class", "70"),
        ("mnist", "n_train", 1.5),
    ],
)
def test_standin_json_sizes_that_are_not_integers_are_one_error(copy, dataset, key, value):
    """A hand-edited standin.json (sizes of the wrong type, seed changed so it is not pinned) stops
    `lop data verify` and `lop data prepare` with one line naming the file and key, not a traceback."""
    from lop.cli import main

    raw = copy(f"raw_{dataset}")
    info = json.loads((raw / STANDIN_JSON).read_text())
    info.update({key: value, "seed": 7})
    (raw / STANDIN_JSON).write_text(json.dumps(info))
    assert_caught(raw, STANDIN_JSON, key)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["data", "prepare", dataset, "--raw", str(raw), "--out", str(raw.parent / "out")])
    assert code == 2 and STANDIN_JSON in err.getvalue() and "Traceback" not in err.getvalue()
