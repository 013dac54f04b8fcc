"""CIFAR-10 binary: stand-in tar.gz in the official layout -> safe extraction -> parse -> split -> load,
the verified download, and the failure paths (corrupt file, wrong checksum, bad records)."""

from __future__ import annotations

import argparse
import io
import json
import tarfile

import numpy as np
import pytest
from test_data_download import serve

from lop.data import cifar10, cifar_common, commands, standins
from lop.data.artifact import verify_artifact
from lop.data.download import md5sum
from lop.data.standins import write_cifar10_standin
from lop.errors import DataError

TRAIN_PC, TEST_PC, VAL_PC = 7, 3, 2


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    d = tmp_path_factory.mktemp("cifar10") / "raw" / "cifar10"
    write_cifar10_standin(
        d, train_bin_per_class=TRAIN_PC, test_per_class=TEST_PC, val_per_class=VAL_PC, seed=1
    )
    return d


@pytest.fixture(scope="module")
def prepared(raw):
    return cifar10.prepare_cifar10(raw, raw.parent.parent / "prepared" / "cifar10")


def _members(path):
    with tarfile.open(path, "r:gz") as tf:
        return {m.name: (tf.extractfile(m).read() if m.isfile() else None) for m in tf.getmembers()}


def _train_records(members) -> np.ndarray:
    parts = [members[f"cifar-10-batches-bin/data_batch_{i}.bin"] for i in range(1, 6)]
    return np.frombuffer(b"".join(parts), np.uint8).reshape(-1, 3073)


def test_standin_archive_has_the_official_members_and_records(raw):
    m = _members(raw / cifar10.ARCHIVE)
    assert set(m) == {
        "cifar-10-batches-bin",
        "cifar-10-batches-bin/batches.meta.txt",
        "cifar-10-batches-bin/test_batch.bin",
        *(f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)),
    }
    train = _train_records(m)
    assert train.shape[0] == 10 * TRAIN_PC
    assert np.array_equal(np.bincount(train[:, 0], minlength=10), np.full(10, TRAIN_PC))  # label byte first
    assert len(m["cifar-10-batches-bin/batches.meta.txt"].decode().split()) == 10
    info = json.loads((raw / "standin.json").read_text())
    assert info["dataset"] == "cifar10" and info["files"] == {cifar10.ARCHIVE: md5sum(raw / cifar10.ARCHIVE)}


def test_round_trip_pixels_in_nchw_rgb_and_file_order(raw, prepared):
    d = cifar10.load_cifar10(prepared)
    m = _members(raw / cifar10.ARCHIVE)
    test = np.frombuffer(m["cifar-10-batches-bin/test_batch.bin"], np.uint8).reshape(-1, 3073)
    assert d["test_images"].shape == (10 * TEST_PC, 3, 32, 32) and d["test_images"].dtype == np.uint8
    np.testing.assert_array_equal(d["test_labels"], test[:, 0])
    np.testing.assert_array_equal(d["test_images"][:, 0].reshape(len(test), -1), test[:, 1:1025])  # R plane
    np.testing.assert_array_equal(d["test_images"][:, 2, 31, 31], test[:, -1])  # last byte = B[31, 31]
    train = _train_records(m)  # data_batch_1..5 concatenated in order
    np.testing.assert_array_equal(d["train_labels"], train[:, 0])
    np.testing.assert_array_equal(d["train_images"][:, 1, 0, :], train[:, 1025:1057])  # G row 0
    man = json.loads((prepared / "manifest.json").read_text())
    assert man["source"] == "standin" and man["stand_in"] is True and man["n_classes"] == 10
    assert man["train_per_class"] == TRAIN_PC - VAL_PC and man["val_per_class"] == VAL_PC
    assert len(man["class_names"]) == 10 and "last 2 images of each class" in man["split"]
    verify_artifact(prepared)
    assert sorted(p.name for p in raw.iterdir()) == [cifar10.ARCHIVE, "standin.json"]  # extraction cleaned


def test_split_is_per_class_disjoint_and_the_last_in_file_order(prepared):
    d = cifar10.load_cifar10(prepared)
    tr, va, y = d["train_index"], d["val_index"], d["train_labels"]
    assert np.intersect1d(tr, va).size == 0 and np.union1d(tr, va).size == len(y)
    assert np.array_equal(np.bincount(y[va], minlength=10), np.full(10, VAL_PC))
    for c in range(10):
        assert np.array_equal(np.sort(va[y[va] == c]), np.flatnonzero(y == c)[-VAL_PC:])


