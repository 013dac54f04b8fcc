"""CIFAR-100 binary: stand-in tar.gz -> safe extraction -> parse -> split -> load, and failure paths."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from lop.data import cifar100, cifar_common
from lop.data.artifact import verify_artifact
from lop.data.download import md5sum
from lop.data.standins import write_cifar100_standin
from lop.errors import DataError

TRAIN_PC, TEST_PC, VAL_PC = 6, 2, 2


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    d = tmp_path_factory.mktemp("cifar") / "raw" / "cifar100"
    write_cifar100_standin(
        d, train_bin_per_class=TRAIN_PC, test_per_class=TEST_PC, val_per_class=VAL_PC, seed=1
    )
    return d


@pytest.fixture(scope="module")
def prepared(raw):
    return cifar100.prepare_cifar100(raw, raw.parent.parent / "prepared" / "cifar100")


def _members(path):
    with tarfile.open(path, "r:gz") as tf:
        return {m.name: (tf.extractfile(m).read() if m.isfile() else None) for m in tf.getmembers()}


def test_standin_archive_has_the_official_members_and_records(raw):
    m = _members(raw / cifar100.ARCHIVE)
    for name in ("train.bin", "test.bin", "fine_label_names.txt", "coarse_label_names.txt"):
        assert f"cifar-100-binary/{name}" in m
    train = np.frombuffer(m["cifar-100-binary/train.bin"], np.uint8).reshape(-1, 3074)
    assert train.shape[0] == 100 * TRAIN_PC
    assert np.array_equal(train[:, 0], train[:, 1] // 5)  # coarse byte first, then fine
    assert np.array_equal(np.bincount(train[:, 1], minlength=100), np.full(100, TRAIN_PC))
    info = json.loads((raw / "standin.json").read_text())
    assert info["files"] == {cifar100.ARCHIVE: md5sum(raw / cifar100.ARCHIVE)}


def test_round_trip_pixels_in_nchw_rgb(raw, prepared):
    d = cifar100.load_cifar100(prepared)
    rec = np.frombuffer(_members(raw / cifar100.ARCHIVE)["cifar-100-binary/test.bin"], np.uint8).reshape(
        -1, 3074
    )
    assert d["test_images"].shape == (100 * TEST_PC, 3, 32, 32)
    np.testing.assert_array_equal(d["test_labels"], rec[:, 1])
    np.testing.assert_array_equal(d["test_images"][:, 0].reshape(len(rec), -1), rec[:, 2:1026])  # R plane
    np.testing.assert_array_equal(d["test_images"][:, 2, 31, 31], rec[:, -1])  # last byte = B[31, 31]
    m = json.loads((prepared / "manifest.json").read_text())
    assert m["source"] == "standin" and m["n_classes"] == 100 and m["val_per_class"] == VAL_PC
    assert m["train_per_class"] == TRAIN_PC - VAL_PC and len(m["class_names"]) == 100
    assert "last 2 images of each fine class" in m["split"]
    verify_artifact(prepared)
    assert sorted(p.name for p in raw.iterdir()) == [cifar100.ARCHIVE, "standin.json"]  # extraction cleaned


def test_split_is_per_class_disjoint_and_the_last_in_file_order(prepared):
    d = cifar100.load_cifar100(prepared)
    tr, va, y = d["train_index"], d["val_index"], d["train_labels"]
    assert np.intersect1d(tr, va).size == 0 and np.union1d(tr, va).size == len(y)
    assert np.array_equal(np.bincount(y[tr], minlength=100), np.full(100, TRAIN_PC - VAL_PC))
    assert np.array_equal(np.bincount(y[va], minlength=100), np.full(100, VAL_PC))
    for c in (0, 57, 99):
        rows = np.flatnonzero(y == c)
        assert np.array_equal(np.sort(va[y[va] == c]), rows[-VAL_PC:])


def test_official_split_sizes_450_50():
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(100), 500)).astype(np.uint8)
    tr, va = cifar_common.split_train_val(labels, cifar100.VAL_PER_CLASS, cifar100.N_CLASSES)
    assert tr.dtype == va.dtype == np.int64 and tr.size == 45_000 and va.size == 5_000
    assert np.array_equal(np.bincount(labels[tr], minlength=100), np.full(100, 450))
    assert np.array_equal(np.bincount(labels[va], minlength=100), np.full(100, 50))
    assert np.intersect1d(tr, va).size == 0
    # seed-independent: a function of the file order only
    assert np.array_equal(cifar_common.split_train_val(labels, 50, cifar100.N_CLASSES)[1], va)


def _archive(tmp_path, train: bytes, test: bytes, names: int = 100):
    raw = tmp_path / "raw"
    raw.mkdir()
    with tarfile.open(raw / cifar100.ARCHIVE, "w:gz") as tf:
        for name, data in {
            "train.bin": train,
            "test.bin": test,
            "fine_label_names.txt": "".join(f"c{i}\n" for i in range(names)).encode(),
            "coarse_label_names.txt": "".join(f"s{i}\n" for i in range(20)).encode(),
        }.items():
            info = tarfile.TarInfo(f"cifar-100-binary/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    info = {"dataset": "cifar100", "train_bin_per_class": 3, "test_per_class": 1, "val_per_class": 1}
    info["files"] = {cifar100.ARCHIVE: md5sum(raw / cifar100.ARCHIVE)}
    (raw / "standin.json").write_text(json.dumps(info))
    return raw


def _records(per_class: int, fine_override: dict[int, int] | None = None) -> bytes:
    fine = np.repeat(np.arange(100), per_class)
    rec = np.zeros((fine.size, 3074), np.uint8)
    rec[:, 0], rec[:, 1] = fine // 5, fine
    for row, value in (fine_override or {}).items():
        rec[row, 1] = value
    return rec.tobytes()


def test_small_valid_archive_prepares(tmp_path):
    raw = _archive(tmp_path, _records(3), _records(1))
    d = cifar100.load_cifar100(cifar100.prepare_cifar100(raw, tmp_path / "out"))
    assert d["train_images"].shape == (300, 3, 32, 32) and d["val_index"].size == 100


def test_record_size_is_checked(tmp_path):
    raw = _archive(tmp_path, _records(3)[:-5], _records(1))
    with pytest.raises(DataError, match="3074-byte records"):
        cifar100.prepare_cifar100(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_fine_label_out_of_range(tmp_path):
    raw = _archive(tmp_path, _records(3, {7: 100}), _records(1))
    with pytest.raises(DataError, match=r"record 7 has fine label 100, outside 0\.\.99"):
        cifar100.prepare_cifar100(raw, tmp_path / "out")


def test_unbalanced_classes_are_rejected(tmp_path):
    raw = _archive(tmp_path, _records(3, {0: 1}), _records(1))
    with pytest.raises(DataError, match="images of class 0, expected 3 per class"):
        cifar100.prepare_cifar100(raw, tmp_path / "out")


def test_malicious_archive_is_not_extracted(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    with tarfile.open(raw / cifar100.ARCHIVE, "w:gz") as tf:
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    (raw / "standin.json").write_text(
        json.dumps(
            {
                "dataset": "cifar100",
                "files": {cifar100.ARCHIVE: md5sum(raw / cifar100.ARCHIVE)},
                "train_bin_per_class": 3,
                "test_per_class": 1,
                "val_per_class": 1,
            }
        )
    )
    with pytest.raises(DataError, match=r"'\.\.'"):
        cifar100.prepare_cifar100(raw, tmp_path / "out")
    assert not (tmp_path.parent / "escape.txt").exists() and not (tmp_path / "escape.txt").exists()
    assert sorted(p.name for p in raw.iterdir()) == [cifar100.ARCHIVE, "standin.json"]


def test_official_md5_required_without_standin(tmp_path):
    raw = _archive(tmp_path, _records(3), _records(1))
    (raw / "standin.json").unlink()
    with pytest.raises(DataError, match=cifar100.MD5):
        cifar100.prepare_cifar100(raw, tmp_path / "out")


def test_corrupt_prepared_index_file(prepared, tmp_path):
    out = cifar100.prepare_cifar100(prepared.parent.parent / "raw" / "cifar100", tmp_path / "p")
    np.save(out / "val_index.npy", np.load(out / "val_index.npy")[::-1].copy())
    with pytest.raises(DataError, match=r"val_index\.npy: sha256 mismatch.*lop data prepare cifar100"):
        cifar100.load_cifar100(out)


def test_missing_prepared_dir(tmp_path):
    with pytest.raises(DataError, match=r"cifar-100-binary\.tar\.gz.*lop data prepare cifar100"):
        cifar100.load_cifar100(tmp_path / "prepared" / "cifar100")
