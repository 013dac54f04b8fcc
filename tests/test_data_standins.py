"""Stand-in generators: deterministic bytes, learnable classes; the embedded 8×8 digits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lop.data import standins
from lop.data.digits import load_digits


def test_digits():
    x, y = load_digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))
    from sklearn.datasets import load_digits as sk

    np.testing.assert_allclose(x * 16, sk().data)


@pytest.mark.parametrize(
    ("dataset", "kwargs"),
    [
        ("mnist", {"n_train": 50, "n_test": 10}),
        ("cifar100", {"train_bin_per_class": 2, "test_per_class": 1, "val_per_class": 1}),
        ("imagenet32", {"n_classes": 3, "per_class": 5, "n_train": 4}),
    ],
)
def test_byte_stable_for_a_seed(tmp_path, dataset, kwargs):
    writer = getattr(standins, f"write_{dataset}_standin")
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        writer(tmp_path / name, seed=seed, **kwargs)
    md5 = {n: json.loads((tmp_path / n / "standin.json").read_text())["files"] for n in "abc"}
    assert md5["a"] == md5["b"]
    assert all(md5["a"][f] != md5["c"][f] for f in md5["a"])


def _pooled(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), 3, 8, 4, 8, 4).mean(axis=(3, 5)).reshape(len(x), -1) / 255.0


def test_template_images_are_learnable_but_not_trivial():
    """Nearest class mean on 8×8-pooled pixels: far above chance (0.1), far from perfect."""
    rng = np.random.default_rng(0)
    t = standins.class_templates(rng, 10)
    y_train, y_test = np.repeat(np.arange(10), 40), np.repeat(np.arange(10), 20)
    x_train, x_test = standins.render_templates(rng, t, y_train), standins.render_templates(rng, t, y_test)
    assert x_train.dtype == np.uint8 and x_train.shape == (400, 3, 32, 32)
    f_train, f_test = _pooled(x_train), _pooled(x_test)
    centroids = np.stack([f_train[y_train == k].mean(0) for k in range(10)])
    pred = np.argmin(((f_test[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    acc = (pred == y_test).mean()
    assert 0.35 < acc < 0.95
    # images of one class differ (shift/flip/noise): no two are identical
    assert len({x.tobytes() for x in x_train}) == len(x_train)


def test_render_digits_shapes_and_labels():
    x, y = load_digits()
    imgs, labels = standins.render_digits(np.random.default_rng(0), (x.reshape(-1, 8, 8) * 16, y), 64)
    assert imgs.shape == (64, 28, 28) and imgs.dtype == np.uint8 and labels.dtype == np.uint8
    assert imgs[:, [0, -1]].max() == 0 and imgs[:, :, [0, -1]].max() == 0  # digit stays inside the frame
    assert imgs.max() > 200


def test_sizes_table():
    assert standins.SIZES["mnist"]["demo"] == {"n_train": 60000, "n_test": 10000}
    assert standins.SIZES["cifar100"]["demo"] == {
        "train_bin_per_class": 500,
        "test_per_class": 100,
        "val_per_class": 50,
    }
    assert standins.SIZES["imagenet32"]["demo"]["per_class"] == 700
    with pytest.raises(ValueError, match="unknown stand-in"):
        standins.write_standin("mnist", "unused", size="huge")
