"""Batched on-device image augmentation for class-incremental CIFAR-100 (docs/protocols/incremental_cifar.md).

Images are ``[S, B, C, H, W]`` (S runs, each with its own mini-batch), uint8 in [0, 255] or float.
Every random choice is drawn from `lop.rng.RunStreams` as an ``[S, B]`` (or ``[S, B, k]``) tensor at the
stream name and counter the caller gives (e.g. the step number), so a run's augmentations do not
depend on the other runs of its batch and need no RNG state to resume. No loops over images or runs.

`cifar_train_transform` composes the reference's training pipeline in its order: scale to [0, 1],
normalise with the CIFAR-100 mean/std, horizontal flip (p = 0.5), reflect-pad 4 + random 32×32 crop,
random rotation with zero fill (zero *after* normalisation, i.e. the mean colour). Test images only get
`to_unit_float` + `normalize`.

Rotation angles: the paper/reference rotate by an angle uniform in (0, 15) degrees (counter-clockwise
only), which is the default here; torchvision's ``RandomRotation(15)`` would draw from (-15, 15) — pass
``degrees=(-15.0, 15.0)`` for that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from lop.rng import RunStreams

CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2762)


def _check(x: torch.Tensor) -> tuple[int, int, int, int, int]:
    if x.dim() != 5:
        raise ValueError(f"expected images [S, B, C, H, W], got shape {tuple(x.shape)}")
    s, b, c, h, w = x.shape
    return s, b, c, h, w


def to_unit_float(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [0, 255] -> float [0, 1]; float input is only cast."""
    if x.dtype == torch.uint8:
        return x.to(dtype).mul_(1.0 / 255.0)
    return x.to(dtype)


def normalize(
    x: torch.Tensor, mean: Sequence[float] = CIFAR100_MEAN, std: Sequence[float] = CIFAR100_STD
) -> torch.Tensor:
    """(x - mean[c]) / std[c] per channel of ``[..., C, H, W]`` float images."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    sd = torch.tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - m) / sd


def hflip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images where ``flip`` ``[S, B]`` (bool) is True."""
    _check(x)
    return torch.where(flip[:, :, None, None, None], x.flip(-1), x)


def random_hflip(
    x: torch.Tensor, streams: RunStreams, name: str, counter: int, p: float = 0.5
) -> torch.Tensor:
    """Horizontal flip of each image with probability p (draws ``[S, B]`` on stream `name`)."""
    _, b, *_ = _check(x)
    return hflip(x, streams.bernoulli(name, counter, (b,), p))


def crop_padded(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, padding: int) -> torch.Tensor:
    """Reflect-pad by `padding`, then take the H×W window at (top, left) ``[S, B]`` of each image.

    Offsets are in padded coordinates, 0 .. 2·padding; (padding, padding) returns the image itself.
    """
    s, b, c, h, w = _check(x)
    n = s * b
    padded = F.pad(x.reshape(n, c, h, w), (padding, padding, padding, padding), mode="reflect")
    rows = top.reshape(n, 1) + torch.arange(h, device=x.device)  # [N, H]
    cols = left.reshape(n, 1) + torch.arange(w, device=x.device)  # [N, W]
    wp = w + 2 * padding
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, wp))
    out = out.gather(3, cols[:, None, None, :].expand(n, c, h, w))
    return out.view(s, b, c, h, w)


def random_crop(
    x: torch.Tensor, streams: RunStreams, name: str, counter: int, padding: int = 4
) -> torch.Tensor:
    """Reflect-pad `padding` pixels and crop a random window of the original size per image.

    Offsets ``[S, B, 2]`` (top, left), uniform on {0, ..., 2·padding}, drawn on stream `name`.
    """
    _, b, *_ = _check(x)
    off = streams.randint(name, counter, (b, 2), 2 * padding + 1).to(x.device)
    return crop_padded(x, off[..., 0], off[..., 1], padding)


def rotate(
    x: torch.Tensor, degrees: torch.Tensor, interpolation: Literal["nearest", "bilinear"] = "nearest"
) -> torch.Tensor:
    """Rotate each image counter-clockwise by ``degrees`` ``[S, B]`` about its centre.

    Each output pixel takes the input at the rotated position (``affine_grid``/``grid_sample``,
    align_corners=False), zero fill outside the source image. ``nearest`` (the default, as the
    reference code's torchvision rotation) copies the nearest input pixel, so every output value is
    an input value or 0; ``bilinear`` interpolates the four neighbours. 90° on a square image equals
    ``torch.rot90(x, 1, dims=(-2, -1))`` in both modes.
    """
    s, b, c, h, w = _check(x)
    if not x.is_floating_point():
        raise ValueError("rotate needs float images; convert with to_unit_float first")
    a = degrees.to(torch.float64) * (math.pi / 180.0)
    cos, sin = torch.cos(a), torch.sin(a)
    # Output pixel p (normalised x right, y down) samples the input at R p with R = [[c, -s], [s, c]]:
    # a counter-clockwise turn of the picture as displayed.
    zero = torch.zeros_like(cos)
    theta = torch.stack(
        [torch.stack([cos, -sin * h / w, zero], -1), torch.stack([sin * w / h, cos, zero], -1)], -2
    )
    theta = theta.reshape(s * b, 2, 3).to(x.dtype)
    flat = x.reshape(s * b, c, h, w)
    grid = F.affine_grid(theta, [s * b, c, h, w], align_corners=False)
    out = F.grid_sample(flat, grid, mode=interpolation, padding_mode="zeros", align_corners=False)
    return out.view(s, b, c, h, w)


def random_rotation(
    x: torch.Tensor,
    streams: RunStreams,
    name: str,
    counter: int,
    degrees: tuple[float, float] = (0.0, 15.0),
    interpolation: Literal["nearest", "bilinear"] = "nearest",
) -> torch.Tensor:
    """Rotate each image by an angle uniform on ``degrees`` (default (0, 15), see the module doc)."""
    _, b, *_ = _check(x)
    lo, hi = degrees
    if hi < lo:
        raise ValueError(f"rotation range must be (low, high) with low <= high, got {degrees}")
    angle = streams.uniform(name, counter, (b,), lo, hi, dtype=torch.float64).to(x.device)
    return rotate(x, angle, interpolation)


def cifar_train_transform(
    x: torch.Tensor,
    streams: RunStreams,
    counter: int,
    name: str = "augment",
    mean: Sequence[float] = CIFAR100_MEAN,
    std: Sequence[float] = CIFAR100_STD,
    flip_p: float = 0.5,
    padding: int = 4,
    degrees: tuple[float, float] = (0.0, 15.0),
    interpolation: Literal["nearest", "bilinear"] = "nearest",
) -> torch.Tensor:
    """The CIFAR-100 training augmentation of docs/protocols/incremental_cifar.md (reference order), float ``[S, B, 3, H, W]``.

    Streams ``<name>/flip``, ``<name>/crop``, ``<name>/rotate`` at `counter` (e.g. the global step).
    """
    x = normalize(to_unit_float(x), mean, std)
    x = random_hflip(x, streams, f"{name}/flip", counter, flip_p)
    x = random_crop(x, streams, f"{name}/crop", counter, padding)
    return random_rotation(x, streams, f"{name}/rotate", counter, degrees, interpolation)


def cifar_test_transform(
    x: torch.Tensor, mean: Sequence[float] = CIFAR100_MEAN, std: Sequence[float] = CIFAR100_STD
) -> torch.Tensor:
    """Clean evaluation images: scale to [0, 1] and normalise (no augmentation)."""
    return normalize(to_unit_float(x), mean, std)
