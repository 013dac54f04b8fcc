"""The CIFAR network of Zenke, Poole & Ganguli (2017), seed-batched (docs/protocols/cl_split_cifar100.md).

The small Keras-style CIFAR convnet of the CIFAR-10 → CIFAR-100 experiment (1,276,508 parameters per run
for 60 outputs)::

    conv1 3→32 3×3 "same" → ReLU → conv2 32→32 3×3 "valid" → ReLU → maxpool 2 → dropout 0.25
                                                                (32×32 → 32×32 → 30×30 → 15×15)
    conv3 32→64 3×3 "same" → ReLU → conv4 64→64 3×3 "valid" → ReLU → maxpool 2 → dropout 0.25
                                                                (→ 15×15 → 13×13 → 6×6)
    flatten (C, H, W order: 2304) → fc1 2304→512 → ReLU → dropout 0.5 → fc2 512→n_out

Initialisation (the Keras defaults): weights Glorot-uniform, U(±sqrt(6 / (fan_in + fan_out))) with
``fan = channels · kh · kw`` for convolutions, biases zero; weights from the per-run streams
``init/<layer>/weight``. ``output_init: zero`` sets the output layer's weights to zero as well, as Zenke
et al. do (``default`` keeps the Glorot draw).

Dropout is inverted dropout: in training mode a unit is kept with probability 1 − p and scaled by
1/(1 − p); the keep masks are drawn per run from the stream ``dropout/<layer>`` at a counter that counts
the training-mode forward passes (saved in `state_dict`, so a resumed run draws the same masks); in
evaluation mode (``net.eval()``) dropout is the identity.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F

from lop.nets.batched_conv import SeedBatchedNet, from_grouped, grouped_conv2d, to_grouped
from lop.nets.layers import batched_linear, uniform_init
from lop.nets.units import UnitLayer
from lop.rng import RunStreams

IMAGE_SHAPE = (3, 32, 32)
# (name, in channels, out channels, padding, pool + dropout after it)
CONV_LAYERS: tuple[tuple[str, int, int, int, bool], ...] = (
    ("conv1", 3, 32, 1, False),
    ("conv2", 32, 32, 0, True),
    ("conv3", 32, 64, 1, False),
    ("conv4", 64, 64, 0, True),
)
KERNEL = 3
LAST_SPATIAL = 6 * 6
HIDDEN_FC = 512
CONV_DROPOUT, FC_DROPOUT = 0.25, 0.5
OutputInit = Literal["default", "zero"]
DROPOUT_CALLS = "dropout_calls"  # the state_dict entry of the dropout counter


def glorot_bound(fan_in: int, fan_out: int) -> float:
    """Glorot/Xavier uniform bound sqrt(6 / (fan_in + fan_out))."""
    return math.sqrt(6.0 / (fan_in + fan_out))


class ZenkeConvNet(SeedBatchedNet):
    """Zenke et al.'s CIFAR convnet (see the module doc) for S runs at once; parameters ``[S, ...]``."""

    def __init__(
        self,
        streams: RunStreams,
        n_out: int = 60,
        output_init: OutputInit = "default",
        channels_last: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if output_init not in ("default", "zero"):
            raise ValueError(f"output_init must be 'default' or 'zero', got {output_init!r}")
        super().__init__(streams.n, streams.device, dtype)
        self.streams, self.n_out, self.output_init = streams, n_out, output_init
        self.channels_last = channels_last
        self.dropout_calls = 0
        self.fc_sizes = (("fc1", CONV_LAYERS[-1][2] * LAST_SPATIAL, HIDDEN_FC), ("fc2", HIDDEN_FC, n_out))
        self.shapes: dict[str, tuple[tuple[int, ...], int, int]] = {}  # name -> (shape, fan_in, fan_out)
        for name, cin, cout, *_ in CONV_LAYERS:
            self.shapes[name] = ((cout, cin, KERNEL, KERNEL), cin * KERNEL * KERNEL, cout * KERNEL * KERNEL)
        for name, fin, fout in self.fc_sizes:
            self.shapes[name] = ((fout, fin), fin, fout)
        self._add_layers(self._draw, self.shapes)

    def _draw(self, layer: str, counter: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape, fan_in, fan_out = self.shapes[layer]
        w = uniform_init(self.streams, f"init/{layer}/weight", shape, glorot_bound(fan_in, fan_out), counter)
        if layer == "fc2" and self.output_init == "zero":
            w = torch.zeros_like(w)
        b = torch.zeros((self.n_runs, shape[0]), device=self.device)
        return w.to(self.dtype), b.to(self.dtype)

    def reinit(self, counter: int) -> None:
        """Re-draw every parameter in place from the init streams at `counter` (0 = the initial draw)."""
        self._redraw_layers(self._draw, self.shapes, counter)

    def _dropout(self, h: torch.Tensor, layer: str, p: float, grouped: bool) -> torch.Tensor:
        """Inverted dropout of ``h`` (grouped ``[B, S*C, H, W]`` or ``[S, B, F]``) in training mode."""
        if not self.training:
            return h
        s = self.n_runs
        shape = from_grouped(h, s).shape[1:] if grouped else h.shape[1:]
        keep = self.streams.bernoulli(f"dropout/{layer}", self.dropout_calls, shape, 1.0 - p)
        scale = keep.to(h.dtype) * (1.0 / (1.0 - p))
        return h * (to_grouped(scale, self.channels_last) if grouped else scale)

    def forward(
        self, x: torch.Tensor, return_activations: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x ``[S, B, 3, 32, 32]`` -> logits ``[S, B, n_out]``.

        With ``return_activations`` also ``{conv1 .. conv4, fc1}``: the post-ReLU hidden activations
        (conv2 and conv4 after pooling, before dropout), ``[S, B, units, *spatial]`` / ``[S, B, 512]``.
        """
        p, s = self.params, self.n_runs
        if x.dim() != 5 or x.shape[0] != s or tuple(x.shape[2:]) != IMAGE_SHAPE:
            raise ValueError(f"expected images [S={s}, B, 3, 32, 32], got shape {tuple(x.shape)}")
        acts: dict[str, torch.Tensor] = {}
        h = to_grouped(x.to(self.dtype), self.channels_last)
        for name, _, _, pad, pool in CONV_LAYERS:
            h = grouped_conv2d(h, p[f"{name}.weight"], p[f"{name}.bias"], padding=pad)
            h = torch.relu(F.max_pool2d(h, 2) if pool else h)
            if return_activations:
                acts[name] = from_grouped(h, s)
            if pool:
                h = self._dropout(h, name, CONV_DROPOUT, grouped=True)
        h = from_grouped(h, s).reshape(s, x.shape[1], -1)  # per run: (C, H, W) flatten order
        h = torch.relu(batched_linear(h, p["fc1.weight"], p["fc1.bias"]))
        if return_activations:
            acts["fc1"] = h
        h = self._dropout(h, "fc1", FC_DROPOUT, grouped=False)
        logits = batched_linear(h, p["fc2.weight"], p["fc2.bias"])
        if self.training:
            self.dropout_calls += 1
        return (logits, acts) if return_activations else logits

    __call__ = forward

    def unit_layers(self) -> list[UnitLayer]:
        """The 5 hidden layers as `UnitLayer` views (names match the activation keys of `forward`);
        conv4's channel c owns fc1's columns 36c .. 36c+35 (fc1's weight viewed as ``[S, 512, 64, 36]``)."""
        p, s = self.params, self.n_runs
        names = [n for n, *_ in CONV_LAYERS] + ["fc1", "fc2"]
        layers = []
        for name, nxt in itertools.pairwise(names):
            out_w = p[f"{nxt}.weight"]
            if nxt == "fc1":
                out_w = out_w.view(s, HIDDEN_FC, CONV_LAYERS[-1][2], LAST_SPATIAL)
            _, fan_in, fan_out = self.shapes[name]
            layers.append(
                UnitLayer(
                    name=name,
                    in_weight=p[f"{name}.weight"],
                    in_bias=p[f"{name}.bias"],
                    out_weight=out_w,
                    out_bias=p[f"{nxt}.bias"],
                    init=("uniform", glorot_bound(fan_in, fan_out)),
                )
            )
        return layers

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters plus the dropout counter (a CPU int64 scalar)."""
        return {**super().state_dict(), DROPOUT_CALLS: torch.tensor(self.dropout_calls, dtype=torch.int64)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor], where: str = "checkpoint") -> None:
        state = dict(state)
        calls = state.pop(DROPOUT_CALLS, None)
        super().load_state_dict(state, where)
        if calls is not None:
            self.dropout_calls = int(calls)
