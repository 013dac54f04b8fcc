"""MNIST: stand-in in the official IDX format -> prepare -> load, and every failure path."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest

from lop.data import mnist
from lop.data.artifact import verify_artifact
from lop.data.download import md5sum, sha256sum
from lop.data.idx import write_idx
from lop.data.standins import write_mnist_standin
from lop.errors import DataError

N_TRAIN, N_TEST = 300, 80


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    d = tmp_path_factory.mktemp("mnist") / "raw" / "mnist"
    write_mnist_standin(d, n_train=N_TRAIN, n_test=N_TEST, seed=3)
    return d


@pytest.fixture(scope="module")
def prepared(raw):
    return mnist.prepare_mnist(raw, raw.parent.parent / "prepared" / "mnist")


def _parse_idx_gz(path):
    """An independent IDX parser for the test (struct, no lop code)."""
    data = gzip.decompress(path.read_bytes())
    magic, n = struct.unpack(">II", data[:8])
    if magic == 0x803:
        rows, cols = struct.unpack(">II", data[8:16])
        return np.frombuffer(data[16:], np.uint8).reshape(n, rows, cols)
    assert magic == 0x801
    return np.frombuffer(data[8:], np.uint8)


def test_standin_uses_the_official_names_and_format(raw):
    assert sorted(p.name for p in raw.iterdir()) == sorted([*mnist.FILES, "standin.json"])
    info = json.loads((raw / "standin.json").read_text())
    assert info["dataset"] == "mnist" and info["n_train"] == N_TRAIN
    assert info["files"] == {n: md5sum(raw / n) for n in mnist.FILES}
    x = _parse_idx_gz(raw / mnist.TRAIN_IMAGES)
    y = _parse_idx_gz(raw / mnist.TRAIN_LABELS)
    assert x.shape == (N_TRAIN, 28, 28) and y.shape == (N_TRAIN,)
    assert set(np.unique(y)) == set(range(10))
    assert (x == 0).mean() > 0.3 and x.max() > 200  # MNIST-like: dark background, bright strokes


def test_round_trip_through_prepare_and_load(raw, prepared):
    d = mnist.load_mnist(prepared)
    assert set(d) == {"train_images", "train_labels", "test_images", "test_labels"}
    for split, img, lab in (
        ("train", mnist.TRAIN_IMAGES, mnist.TRAIN_LABELS),
        ("test", mnist.TEST_IMAGES, mnist.TEST_LABELS),
    ):
        np.testing.assert_array_equal(d[f"{split}_images"], _parse_idx_gz(raw / img))
        np.testing.assert_array_equal(d[f"{split}_labels"], _parse_idx_gz(raw / lab))
        assert d[f"{split}_images"].dtype == np.uint8 and d[f"{split}_labels"].dtype == np.uint8
    m = json.loads((prepared / "manifest.json").read_text())
    assert m["dataset"] == "mnist" and m["source"] == "standin" and m["n_classes"] == 10
    assert m["files"]["train_images.npy"] == {
        "sha256": sha256sum(prepared / "train_images.npy"),
        "shape": [N_TRAIN, 28, 28],
        "dtype": "uint8",
    }
    assert verify_artifact(prepared)["dataset"] == "mnist"


def test_prepare_is_deterministic(raw, prepared, tmp_path):
    again = mnist.prepare_mnist(raw, tmp_path / "p")
    for name in mnist.ARRAYS:
        assert sha256sum(again / name) == sha256sum(prepared / name)


def test_prepare_replaces_an_existing_artifact_atomically(raw, tmp_path):
    out = tmp_path / "p"
    mnist.prepare_mnist(raw, out)
    (out / "train_images.npy").write_bytes(b"corrupt")
    mnist.prepare_mnist(raw, out)
    mnist.load_mnist(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # no temp or backup folders left


def test_prepare_refuses_a_non_artifact_folder(raw, tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="refusing to replace"):
        mnist.prepare_mnist(raw, tmp_path / "p")
    assert (tmp_path / "p" / "precious.txt").read_text() == "keep me"


def _copy_raw(raw, dest):
    dest.mkdir(parents=True)
    for p in raw.iterdir():
        (dest / p.name).write_bytes(p.read_bytes())
    return dest


def test_md5_mismatch_names_file_and_fix(raw, tmp_path):
    r = _copy_raw(raw, tmp_path / "raw")
    write_idx(r / mnist.TEST_LABELS, np.zeros(N_TEST, np.uint8))  # changed after the stand-in was written
    with pytest.raises(DataError) as e:
        mnist.prepare_mnist(r, tmp_path / "out")
    msg = str(e.value)
    assert (
        mnist.TEST_LABELS in msg
        and mnist.FILES[mnist.TEST_LABELS] in msg
        and "lop data download mnist" in msg
    )
    assert not (tmp_path / "out").exists()


def test_without_standin_json_the_official_md5s_are_required(raw, tmp_path):
    r = _copy_raw(raw, tmp_path / "raw")
    (r / "standin.json").unlink()
    with pytest.raises(DataError, match="matches neither the official f68b3c2dcbeaaa9fbdd348bbdeb94873"):
        mnist.prepare_mnist(r, tmp_path / "out")


def test_stand_in_flag_follows_the_marker_into_the_manifest_and_the_experiment(
    raw, prepared, tmp_path, monkeypatch
):
    from lop.experiments.permuted_mnist import PermutedMNISTProblem, dataset_stand_in

    m = json.loads((prepared / "manifest.json").read_text())
    assert m["stand_in"] is True and m["source"] == "standin"
    assert dataset_stand_in(PermutedMNISTProblem(data_dir=str(prepared))) is True
    assert dataset_stand_in(PermutedMNISTProblem(dataset="digits", data_dir=str(tmp_path / "none"))) is True
    # The same files without standin.json, accepted as official (md5s declared official): not a stand-in.
    r = _copy_raw(raw, tmp_path / "raw")
    (r / "standin.json").unlink()
    monkeypatch.setattr(mnist, "FILES", {n: md5sum(r / n) for n in mnist.FILES})
    monkeypatch.setattr(mnist, "N_TRAIN", N_TRAIN)
    monkeypatch.setattr(mnist, "N_TEST", N_TEST)
    out = mnist.prepare_mnist(r, tmp_path / "out")
    m = json.loads((out / "manifest.json").read_text())
    assert m["stand_in"] is False and m["source"] == "official"
    assert dataset_stand_in(PermutedMNISTProblem(data_dir=str(out))) is False


def test_missing_raw_file_says_where_to_put_it(tmp_path):
    with pytest.raises(
        DataError, match=r"not found\. Put the four official MNIST files.*lop data download mnist"
    ):
        mnist.prepare_mnist(tmp_path / "raw", tmp_path / "out")


def _fake_standin(tmp_path, x_train, y_train):
    r = tmp_path / "raw"
    write_idx(r / mnist.TRAIN_IMAGES, x_train)
    write_idx(r / mnist.TRAIN_LABELS, y_train)
    write_idx(r / mnist.TEST_IMAGES, np.zeros((2, 28, 28), np.uint8))
    write_idx(r / mnist.TEST_LABELS, np.zeros(2, np.uint8))
    info = {
        "dataset": "mnist",
        "n_train": len(y_train),
        "n_test": 2,
        "files": {n: md5sum(r / n) for n in mnist.FILES},
    }
    (r / "standin.json").write_text(json.dumps(info))
    return r


def test_label_out_of_range(tmp_path):
    r = _fake_standin(tmp_path, np.zeros((3, 28, 28), np.uint8), np.array([0, 10, 1], np.uint8))
    with pytest.raises(DataError, match="label 10 out of range"):
        mnist.prepare_mnist(r, tmp_path / "out")


def test_wrong_image_shape(tmp_path):
    r = _fake_standin(tmp_path, np.zeros((3, 28, 27), np.uint8), np.zeros(3, np.uint8))
    with pytest.raises(DataError, match=r"shape \[3, 28, 27\], expected \[3, 28, 28\]"):
        mnist.prepare_mnist(r, tmp_path / "out")


def test_corrupt_prepared_file_is_detected(raw, tmp_path):
    out = mnist.prepare_mnist(raw, tmp_path / "prepared" / "mnist")
    a = np.load(out / "test_images.npy")
    a[0, 0, 0] ^= 1
    np.save(out / "test_images.npy", a)  # same shape and dtype, different content
    with pytest.raises(DataError) as e:
        mnist.load_mnist(out)
    assert "test_images.npy" in str(e.value) and "sha256 mismatch" in str(e.value)
    assert "lop data prepare mnist" in str(e.value)
    mnist.load_mnist(out, verify=False)  # explicitly skipped: loads


def test_wrong_dtype_in_prepared_file(raw, tmp_path):
    out = mnist.prepare_mnist(raw, tmp_path / "p")
    np.save(out / "train_labels.npy", np.zeros(N_TRAIN, np.int64))
    with pytest.raises(DataError, match="differ from the manifest"):
        mnist.load_mnist(out, verify=False)


def test_missing_prepared_dir_explains_what_to_do(tmp_path):
    with pytest.raises(DataError) as e:
        mnist.load_mnist(tmp_path / "data" / "prepared" / "mnist")
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg
    assert str(tmp_path / "data" / "raw" / "mnist") in msg
    assert "lop data prepare mnist" in msg


def test_standin_is_deterministic_and_seed_dependent(raw, tmp_path):
    write_mnist_standin(tmp_path / "a", n_train=N_TRAIN, n_test=N_TEST, seed=3)
    write_mnist_standin(tmp_path / "b", n_train=N_TRAIN, n_test=N_TEST, seed=4)
    a = json.loads((tmp_path / "a" / "standin.json").read_text())["files"]
    b = json.loads((tmp_path / "b" / "standin.json").read_text())["files"]
    assert a == json.loads((raw / "standin.json").read_text())["files"]
    assert a[mnist.TRAIN_IMAGES] != b[mnist.TRAIN_IMAGES]


def test_standin_is_learnable_but_not_trivial(prepared):
    """A nearest-centroid classifier on the test file (other source writers) is far above chance."""
    d = mnist.load_mnist(prepared)
    x = d["train_images"].reshape(N_TRAIN, -1).astype(np.float64)
    xt = d["test_images"].reshape(N_TEST, -1).astype(np.float64)
    c = np.stack([x[d["train_labels"] == k].mean(0) for k in range(10)])
    pred = np.argmin(((xt[:, None] - c[None]) ** 2).sum(-1), axis=1)
    acc = (pred == d["test_labels"]).mean()
    assert 0.4 < acc < 1.0
