"""Seed-batched convolution in the *grouped layout*, and the parameter store of the image networks.

S runs are trained in one forward/backward by laying a batch of S runs out as one image batch whose
channels are the runs' channels side by side: ``[S, B, C, H, W] -> [B, S*C, H, W]`` (run s owns
channels ``s*C .. (s+1)*C - 1``). A convolution with weights ``[S, out, in, kh, kw]`` is then one
``conv2d`` with weight ``[S*out, in, kh, kw]`` and ``groups=S``, max-pooling acts per channel, and
per-run BatchNorm is plain BatchNorm over the S*C channels (statistics over batch and positions of
each channel of each run). Nothing mixes runs, so a run's numbers do not depend on its batch.

By default the grouped activations use the channels-last memory format, which oneDNN (CPU) handles
without reordering; `bench/bench_image_nets.py` measures the designs (grouped contiguous, grouped
channels-last, `torch.func.vmap`, a loop over runs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F

from lop.errors import CheckpointError


def to_grouped(x: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """``[S, B, C, H, W]`` -> ``[B, S*C, H, W]`` (one copy); channels-last strides if asked."""
    if x.dim() != 5:
        raise ValueError(f"expected images [S, B, C, H, W], got shape {tuple(x.shape)}")
    s, b, c, h, w = x.shape
    if channels_last:
        # .contiguous() forces the copy: for S = 1 a reshape alone would return an NCHW-strided view
        return x.permute(1, 3, 4, 0, 2).contiguous().view(b, h, w, s * c).permute(0, 3, 1, 2)
    return x.transpose(0, 1).reshape(b, s * c, h, w)


def from_grouped(h: torch.Tensor, n_runs: int) -> torch.Tensor:
    """``[B, S*C, *spatial]`` -> ``[S, B, C, *spatial]`` (a view, no copy)."""
    return h.unflatten(1, (n_runs, -1)).transpose(0, 1)


def _small_pointwise(weight: torch.Tensor) -> bool:
    """A 1×1 kernel over fewer than 8 input channels per run (weight ``[S, out, in, 1, 1]``)."""
    return weight.shape[-2:] == (1, 1) and weight.shape[2] < 8


def grouped_conv2d(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int = 1,
    padding: int = 0,
) -> torch.Tensor:
    """Per-run convolution: h ``[B, S*in, H, W]``, weight ``[S, out, in, kh, kw]``, bias ``[S, out]``.

    A strided 1×1 convolution without padding with fewer than 8 input channels per run is computed on
    CPU as the same convolution with stride 1 of the strided view ``h[..., ::s, ::s]`` (the same
    products and sums): oneDNN's weight-gradient kernel for the strided form corrupts the heap on AVX2
    CPUs with one thread (torch 2.13; ResNet-18 at width < 8, tests/test_batched_conv.py)."""
    n_runs = weight.shape[0]
    if stride > 1 and padding == 0 and h.device.type == "cpu" and _small_pointwise(weight):
        h, stride = h[..., ::stride, ::stride], 1
    b = None if bias is None else bias.reshape(-1)
    return F.conv2d(h, weight.flatten(0, 1), b, stride=stride, padding=padding, groups=n_runs)


def grouped_batch_norm(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Per-run BatchNorm2d (Ioffe & Szegedy 2015) of h ``[B, S*C, H, W]``; tensors ``[S, C]``.

    In training mode the batch statistics of each (run, channel) normalise and the running
    statistics ``[S, C]`` are updated in place (PyTorch convention: unbiased variance, momentum 0.1).
    """
    return F.batch_norm(
        h,
        running_mean.view(-1),
        running_var.view(-1),
        weight.reshape(-1),
        bias.reshape(-1),
        training,
        momentum,
        eps,
    )


#: ``draw(layer, counter) -> (weight, bias)``: a network's initial parameters of one layer
LayerDraw = Callable[[str, int], tuple[torch.Tensor, torch.Tensor]]


class SeedBatchedNet:
    """Flat parameter/buffer store shared by the image networks.

    ``params`` maps names to leaf tensors ``[S, ...]`` (requires_grad); ``buffers`` to non-trained
    state (BatchNorm running statistics). Updates are always in place, so views handed out by
    ``unit_layers()`` and optimiser state stay attached to the parameters.
    """

    def __init__(self, n_runs: int, device: torch.device, dtype: torch.dtype) -> None:
        self.n_runs = n_runs
        self.device = device
        self.dtype = dtype
        self.params: dict[str, torch.Tensor] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        self.training = True

    # ---- parameters --------------------------------------------------------------------------
    def _add_param(self, name: str, value: torch.Tensor) -> None:
        self.params[name] = value.to(self.dtype).contiguous().requires_grad_(True)

    def _assign(self, name: str, value: torch.Tensor | float) -> None:
        """Overwrite parameter or buffer `name` in place (all runs)."""
        t = self.params[name] if name in self.params else self.buffers[name]
        with torch.no_grad():
            if isinstance(value, torch.Tensor):
                t.copy_(value)
            else:
                t.fill_(value)

    def _add_layers(self, draw: LayerDraw, layers: Iterable[str]) -> None:
        """Add ``<layer>.weight`` and ``<layer>.bias`` of every layer in order, as ``draw(layer, 0)`` gives them."""
        for name in layers:
            w, b = draw(name, 0)
            self._add_param(f"{name}.weight", w)
            self._add_param(f"{name}.bias", b)

    def _redraw_layers(self, draw: LayerDraw, layers: Iterable[str], counter: int) -> None:
        """Overwrite every layer's weight and bias in place with ``draw(layer, counter)``."""
        for name in layers:
            w, b = draw(name, counter)
            self._assign(f"{name}.weight", w)
            self._assign(f"{name}.bias", b)

    def parameters(self) -> list[torch.Tensor]:
        """The trainable tensors, in a fixed order (the optimiser's order)."""
        return list(self.params.values())

    def named_parameters(self) -> list[tuple[str, torch.Tensor]]:
        return list(self.params.items())

    def n_params_per_run(self) -> int:
        """Number of trainable scalars of one run."""
        return sum(p[0].numel() for p in self.params.values())

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    # ---- modes -------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> SeedBatchedNet:
        self.training = mode
        return self

    def eval(self) -> SeedBatchedNet:
        return self.train(False)

    # ---- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers by name (detached; ``torch.save``-able without pickle of classes)."""
        out = {k: v.detach() for k, v in self.params.items()}
        out.update({k: v for k, v in self.buffers.items()})
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor], where: str = "checkpoint") -> None:
        """Copy `state` into the parameters/buffers in place; raises `CheckpointError` on a mismatch."""
        own = {**self.params, **self.buffers}
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        if missing or extra:
            raise CheckpointError(
                f"{where}: network state does not match this architecture (missing {missing[:3]}, "
                f"unexpected {extra[:3]}); resume with the same experiment config or delete the checkpoint"
            )
        for k, t in own.items():
            if tuple(state[k].shape) != tuple(t.shape):
                raise CheckpointError(
                    f"{where}: tensor {k!r} has shape {tuple(state[k].shape)}, expected {tuple(t.shape)}; "
                    "resume with the same seeds/config or delete the checkpoint"
                )
        with torch.no_grad():
            for k, t in own.items():
                t.copy_(state[k])
