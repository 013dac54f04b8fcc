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
        ("imagenet32", {"n_classes": 3, "per_class": 5, "n_train": 4, "style": "textures"}),
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


def test_texture_classes_need_translation_invariant_features():
    """Texture stand-in: class = grating of its own frequency/orientation at a random phase. A nearest class
    mean on the pixels (a linear read-out) sees only the weak colour cue; on the phase-free amplitude
    spectrum (what a convnet's filters + ReLU + pooling can compute) the classes separate."""
    rng = np.random.default_rng(0)
    t = standins.texture_classes(rng, 10)
    y_train, y_test = np.repeat(np.arange(10), 40), np.repeat(np.arange(10), 20)
    x_train, x_test = standins.render_textures(rng, t, y_train), standins.render_textures(rng, t, y_test)
    assert x_train.dtype == np.uint8 and x_train.shape == (400, 3, 32, 32)

    def nearest_mean(f_train: np.ndarray, f_test: np.ndarray) -> float:
        centroids = np.stack([f_train[y_train == k].mean(0) for k in range(10)])
        return float((np.argmin(((f_test[:, None] - centroids[None]) ** 2).sum(-1), 1) == y_test).mean())

    def spectrum(x: np.ndarray) -> np.ndarray:
        grey = x.astype(np.float64).mean(1)
        grey -= grey.mean(axis=(1, 2), keepdims=True)
        return np.abs(np.fft.fft2(grey)).reshape(len(x), -1)

    pixels = nearest_mean(x_train.reshape(400, -1) / 255.0, x_test.reshape(200, -1) / 255.0)
    invariant = nearest_mean(spectrum(x_train), spectrum(x_test))
    assert invariant > 0.8
    assert pixels < invariant - 0.25
    # the random phase averages the grating out: a class's mean image is nearly flat
    class_mean = x_train[y_train == 0].astype(np.float64).mean(0)
    assert class_mean.std(axis=(1, 2)).max() < 0.25 * x_train[0].astype(np.float64).std(axis=(1, 2)).max()


def test_imagenet32_style_is_recorded_and_checked(tmp_path):
    standins.write_imagenet32_standin(tmp_path / "t", n_classes=2, per_class=3, n_train=2, style="textures")
    assert json.loads((tmp_path / "t" / "standin.json").read_text())["style"] == "textures"
    assert all("style" not in size for size in standins.SIZES["imagenet32"].values())  # templates
    with pytest.raises(ValueError, match="unknown style"):
        standins.write_imagenet32_standin(tmp_path / "u", n_classes=2, per_class=3, n_train=2, style="dots")


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
