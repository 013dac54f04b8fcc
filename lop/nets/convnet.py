"""Seed-batched networks of Continual ImageNet (docs/protocols/continual_imagenet.md): the ConvNet and the linear baseline.

ConvNet (177,218 parameters per run for 2 outputs)::

    conv1 3→32 5×5 → ReLU → maxpool 2   (32×32 → 28×28 → 14×14)
    conv2 32→64 3×3 → ReLU → maxpool 2  (→ 12×12 → 6×6)
    conv3 64→128 3×3 → ReLU → maxpool 2 (→ 4×4 → 2×2)
    flatten (C, H, W order: 512) → fc1 512→128 → ReLU → fc2 128→128 → ReLU → fc3 128→n_out

PyTorch default initialisation: weights and biases U(±1/sqrt(fan_in)), drawn from the per-run streams
``init/<layer>/weight`` and ``init/<layer>/bias``; ``output_init="zero"`` sets fc3's weights and bias to
zero instead (Zenke et al.'s zero-initialised output layer; the other layers' draws are unchanged). Convolutions run in the grouped layout of
`lop.nets.batched_conv` (all S runs in one conv call).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from lop.nets.batched_conv import SeedBatchedNet, from_grouped, grouped_conv2d, to_grouped
from lop.nets.layers import batched_linear, torch_default_bound, uniform_init
from lop.nets.units import UnitLayer
from lop.rng import RunStreams

IMAGE_SHAPE = (3, 32, 32)
# (name, in channels, out channels, kernel): every conv is "valid" (no padding), stride 1, then pool 2.
CONV_LAYERS: tuple[tuple[str, int, int, int], ...] = (
    ("conv1", 3, 32, 5),
    ("conv2", 32, 64, 3),
    ("conv3", 64, 128, 3),
)
LAST_SPATIAL = 2 * 2  # conv3 output after pooling: 2×2 positions per channel
HIDDEN_FC = 128


def _check_images(x: torch.Tensor, n_runs: int) -> None:
    if x.dim() != 5 or x.shape[0] != n_runs or tuple(x.shape[2:]) != IMAGE_SHAPE:
        raise ValueError(f"expected images [S={n_runs}, B, 3, 32, 32], got shape {tuple(x.shape)}")


class ConvNet(SeedBatchedNet):
    """The Continual ImageNet ConvNet for S runs at once; parameters ``[S, ...]``."""

    def __init__(
        self,
        streams: RunStreams,
        n_out: int = 2,
        channels_last: bool = True,
        dtype: torch.dtype = torch.float32,
        output_init: Literal["default", "zero"] = "default",
    ) -> None:
        if output_init not in ("default", "zero"):
            raise ValueError(f"output_init must be 'default' or 'zero', got {output_init!r}")
        super().__init__(streams.n, streams.device, dtype)
        self.streams = streams
        self.n_out = n_out
        self.channels_last = channels_last
        self.output_init = output_init
        self.fc_sizes: tuple[tuple[str, int, int], ...] = (
            ("fc1", CONV_LAYERS[-1][2] * LAST_SPATIAL, HIDDEN_FC),
            ("fc2", HIDDEN_FC, HIDDEN_FC),
            ("fc3", HIDDEN_FC, n_out),
        )
        self.shapes: dict[str, tuple[tuple[int, ...], int]] = {}  # name -> (weight shape, fan_in)
        for name, cin, cout, k in CONV_LAYERS:
            self.shapes[name] = ((cout, cin, k, k), cin * k * k)
        for name, fin, fout in self.fc_sizes:
            self.shapes[name] = ((fout, fin), fin)
        self._add_layers(self._draw, self.shapes)

    def _draw(self, layer: str, counter: int) -> tuple[torch.Tensor, torch.Tensor]:
        """PyTorch-default initial (weight, bias) of `layer` from the init streams at `counter`."""
        shape, fan_in = self.shapes[layer]
        bound = torch_default_bound(fan_in)
        w = uniform_init(self.streams, f"init/{layer}/weight", shape, bound, counter)
        b = uniform_init(self.streams, f"init/{layer}/bias", shape[:1], bound, counter)
        if layer == "fc3" and self.output_init == "zero":
            w, b = torch.zeros_like(w), torch.zeros_like(b)
        return w.to(self.dtype), b.to(self.dtype)

    def reinit(self, counter: int) -> None:
        """Re-draw every parameter in place from the init streams at `counter` (0 = the initial draw)."""
        self._redraw_layers(self._draw, self.shapes, counter)

    def reset_head(self) -> None:
        """Zero the output layer's weights and bias (done at the start of every task, docs/protocols/continual_imagenet.md)."""
        self._assign("fc3.weight", 0.0)
        self._assign("fc3.bias", 0.0)

    def forward(
        self, x: torch.Tensor, return_activations: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x ``[S, B, 3, 32, 32]`` -> logits ``[S, B, n_out]``.

        With ``return_activations`` also a dict ``{conv1, conv2, conv3, fc1, fc2}`` of post-ReLU hidden
        activations ``[S, B, n_units, *spatial]`` (views into the grouped layout). Conv activations are
        taken *after* max-pooling, i.e. what the next layer sees (as the reference code does):
        conv1 ``[S, B, 32, 14, 14]``, conv2 ``[S, B, 64, 6, 6]``, conv3 ``[S, B, 128, 2, 2]``, fc1/fc2
        ``[S, B, 128]``. ReLU is applied after pooling, which is the same function (max commutes with
        the monotone ReLU) on 4× fewer elements.
        """
        p, s = self.params, self.n_runs
        _check_images(x, s)
        acts: dict[str, torch.Tensor] = {}
        h = to_grouped(x.to(self.dtype), self.channels_last)
        for name, *_ in CONV_LAYERS:
            h = grouped_conv2d(h, p[f"{name}.weight"], p[f"{name}.bias"])
            h = torch.relu(F.max_pool2d(h, 2))
            if return_activations:
                acts[name] = from_grouped(h, s)
        h = from_grouped(h, s).reshape(s, x.shape[1], -1)  # per run: (C, H, W) flatten order
        for name, *_ in self.fc_sizes[:-1]:
            h = torch.relu(batched_linear(h, p[f"{name}.weight"], p[f"{name}.bias"]))
            if return_activations:
                acts[name] = h
        logits = batched_linear(h, p["fc3.weight"], p["fc3.bias"])
        return (logits, acts) if return_activations else logits

    __call__ = forward

    def unit_layers(self) -> list[UnitLayer]:
        """The 5 hidden layers as `UnitLayer` views (names match the activation keys of `forward`).

        conv3's channels feed fc1 through the flatten: channel c owns fc1 columns 4c .. 4c+3, so fc1's
        weight is viewed as ``[S, 128, 128, 4]``.
        """
        p, s = self.params, self.n_runs
        names = [n for n, *_ in CONV_LAYERS] + [n for n, *_ in self.fc_sizes]
        layers = []
        for i, name in enumerate(names[:-1]):
            nxt = names[i + 1]
            out_w = p[f"{nxt}.weight"]
            if nxt == "fc1":
                out_w = out_w.view(s, out_w.shape[1], CONV_LAYERS[-1][2], LAST_SPATIAL)
            layers.append(
                UnitLayer(
                    name=name,
                    in_weight=p[f"{name}.weight"],
                    in_bias=p[f"{name}.bias"],
                    out_weight=out_w,
                    out_bias=p[f"{nxt}.bias"],
                    init=("uniform", torch_default_bound(self.shapes[name][1])),
                )
            )
        return layers


class LinearClassifier(SeedBatchedNet):
    """The linear baseline of Continual ImageNet: 3072 → n_out on the flattened (C, H, W) image."""

    def __init__(
        self,
        streams: RunStreams,
        n_out: int = 2,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(streams.n, streams.device, dtype)
        self.streams = streams
        self.n_out = n_out
        self.n_in = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]
        w, b = self._draw(0)
        self._add_param("fc.weight", w)
        self._add_param("fc.bias", b)

    def _draw(self, counter: int) -> tuple[torch.Tensor, torch.Tensor]:
        bound = torch_default_bound(self.n_in)
        w = uniform_init(self.streams, "init/fc/weight", (self.n_out, self.n_in), bound, counter)
        b = uniform_init(self.streams, "init/fc/bias", (self.n_out,), bound, counter)
        return w.to(self.dtype), b.to(self.dtype)

    def reinit(self, counter: int) -> None:
        w, b = self._draw(counter)
        self._assign("fc.weight", w)
        self._assign("fc.bias", b)

    def reset_head(self) -> None:
        """Zero the (only) layer, as the protocol does at every task start."""
        self._assign("fc.weight", 0.0)
        self._assign("fc.bias", 0.0)

    def forward(
        self, x: torch.Tensor, return_activations: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x ``[S, B, 3, 32, 32]`` -> logits ``[S, B, n_out]`` (no hidden activations)."""
        _check_images(x, self.n_runs)
        h = x.to(self.dtype).reshape(self.n_runs, x.shape[1], self.n_in)
        logits = batched_linear(h, self.params["fc.weight"], self.params["fc.bias"])
        return (logits, {}) if return_activations else logits

    __call__ = forward

    def unit_layers(self) -> list[UnitLayer]:
        return []


def build_imagenet_net(
    arch: Literal["convnet", "linear"],
    streams: RunStreams,
    n_out: int = 2,
    channels_last: bool = True,
) -> ConvNet | LinearClassifier:
    """The Continual ImageNet learner named by `arch`."""
    if arch == "convnet":
        return ConvNet(streams, n_out, channels_last=channels_last)
    if arch == "linear":
        return LinearClassifier(streams, n_out)
    raise ValueError(f"unknown architecture {arch!r}; choose 'convnet' or 'linear'")