def test_official_split_sizes_4500_500():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 5000)).astype(np.uint8)
    tr, va = cifar_common.split_train_val(labels, cifar10.VAL_PER_CLASS, n_classes=cifar10.N_CLASSES)
    assert tr.size == 45_000 and va.size == 5_000
    assert np.array_equal(np.bincount(labels[va], minlength=10), np.full(10, 500))


def _archive(tmp_path, train: list[bytes], test: bytes, n_names: int = 10, standin: bool = True):
    raw = tmp_path / "raw"
    raw.mkdir()
    members = {f"data_batch_{i + 1}.bin": b for i, b in enumerate(train)}
    members["test_batch.bin"] = test
    members["batches.meta.txt"] = "".join(f"c{i}\n" for i in range(n_names)).encode()
    with tarfile.open(raw / cifar10.ARCHIVE, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    if standin:
        info = {"dataset": "cifar10", "train_bin_per_class": 5, "test_per_class": 1, "val_per_class": 1}
        info["files"] = {cifar10.ARCHIVE: md5sum(raw / cifar10.ARCHIVE)}
        (raw / "standin.json").write_text(json.dumps(info))
    return raw


def _records(per_class: int, label_override: dict[int, int] | None = None) -> bytes:
    labels = np.repeat(np.arange(10), per_class)
    rec = np.zeros((labels.size, 3073), np.uint8)
    rec[:, 0] = labels
    rec[:, 1:] = np.arange(3072) % 251
    for row, value in (label_override or {}).items():
        rec[row, 0] = value
    return rec.tobytes()


def test_small_valid_archive_prepares(tmp_path):
    raw = _archive(tmp_path, [_records(1)] * 5, _records(1))
    d = cifar10.load_cifar10(cifar10.prepare_cifar10(raw, tmp_path / "out"))
    assert d["train_images"].shape == (50, 3, 32, 32) and d["val_index"].size == 10
    assert d["train_images"][0, 0, 0, 5] == 5 and d["train_images"][0, 1, 0, 0] == 1024 % 251


@pytest.mark.parametrize(
    ("train", "test", "names", "match"),
    [
        ([_records(1)] * 4 + [_records(1)[:-7]], _records(1), 10, "3073-byte records"),
        (
            [_records(1, {3: 10})] + [_records(1)] * 4,
            _records(1),
            10,
            r"record 3 has label 10, outside 0\.\.9",
        ),
        ([_records(1, {0: 1})] + [_records(1)] * 4, _records(1), 10, "train files hold 4 images of class 0"),
        ([_records(1)] * 5, _records(2), 10, "test files hold 2 images of class 0, expected 1"),
        ([_records(1)] * 5, _records(1), 9, "lists 9 class names, expected 10"),
        ([_records(1)] * 4, _records(1), 10, r"no member cifar-10-batches-bin/data_batch_5\.bin"),
    ],
)
def test_bad_archives_are_rejected_and_leave_nothing(tmp_path, train, test, names, match):
    raw = _archive(tmp_path, train, test, names)
    with pytest.raises(DataError, match=match):
        cifar10.prepare_cifar10(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in raw.iterdir()) == [cifar10.ARCHIVE, "standin.json"]


def test_wrong_checksum_without_standin_names_the_official_md5(tmp_path):
    raw = _archive(tmp_path, [_records(1)] * 5, _records(1), standin=False)
    with pytest.raises(DataError, match=rf"md5 .* matches neither the official {cifar10.MD5}"):
        cifar10.prepare_cifar10(raw, tmp_path / "out")


def test_corrupt_archive_vouched_by_a_stale_standin_json(tmp_path):
    raw = _archive(tmp_path, [_records(1)] * 5, _records(1))
    data = bytearray((raw / cifar10.ARCHIVE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (raw / cifar10.ARCHIVE).write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt or not the expected one"):
        cifar10.prepare_cifar10(raw, tmp_path / "out")


def test_malicious_archive_is_not_extracted(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    with tarfile.open(raw / cifar10.ARCHIVE, "w:gz") as tf:
        info = tarfile.TarInfo("cifar-10-batches-bin/../../escape.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    files = {cifar10.ARCHIVE: md5sum(raw / cifar10.ARCHIVE)}
    standin = {
        "dataset": "cifar10",
        "files": files,
        "train_bin_per_class": 5,
        "test_per_class": 1,
        "val_per_class": 1,
    }
    (raw / "standin.json").write_text(json.dumps(standin))
    with pytest.raises(DataError, match=r"'\.\.'"):
        cifar10.prepare_cifar10(raw, tmp_path / "out")
    assert not (tmp_path.parent / "escape.txt").exists() and not (tmp_path / "escape.txt").exists()


def test_download_keeps_a_file_whose_md5_matches(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / cifar10.ARCHIVE).write_bytes(b"pretend archive")
    monkeypatch.setattr(cifar10, "MD5", md5sum(site / cifar10.ARCHIVE))
    with serve(site) as url:
        path = cifar10.download_cifar10(tmp_path / "raw", f"{url}/{cifar10.ARCHIVE}", timeout=10)
    assert path.read_bytes() == b"pretend archive"


def test_corrupt_prepared_file_and_missing_folder(prepared, tmp_path):
    out = cifar10.prepare_cifar10(prepared.parent.parent / "raw" / "cifar10", tmp_path / "p")
    np.save(out / "test_labels.npy", np.load(out / "test_labels.npy")[::-1].copy())
    with pytest.raises(DataError, match=r"test_labels\.npy: sha256 mismatch.*lop data prepare cifar10"):
        cifar10.load_cifar10(out)
    with pytest.raises(DataError, match=r"cifar-10-binary\.tar\.gz.*lop data prepare cifar10"):
        cifar10.load_cifar10(tmp_path / "prepared" / "cifar10")


def test_standin_demo_size_is_the_official_size():
    assert standins.SIZES["cifar10"]["demo"] == {
        "train_bin_per_class": 5000,
        "test_per_class": 1000,
        "val_per_class": 500,
    }


def test_lop_data_commands_round_trip(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="lop")
    commands.register(parser.add_subparsers(dest="command", required=True))

    def run(argv: list[str]) -> int:
        args = parser.parse_args(argv)
        return args.func(args)

    raw, out = (
        tmp_path / "data" / "raw" / "cifar10-standin",
        tmp_path / "data" / "prepared" / "cifar10-standin",
    )
    assert run(["data", "standin", "cifar10", "--raw", str(raw), "--seed", "2"]) == 0
    first = json.loads((raw / "standin.json").read_text())["files"]
    assert run(["data", "standin", "cifar10", "--raw", str(raw), "--seed", "2"]) == 0
    assert json.loads((raw / "standin.json").read_text())["files"] == first  # byte-stable for a seed
    assert run(["data", "verify", str(raw)]) == 0
    assert "raw cifar10 (standin)" in capsys.readouterr().out
    assert run(["data", "prepare", "cifar10", "--raw", str(raw), "--out", str(out)]) == 0
    assert run(["data", "verify", str(out)]) == 0
    assert "prepared cifar10 (standin), 6 files verified" in capsys.readouterr().out
    d = cifar10.load_cifar10(out)
    assert d["train_images"].shape == (200, 3, 32, 32) and d["test_images"].shape == (50, 3, 32, 32)


def test_forged_seed0_standin_is_caught_by_its_pinned_checksum(tmp_path):
    """A stand-in archive whose standin.json was rewritten to vouch for other bytes (here: seed 1's archive
    presented as seed 0's) fails `lop data verify` on the pinned md5, raw and prepared."""
    from lop.data.commands import verify_prepared, verify_raw

    raw = tmp_path / "raw"
    standins.write_standin("cifar10", raw, size="small", seed=1)
    info = json.loads((raw / "standin.json").read_text())
    info["seed"] = 0
    (raw / "standin.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"cifar-10-binary\.tar\.gz: md5 .* differs from .*seed 0"):
        verify_raw(raw)
    out = cifar10.prepare_cifar10(raw, tmp_path / "prepared")  # prepare trusts standin.json's md5 ...
    man = json.loads((out / "manifest.json").read_text())
    man["raw_md5"] = {cifar10.ARCHIVE: "857a5f17ef3a6ae2768c770dd5e1068d"}  # ... claim the pinned raw file
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(DataError, match=r"sha256 .* always has when prepared from the cifar10 stand-in"):
        verify_prepared(out)
