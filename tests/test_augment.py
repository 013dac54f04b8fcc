"""Batched on-device CIFAR augmentation (docs/protocols/incremental_cifar.md) driven by per-run counter-based streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lop.data.augment import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    cifar_test_transform,
    cifar_train_transform,
    crop_padded,
    hflip,
    normalize,
    random_crop,
    random_hflip,
    random_rotation,
    rotate,
    to_unit_float,
)
from lop.rng import RunStreams


def _pattern(s: int = 2, b: int = 3, c: int = 3, hw: int = 32) -> torch.Tensor:
    """Distinct value at every position: a known, asymmetric image per (run, example)."""
    return torch.arange(s * b * c * hw * hw, dtype=torch.float32).view(s, b, c, hw, hw)


def _uint8_images(s: int, b: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (s, b, 3, 32, 32), generator=g, dtype=torch.uint8)


def test_unit_float_and_normalize() -> None:
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 1, 2).expand(1, 1, 3, 1, 2)
    u = to_unit_float(x)
    assert u.dtype == torch.float32 and float(u.min()) == 0.0 and float(u.max()) == 1.0
    mean_img = torch.tensor(CIFAR100_MEAN).view(1, 1, 3, 1, 1).expand(2, 2, 3, 4, 4)
    assert float(normalize(mean_img).abs().max()) < 1e-6
    one_std = mean_img + torch.tensor(CIFAR100_STD).view(1, 1, 3, 1, 1)
    torch.testing.assert_close(normalize(one_std), torch.ones(2, 2, 3, 4, 4))
    test = cifar_test_transform(_uint8_images(1, 2))
    assert test.shape == (1, 2, 3, 32, 32) and test.dtype == torch.float32


def test_flip_is_mirror() -> None:
    x = _pattern()
    mask = torch.tensor([[True, False, True], [False, False, True]])
    out = hflip(x, mask)
    for s in range(2):
        for b in range(3):
            expected = x[s, b].flip(-1) if mask[s, b] else x[s, b]
            assert torch.equal(out[s, b], expected)
    assert torch.equal(out[0, 0, 1, 5, 0], x[0, 0, 1, 5, 31])
    streams = RunStreams([0, 1])
    assert torch.equal(random_hflip(x, streams, "flip", 0, p=1.0), x.flip(-1))
    assert torch.equal(random_hflip(x, streams, "flip", 0, p=0.0), x)


def test_flip_probability() -> None:
    streams = RunStreams([0, 1, 2, 3])
    x = _pattern(4, 500, 1, 2)
    out = random_hflip(x, streams, "flip", 7)
    flipped = (out != x).any(-1).any(-1).any(-1).float()  # [S, B]
    assert 0.44 < float(flipped.mean()) < 0.56
    assert bool((flipped.mean(1) > 0.35).all())


def test_crop_of_padded_known_image() -> None:
    x = _pattern(1, 2, 3, 32)
    pad = 4
    ref = np.pad(x.numpy(), ((0, 0), (0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect")
    top = torch.tensor([[0, 8]])
    left = torch.tensor([[3, 8]])
    out = crop_padded(x, top, left, pad)
    assert out.shape == x.shape
    np.testing.assert_array_equal(out[0, 0].numpy(), ref[0, 0, :, 0:32, 3:35])
    np.testing.assert_array_equal(out[0, 1].numpy(), ref[0, 1, :, 8:40, 8:40])
    # reflect (not edge-repeat): the pixel left of column 0 is column 1
    assert torch.equal(crop_padded(x, top * 0 + 4, left * 0 + 3, pad)[0, 0, :, :, 0], x[0, 0, :, :, 1])
    # the centre window is the image itself
    assert torch.equal(crop_padded(x, torch.full((1, 2), 4), torch.full((1, 2), 4), pad), x)


def test_random_crop_offsets() -> None:
    streams = RunStreams([5, 6])
    x = _pattern(2, 200, 1, 32)
    out = random_crop(x, streams, "crop", 3)
    off = streams.randint("crop", 3, (200, 2), 9)
    assert torch.equal(out, crop_padded(x, off[..., 0], off[..., 1], 4))
    assert set(off.flatten().tolist()) == set(range(9))  # every offset 0..8 occurs


def test_rotation_identity_and_quarter_turns() -> None:
    x = _pattern()
    s, b = x.shape[:2]
    torch.testing.assert_close(rotate(x, torch.zeros(s, b)), x, atol=1e-4, rtol=0)
    # 90° counter-clockwise: the top-right pixel moves to the top-left
    r90 = rotate(x, torch.full((s, b), 90.0))
    torch.testing.assert_close(r90, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-3, rtol=1e-6)
    assert float(r90[0, 0, 0, 0, 0]) == pytest.approx(float(x[0, 0, 0, 0, 31]), abs=1e-3)
    r180 = rotate(x, torch.full((s, b), 180.0))
    torch.testing.assert_close(r180, x.flip(-1).flip(-2), atol=1e-3, rtol=1e-6)


def test_rotation_fills_zero_and_keeps_centre() -> None:
    x = torch.ones(1, 2, 3, 32, 32)
    out = rotate(x, torch.tensor([[45.0, 10.0]]), "bilinear")
    assert float(out[0, 0, :, 0, 0].abs().max()) == 0.0  # corner comes from outside the image
    assert float(out[0, 1, :, 0, 0].abs().max()) < 1.0
    torch.testing.assert_close(out[:, :, :, 12:20, 12:20], torch.ones(1, 2, 3, 8, 8))
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 + 1e-6


def test_nearest_rotation_copies_input_pixels_and_bilinear_blends() -> None:
    """The default (nearest, as the reference's torchvision rotation) only copies input values (or the 0
    fill); bilinear produces new in-between values on the same image and angle."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 2, 3, 32, 32, generator=gen)
    angles = torch.tensor([[7.0, 13.0]])
    near = rotate(x, angles)
    allowed = torch.cat([x.flatten(), torch.zeros(1)])
    assert bool(torch.isin(near.flatten(), allowed).all())
    torch.testing.assert_close(near, rotate(x, angles, "nearest"), rtol=0, atol=0)
    bil = rotate(x, angles, "bilinear")
    assert float(torch.isin(bil.flatten(), allowed).float().mean()) < 0.1
    assert float((near - bil).abs().gt(0.01).float().mean()) > 0.5


