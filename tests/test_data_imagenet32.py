"""ImageNet32: official-format zip (stand-in) and image-folder sources -> per-class artifact -> load."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from lop.data import imagenet32
from lop.data.artifact import verify_artifact
from lop.data.download import md5sum
from lop.data.standins import npz_bytes, write_imagenet32_standin
from lop.errors import DataError

N_CLASSES, PER_CLASS, N_TRAIN = 5, 12, 9


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    d = tmp_path_factory.mktemp("inet") / "raw" / "imagenet32"
    write_imagenet32_standin(d, n_classes=N_CLASSES, per_class=PER_CLASS, n_train=N_TRAIN, seed=2)
    return d


@pytest.fixture(scope="module")
def prepared(raw):
    return imagenet32.prepare_imagenet32(raw, raw.parent.parent / "prepared" / "imagenet32")


def _reference_selection(zip_path):
    """Independent reference: walk batches 1..10 and rows in order, keep the first PER_CLASS per class."""
    kept = {c: [] for c in range(N_CLASSES)}
    with zipfile.ZipFile(zip_path) as zf:
        for k in range(1, 11):
            with np.load(io.BytesIO(zf.read(f"Imagenet32_train_npz/train_data_batch_{k}.npz"))) as npz:
                for row, label in zip(npz["data"], npz["labels"]):
                    if len(kept[label - 1]) < PER_CLASS:
                        kept[label - 1].append(row.reshape(3, 32, 32))
    return kept


def test_standin_zip_has_the_official_layout(raw):
    with zipfile.ZipFile(raw / imagenet32.ZIP_NAME) as zf:
        names = [n for n in zf.namelist() if n.endswith(".npz")]
        assert names == [f"Imagenet32_train_npz/train_data_batch_{k}.npz" for k in range(1, 11)]
        with np.load(io.BytesIO(zf.read(names[0])), allow_pickle=False) as npz:
            assert set(npz.files) == {"data", "labels", "mean"}
            assert npz["data"].dtype == np.uint8 and npz["data"].shape[1] == 3072
            assert npz["labels"].min() >= 1 and npz["labels"].max() <= N_CLASSES
    info = json.loads((raw / "standin.json").read_text())
    assert info["files"] == {imagenet32.ZIP_NAME: md5sum(raw / imagenet32.ZIP_NAME)}


def test_round_trip_keeps_the_first_images_in_file_order(raw, prepared):
    d = imagenet32.load_imagenet32(prepared)
    assert d["train_images"].shape == (N_CLASSES, N_TRAIN, 3, 32, 32)
    assert d["test_images"].shape == (N_CLASSES, PER_CLASS - N_TRAIN, 3, 32, 32)
    assert np.array_equal(d["classes"], np.arange(N_CLASSES))
    ref = _reference_selection(raw / imagenet32.ZIP_NAME)
    for c in range(N_CLASSES):
        full = np.concatenate([d["train_images"][c], d["test_images"][c]])
        np.testing.assert_array_equal(full, np.stack(ref[c]))
    m = verify_artifact(prepared)
    assert m["source"] == "standin" and m["n_classes"] == N_CLASSES and m["per_class"] == PER_CLASS
    assert sorted(m["files"]) == [imagenet32.class_file(c) for c in range(N_CLASSES)]


def test_load_a_subset_of_classes(prepared):
    full = imagenet32.load_imagenet32(prepared)
    sub = imagenet32.load_imagenet32(prepared, classes=[3, 1], verify=False)
    np.testing.assert_array_equal(sub["train_images"], full["train_images"][[3, 1]])
    with pytest.raises(DataError, match="classes must be indices"):
        imagenet32.load_imagenet32(prepared, classes=[N_CLASSES])


def test_compressed_zip_members_are_read_too(raw, prepared, tmp_path):
    r = tmp_path / "raw"
    write_imagenet32_standin(
        r, n_classes=N_CLASSES, per_class=PER_CLASS, n_train=N_TRAIN, seed=2, compress=True
    )
    out = imagenet32.prepare_imagenet32(r, tmp_path / "out")
    a = imagenet32.load_imagenet32(out)["train_images"]
    np.testing.assert_array_equal(a, imagenet32.load_imagenet32(prepared)["train_images"])
    assert sorted(p.name for p in r.iterdir()) == [imagenet32.ZIP_NAME, "standin.json"]  # spool removed


def _zip(tmp_path, batches, n_classes=3, per_class=2, n_train=1):
    raw = tmp_path / "raw"
    raw.mkdir()
    with zipfile.ZipFile(raw / imagenet32.ZIP_NAME, "w") as zf:
        for k in range(1, 11):
            data, labels = (
                batches[k - 1] if k <= len(batches) else (np.zeros((0, 3072), np.uint8), np.zeros(0, int))
            )
            zf.writestr(f"train_data_batch_{k}.npz", npz_bytes({"data": data, "labels": labels}))
    info = {"dataset": "imagenet32", "n_classes": n_classes, "per_class": per_class, "n_train": n_train}
    info["files"] = {imagenet32.ZIP_NAME: md5sum(raw / imagenet32.ZIP_NAME)}
    (raw / "standin.json").write_text(json.dumps(info))
    return raw


def _batch(labels, dtype=np.uint8, width=3072):
    return np.arange(len(labels) * width).astype(dtype).reshape(len(labels), width), np.asarray(labels)


def test_top_level_members_and_valid_small_zip(tmp_path):
    raw = _zip(tmp_path, [_batch([1, 2, 3, 1]), _batch([2, 3, 3])])
    d = imagenet32.load_imagenet32(imagenet32.prepare_imagenet32(raw, tmp_path / "out"))
    assert d["train_images"].shape == (3, 1, 3, 32, 32) and d["test_images"].shape == (3, 1, 3, 32, 32)


def test_class_with_too_few_images(tmp_path):
    raw = _zip(tmp_path, [_batch([1, 2, 3, 1]), _batch([2])])  # class index 2 (label 3) has one image
    with pytest.raises(DataError, match=r"1 classes have fewer than 2 images \(class 2 has 1"):
        imagenet32.prepare_imagenet32(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("batch", "pattern"),
    [
        (_batch([1, 2, 3], dtype=np.int16), "'data' is int16"),
        (_batch([1, 2, 3], width=3000), r"'data' is uint8 \[3, 3000\]"),
        ((np.zeros((3, 3072), np.uint8), np.array([1, 2])), "'labels' is int64 \\[2\\]"),
        ((np.zeros((3, 3072), np.uint8), np.array([1.0, 2.0, 3.0])), "expected integers"),
        (_batch([1, 4, 3]), r"label 4 outside 1\.\.3"),
        (_batch([0, 1, 2]), r"label 0 outside 1\.\.3"),
    ],
)
def test_bad_batches_are_rejected(tmp_path, batch, pattern):
    raw = _zip(tmp_path, [batch])
    with pytest.raises(DataError, match=pattern) as e:
        imagenet32.prepare_imagenet32(raw, tmp_path / "out")
    assert "train_data_batch_1.npz" in str(e.value)


def test_missing_batch_and_missing_key(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    with zipfile.ZipFile(raw / imagenet32.ZIP_NAME, "w") as zf:
        zf.writestr("train_data_batch_1.npz", npz_bytes({"data": np.zeros((1, 3072), np.uint8)}))
    with pytest.raises(DataError, match=r"found batches \[1\]"):
        imagenet32.prepare_imagenet32(raw, tmp_path / "out")
    with zipfile.ZipFile(raw / imagenet32.ZIP_NAME, "w") as zf:
        for k in range(1, 11):
            zf.writestr(f"train_data_batch_{k}.npz", npz_bytes({"data": np.zeros((1, 3072), np.uint8)}))
    with pytest.raises(DataError, match="has no 'labels' array"):
        imagenet32.prepare_imagenet32(raw, tmp_path / "out")


def test_pickled_arrays_are_refused(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    buf = io.BytesIO()
    np.savez(buf, data=np.zeros((1, 3072), np.uint8), labels=np.array([[1]], dtype=object))
    with zipfile.ZipFile(raw / imagenet32.ZIP_NAME, "w") as zf:
        for k in range(1, 11):
            zf.writestr(f"train_data_batch_{k}.npz", buf.getvalue())
    with pytest.raises(DataError, match=r"train_data_batch_1\.npz: unreadable"):
        imagenet32.prepare_imagenet32(raw, tmp_path / "out")


def test_truncated_zip(raw, tmp_path):
    r = tmp_path / "raw"
    r.mkdir()
    data = (raw / imagenet32.ZIP_NAME).read_bytes()
    (r / imagenet32.ZIP_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        imagenet32.prepare_imagenet32(r, tmp_path / "out")


def test_missing_zip_explains_the_licence_and_never_downloads(tmp_path):
    with pytest.raises(DataError) as e:
        imagenet32.prepare_imagenet32(tmp_path / "raw", tmp_path / "out")
    msg = str(e.value)
    for needle in (
        "Imagenet32_train_npz.zip",
        "image-net.org account",
        "non-commercial",
        str(tmp_path / "raw"),
    ):
        assert needle in msg
    with pytest.raises(DataError, match=r"image-net\.org account"):
        imagenet32.load_imagenet32(tmp_path / "prepared" / "imagenet32")


def test_corrupt_class_file(raw, tmp_path):
    out = imagenet32.prepare_imagenet32(raw, tmp_path / "p")
    with open(out / "class_0002.npy", "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x07")
    with pytest.raises(DataError, match=r"class_0002\.npy: sha256 mismatch.*lop data prepare imagenet32"):
        imagenet32.load_imagenet32(out)
    imagenet32.load_imagenet32(out, classes=[0, 1])  # only the requested classes are read


# ---- image-folder source ----------------------------------------------------------------------------


@pytest.fixture
def image_folder(tmp_path):
    Image = pytest.importorskip("PIL.Image")

    root = tmp_path / "train"
    colours = {"n01440764": (255, 0, 0), "n01443537": (0, 0, 255), "n01484850": (0, 200, 0)}
    rng = np.random.default_rng(0)
    for i, (wnid, colour) in enumerate(sorted(colours.items())):
        (root / wnid).mkdir(parents=True)
        for j in range(4 + i):  # classes have 4, 5, 6 images
            size = (40 + 7 * j, 33 + 5 * i)
            arr = np.clip(np.array(colour) + rng.integers(-10, 10, (size[1], size[0], 3)), 0, 255)
            img = Image.fromarray(arr.astype(np.uint8))
            suffix = ".JPEG" if j % 2 == 0 else ".png"
            img.save(root / wnid / f"{wnid}_{j}{suffix}")
        (root / wnid / "notes.txt").write_text("not an image")
    return root


def test_image_folder_source(image_folder, tmp_path):
    out = imagenet32.prepare_imagenet32(
        tmp_path / "raw", tmp_path / "out", image_folder=image_folder, per_class=4, n_train=3
    )
    m = verify_artifact(out)
    assert m["source"] == "image-folder" and m["class_names"] == ["n01440764", "n01443537", "n01484850"]
    d = imagenet32.load_imagenet32(out)
    assert d["train_images"].shape == (3, 3, 3, 32, 32) and d["test_images"].shape == (3, 1, 3, 32, 32)
    mean_rgb = np.concatenate([d["train_images"], d["test_images"]], axis=1).mean(axis=(1, 3, 4))
    assert np.argmax(mean_rgb[0]) == 0 and np.argmax(mean_rgb[1]) == 2 and np.argmax(mean_rgb[2]) == 1
    # the first file (sorted) of class 0 is box-filtered from the PNG/JPEG at full size
    Image = pytest.importorskip("PIL.Image")

    first = sorted((image_folder / "n01440764").glob("*_0.JPEG"))[0]
    with Image.open(first) as img:
        expect = np.asarray(img.convert("RGB").resize((32, 32), Image.Resampling.BOX)).transpose(2, 0, 1)
    np.testing.assert_array_equal(d["train_images"][0, 0], expect)


def test_image_folder_class_with_too_few_images(image_folder, tmp_path):
    with pytest.raises(DataError, match=r"n01440764.*has 4 images, needs at least 5"):
        imagenet32.prepare_imagenet32(
            tmp_path / "raw", tmp_path / "out", image_folder=image_folder, per_class=5, n_train=4
        )
    assert not (tmp_path / "out").exists()


def test_image_folder_undecodable_image(image_folder, tmp_path):
    (image_folder / "n01440764" / "n01440764_00.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"n01440764_00\.JPEG: cannot decode"):
        imagenet32.prepare_imagenet32(
            tmp_path / "raw", tmp_path / "out", image_folder=image_folder, per_class=4, n_train=3
        )
