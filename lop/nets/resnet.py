"""Seed-batched ResNet-18 for 32×32 images (class-incremental CIFAR-100, docs/protocols/incremental_cifar.md).

Architecture at the default ``width`` w = 64 (11,224,932 parameters per run for 100 classes)::

    stem: conv 3→w 3×3 stride 1 pad 1 → BN → ReLU             (no max-pool)
    layer1..4: 2 BasicBlocks each at w/2w/4w/8w channels (64/128/256/512); the first block of layers
               2-4 has stride 2 and a 1×1 conv + BN shortcut (also whenever the channel count changes)
    BasicBlock: conv3×3 → BN → ReLU → conv3×3 → BN, + shortcut, → ReLU
    global average pool → 8w-d features (512) → fc 8w→n_classes

A smaller ``width`` (e.g. 8 or 16) gives the same architecture with narrower stages, for CPU-sized runs;
the default builds (and draws) exactly the paper's network.

Every conv has a bias (as in the reference's modified torchvision ResNet). Per-run BatchNorm is plain
BatchNorm over the S*C channels of the grouped layout (`lop.nets.batched_conv`), with running
statistics ``[S, C]`` per run, momentum 0.1, eps 1e-5.

Initialisation schemes (``init``):

* ``"reference"`` (default) — what the reference experiment actually runs: it applies its
  ``kaiming_init_resnet_module`` after construction and for the "retrained network": conv weights
  N(0, 2/fan_in) (Kaiming-normal, fan_in, ReLU gain), conv biases 0, fc weight N(0, 1/8w)
  (Kaiming-normal, linear gain), fc bias 0, BN weight 1, bias 0.
* ``"torchvision"`` — torchvision's constructor init: conv weights Kaiming-normal with fan_out and
  ReLU gain, conv biases PyTorch default U(±1/sqrt(fan_in)), fc PyTorch default U(±1/sqrt(8w)),
  BN weight 1, bias 0.

Random draws use the per-run streams ``init/<conv>/weight``, ``init/<conv>/bias``, ``init/fc/weight``,
``init/fc/bias`` at a counter (0 for the initial network; `reinit`/`reset_head` take another).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from lop.nets.batched_conv import (
    SeedBatchedNet,
    from_grouped,
    grouped_batch_norm,
    grouped_conv2d,
    to_grouped,
)
from lop.nets.layers import batched_linear, normal_init, torch_default_bound, uniform_init
from lop.nets.units import UnitLayer
from lop.rng import RunStreams

InitScheme = Literal["reference", "torchvision"]
UnitScope = Literal["chain", "block_internal"]
DEFAULT_WIDTH = 64  # channels of the stem and stage 1 (the paper's network)
STAGES: tuple[tuple[int, int], ...] = ((1, 1), (2, 2), (4, 2), (8, 2))  # (channels / width, first stride)
BLOCKS_PER_STAGE = 2
BN_MOMENTUM, BN_EPS = 0.1, 1e-5


@dataclass(frozen=True)
class ConvSpec:
    """One conv + its BatchNorm: parameter prefixes and geometry."""

    name: str
    bn: str
    c_in: int
    c_out: int
    kernel: int
    stride: int
    padding: int

    @property
    def fan_in(self) -> int:
        return self.c_in * self.kernel * self.kernel

    @property
    def fan_out(self) -> int:
        return self.c_out * self.kernel * self.kernel


@dataclass(frozen=True)
class BlockSpec:
    """A BasicBlock: two 3×3 convs and an optional 1×1 projection shortcut."""

    conv1: ConvSpec
    conv2: ConvSpec
    shortcut: ConvSpec | None


def n_features(width: int = DEFAULT_WIDTH) -> int:
    """Size of the pooled penultimate features (the last stage's channels): 8 · width (512 at 64)."""
    return STAGES[-1][0] * width


def resnet18_specs(width: int = DEFAULT_WIDTH) -> tuple[ConvSpec, list[BlockSpec]]:
    """The stem and the 8 BasicBlocks of ResNet-18 for 32×32 inputs, stages at width · (1, 2, 4, 8)."""
    if width < 1:
        raise ValueError(f"ResNet width must be >= 1, got {width}")
    stem = ConvSpec("stem.conv", "stem.bn", 3, width, 3, 1, 1)
    blocks: list[BlockSpec] = []
    c_in = width
    for i, (mult, first_stride) in enumerate(STAGES, start=1):
        channels = mult * width
        for j in range(BLOCKS_PER_STAGE):
            stride = first_stride if j == 0 else 1
            pre = f"layer{i}.{j}"
            conv1 = ConvSpec(f"{pre}.conv1", f"{pre}.bn1", c_in, channels, 3, stride, 1)
            conv2 = ConvSpec(f"{pre}.conv2", f"{pre}.bn2", channels, channels, 3, 1, 1)
            shortcut = None
            if stride != 1 or c_in != channels:
                shortcut = ConvSpec(
                    f"{pre}.shortcut.conv", f"{pre}.shortcut.bn", c_in, channels, 1, stride, 0
                )
            blocks.append(BlockSpec(conv1, conv2, shortcut))
            c_in = channels
    return stem, blocks


class ResNet18(SeedBatchedNet):
    """ResNet-18 for S runs at once: conv weights ``[S, out, in, k, k]``, BN tensors ``[S, C]``."""

    def __init__(
        self,
        streams: RunStreams,
        n_classes: int = 100,
        init: InitScheme = "reference",
        channels_last: bool = True,
        dtype: torch.dtype = torch.float32,
        width: int = DEFAULT_WIDTH,
    ) -> None:
        if init not in ("reference", "torchvision"):
            raise ValueError(f"unknown ResNet init scheme {init!r}; choose 'reference' or 'torchvision'")
        super().__init__(streams.n, streams.device, dtype)
        self.streams = streams
        self.n_classes = n_classes
        self.init_scheme: InitScheme = init
        self.channels_last = channels_last
        self.width = width
        self.n_features = n_features(width)
        self.stem, self.blocks = resnet18_specs(width)
        self.convs: list[ConvSpec] = [self.stem]
        for blk in self.blocks:
            self.convs += [blk.conv1, blk.conv2] + ([blk.shortcut] if blk.shortcut else [])
        s = self.n_runs
        for spec in self.convs:
            w, b = self._draw_conv(spec, 0)
            self._add_param(f"{spec.name}.weight", w)
            self._add_param(f"{spec.name}.bias", b)
            self._add_param(f"{spec.bn}.weight", torch.ones(s, spec.c_out, device=self.device))
            self._add_param(f"{spec.bn}.bias", torch.zeros(s, spec.c_out, device=self.device))
            self.buffers[f"{spec.bn}.running_mean"] = torch.zeros(
                s, spec.c_out, device=self.device, dtype=dtype
            )
            self.buffers[f"{spec.bn}.running_var"] = torch.ones(
                s, spec.c_out, device=self.device, dtype=dtype
            )
        w, b = self._draw_fc(0)
        self._add_param("fc.weight", w)
        self._add_param("fc.bias", b)

    # ---- initialisation ----------------------------------------------------------------------
    def conv_init(self, spec: ConvSpec) -> tuple[Literal["uniform", "normal"], float]:
        """The distribution of `spec`'s initial weights (also used by CBP to redraw a channel)."""
        fan = spec.fan_in if self.init_scheme == "reference" else spec.fan_out
        return ("normal", math.sqrt(2.0 / fan))

    def _draw_conv(self, spec: ConvSpec, counter: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (spec.c_out, spec.c_in, spec.kernel, spec.kernel)
        w = normal_init(self.streams, f"init/{spec.name}/weight", shape, self.conv_init(spec)[1], counter)
        if self.init_scheme == "reference":
            b = torch.zeros(self.n_runs, spec.c_out, device=self.device)
        else:
            bound = torch_default_bound(spec.fan_in)
            b = uniform_init(self.streams, f"init/{spec.name}/bias", (spec.c_out,), bound, counter)
        return w, b

    def _draw_fc(self, counter: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (self.n_classes, self.n_features)
        if self.init_scheme == "reference":
            w = normal_init(self.streams, "init/fc/weight", shape, math.sqrt(1.0 / self.n_features), counter)
            b = torch.zeros(self.n_runs, self.n_classes, device=self.device)
        else:
            bound = torch_default_bound(self.n_features)
            w = uniform_init(self.streams, "init/fc/weight", shape, bound, counter)
            b = uniform_init(self.streams, "init/fc/bias", (self.n_classes,), bound, counter)
        return w, b

    def reset_head(self, counter: int) -> None:
        """Re-initialise fc in place from the init streams at `counter` (head resetting, docs/protocols/incremental_cifar.md).

        Counter 0 reproduces the initial head; use e.g. the increment number (≥ 1).
        """
        w, b = self._draw_fc(counter)
        self._assign("fc.weight", w)
        self._assign("fc.bias", b)

    def reinit(self, counter: int, reset_running_stats: bool = True) -> None:
        """Re-initialise every parameter in place at `counter` (the "retrained network").

        BN weight/bias go back to 1/0; with ``reset_running_stats`` the running statistics to 0/1 too
        (the reference's re-initialisation leaves them untouched: pass False to reproduce that).
        """
        for spec in self.convs:
            w, b = self._draw_conv(spec, counter)
            self._assign(f"{spec.name}.weight", w)
            self._assign(f"{spec.name}.bias", b)
            self._assign(f"{spec.bn}.weight", 1.0)
            self._assign(f"{spec.bn}.bias", 0.0)
            if reset_running_stats:
                self._assign(f"{spec.bn}.running_mean", 0.0)
                self._assign(f"{spec.bn}.running_var", 1.0)
        self.reset_head(counter)

    # ---- forward -----------------------------------------------------------------------------
    def _conv_bn(self, h: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
        p, buf = self.params, self.buffers
        h = grouped_conv2d(h, p[f"{spec.name}.weight"], p[f"{spec.name}.bias"], spec.stride, spec.padding)
        return grouped_batch_norm(
            h,
            p[f"{spec.bn}.weight"],
            p[f"{spec.bn}.bias"],
            buf[f"{spec.bn}.running_mean"],
            buf[f"{spec.bn}.running_var"],
            self.training,
            BN_MOMENTUM,
            BN_EPS,
        )

    def forward(
        self, x: torch.Tensor, return_features: bool = False, return_activations: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """x ``[S, B, 3, 32, 32]`` (normalised floats) -> logits ``[S, B, n_classes]``.

        Returns ``logits`` alone, or a tuple ``(logits, features)``, ``(logits, activations)`` or
        ``(logits, features, activations)`` as asked: features ``[S, B, 8·width]`` are the globally
        average-pooled penultimate representation; activations a dict of the output of every hidden
        ReLU ``[S, B, C, H, W]``, keyed like `unit_layers` (``layerX.Y.conv2`` is the block output
        after the residual sum and ReLU). Training mode updates the BN running statistics.
        """
        s = self.n_runs
        if x.dim() != 5 or x.shape[0] != s or x.shape[2] != 3:
            raise ValueError(f"expected images [S={s}, B, 3, H, W], got shape {tuple(x.shape)}")
        acts: dict[str, torch.Tensor] = {}
        h = torch.relu(self._conv_bn(to_grouped(x.to(self.dtype), self.channels_last), self.stem))
        if return_activations:
            acts[self.stem.name] = from_grouped(h, s)
        for blk in self.blocks:
            out = torch.relu(self._conv_bn(h, blk.conv1))
            if return_activations:
                acts[blk.conv1.name] = from_grouped(out, s)
            out = self._conv_bn(out, blk.conv2)
            short = h if blk.shortcut is None else self._conv_bn(h, blk.shortcut)
            h = torch.relu(out + short)
            if return_activations:
                acts[blk.conv2.name] = from_grouped(h, s)
        features = h.mean(dim=(2, 3)).view(x.shape[1], s, self.n_features).transpose(0, 1)  # [S, B, 8w]
        logits = batched_linear(features, self.params["fc.weight"], self.params["fc.bias"])
        extra: tuple[torch.Tensor | dict[str, torch.Tensor], ...] = ()
        if return_features:
            extra += (features,)
        if return_activations:
            extra += (acts,)
        return (logits, *extra) if extra else logits

    __call__ = forward

    # ---- units for CBP -----------------------------------------------------------------------
    def chain(self) -> list[ConvSpec]:
        """The 17 main-path convs in forward order (shortcut convs excluded)."""
        out = [self.stem]
        for blk in self.blocks:
            out += [blk.conv1, blk.conv2]
        return out

    def unit_layers(self, scope: UnitScope = "chain") -> list[UnitLayer]:
        """Conv channels as `UnitLayer` views, each with its BatchNorm tensors in ``bn``.

        ``"chain"`` (default, as the reference's ResNet CBP): all 17 main-path convs, each followed by
        the next main-path conv (the last by fc, one column per channel after global pooling); the
        identity/projection paths also read block outputs but are not part of ``out_weight``.
        ``"block_internal"``: only each block's first conv, whose channels feed nothing but conv2.
        """
        if scope not in ("chain", "block_internal"):
            raise ValueError(f"unknown unit scope {scope!r}; choose 'chain' or 'block_internal'")
        p, buf = self.params, self.buffers
        chain = self.chain()
        nexts = [f"{c.name}.weight" for c in chain[1:]] + ["fc.weight"]
        next_bias = [f"{c.name}.bias" for c in chain[1:]] + ["fc.bias"]
        internal = {blk.conv1.name for blk in self.blocks}
        layers = []
        for spec, nw, nb in zip(chain, nexts, next_bias):
            if scope == "block_internal" and spec.name not in internal:
                continue
            bn = {
                "weight": p[f"{spec.bn}.weight"],
                "bias": p[f"{spec.bn}.bias"],
                "running_mean": buf[f"{spec.bn}.running_mean"],
                "running_var": buf[f"{spec.bn}.running_var"],
            }
            layers.append(
                UnitLayer(
                    name=spec.name,
                    in_weight=p[f"{spec.name}.weight"],
                    in_bias=p[f"{spec.name}.bias"],
                    out_weight=p[nw],
                    out_bias=p[nb],
                    init=self.conv_init(spec),
                    bn=bn,
                )
            )
        return layers