def test_random_rotation_range() -> None:
    streams = RunStreams([0, 1])
    x = _pattern()
    fixed = random_rotation(x, streams, "rot", 0, degrees=(90.0, 90.0))
    torch.testing.assert_close(fixed, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-3, rtol=1e-6)
    angles = streams.uniform("rot", 4, (3,), 0.0, 15.0, dtype=torch.float64)
    assert bool(((angles >= 0) & (angles < 15)).all())
    torch.testing.assert_close(random_rotation(x, streams, "rot", 4), rotate(x, angles))
    with pytest.raises(ValueError, match="low <= high"):
        random_rotation(x, streams, "rot", 0, degrees=(15.0, 0.0))
    with pytest.raises(ValueError, match="float"):
        rotate(_uint8_images(1, 1), torch.zeros(1, 1))


def test_train_transform_determinism_and_independence() -> None:
    x = _uint8_images(3, 16)
    streams = RunStreams([10, 11, 12])
    a = cifar_train_transform(x, streams, counter=5)
    assert a.shape == (3, 16, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, cifar_train_transform(x, streams, counter=5))
    assert not torch.equal(a, cifar_train_transform(x, streams, counter=6))
    # run k alone draws the same augmentation as inside the batch
    alone = cifar_train_transform(x[1:2], RunStreams([11]), counter=5)
    assert torch.equal(alone[0], a[1])
    # different seeds, same images: different augmentations
    same = x[:1].expand(3, -1, -1, -1, -1)
    b = cifar_train_transform(same, streams, counter=5)
    assert not torch.equal(b[0], b[1]) and not torch.equal(b[1], b[2])
    # equals the pieces composed in the documented order with the documented stream names
    y = normalize(to_unit_float(x))
    y = random_hflip(y, streams, "augment/flip", 5)
    y = random_crop(y, streams, "augment/crop", 5)
    y = random_rotation(y, streams, "augment/rotate", 5)
    assert torch.equal(a, y)


def test_float_input_accepted() -> None:
    x = _uint8_images(2, 4)
    streams = RunStreams([0, 1])
    a = cifar_train_transform(x, streams, 0)
    b = cifar_train_transform(x.float() / 255.0, streams, 0)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="expected images"):
        cifar_train_transform(x[0], streams, 0)
