"""Seed-batched multi-layer perceptron with an explicit (autograd-free) backward pass.

Online learning with batch size 1 is dominated by per-operation overhead, so the MLP offers a
hand-written backward pass (`backward`) next to its autograd-compatible `forward`; both use the
same parameters ``weights[l]: [S, out, in]``, ``biases[l]: [S, out]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from lop.nets.layers import ACTIVATIONS, batched_linear, kaiming_uniform_bound, torch_default_bound
from lop.nets.units import UnitLayer
from lop.rng import RunStreams

InitKind = Literal["kaiming_uniform", "lecun_uniform", "torch_default"]
OutputGain = Literal["activation", "linear"]


def activation_grad(name: str, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    """d act(a) / d a, from the pre-activation `pre` and the output `post`."""
    if name == "relu":
        return (pre > 0).to(pre.dtype)
    if name == "tanh":
        return 1.0 - post * post
    if name == "sigmoid":
        return post * (1.0 - post)
    if name == "leaky_relu":
        return torch.where(pre > 0, 1.0, 0.01).to(pre.dtype)
    if name == "elu":
        return torch.where(pre > 0, torch.ones_like(post), post + 1.0)
    if name == "swish":
        sig = torch.sigmoid(pre)
        return sig * (1.0 + pre * (1.0 - sig))
    if name == "selu":
        scale = 1.0507009873554805
        return torch.where(pre > 0, torch.full_like(post, scale), post + scale * 1.6732632423543772)
    if name == "linear":
        return torch.ones_like(pre)
    raise ValueError(f"unknown activation {name!r}")


SMALL_LAYER = 4096  # weights per run below which batch-1 products use broadcasting instead of bmm


def _linear(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h ``[S, B, in]`` -> ``[S, B, out]``; for B = 1 and small layers a broadcast product (tiny
    batched matmuls are dominated by per-matrix overhead)."""
    if h.shape[1] == 1 and w.shape[1] * w.shape[2] <= SMALL_LAYER:
        return (w * h).sum(-1).add_(b).unsqueeze(1)
    if w.shape[1] == 1:  # one output column: bmm rounds differently for S = 1, breaking batch independence
        return (h * w).sum(-1, keepdim=True).add_(b.unsqueeze(1))
    return batched_linear(h, w, b)


def _outer(delta: torch.Tensor, h: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_b delta[s, b, :]ᵀ h[s, b, :] -> ``[S, out, in]``, written into `out` when given (the same
    arithmetic either way: a reused buffer only avoids re-faulting fresh pages for a large gradient)."""
    if delta.shape[1] == 1:
        return torch.mul(delta.transpose(1, 2), h, out=out) if out is not None else delta.transpose(1, 2) * h
    return (
        torch.bmm(delta.transpose(1, 2), h, out=out)
        if out is not None
        else torch.bmm(delta.transpose(1, 2), h)
    )


def _back(delta: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """delta ``[S, B, out]`` @ w ``[S, out, in]`` -> ``[S, B, in]``."""
    if delta.shape[1] == 1 and w.shape[1] * w.shape[2] <= SMALL_LAYER:
        return (delta.transpose(1, 2) * w).sum(1, keepdim=True)
    return torch.bmm(delta, w)


@dataclass
class ForwardCache:
    """Inputs and activations of one forward pass, for `BatchedMLP.backward` and CBP."""

    x: torch.Tensor
    pre: list[torch.Tensor]
    post: list[torch.Tensor]


class BatchedMLP:
    """sizes = [in, h1, ..., out]; hidden layers use `activation`, the output layer is linear.

    Initial weights of layer l (fan-in n_l) are U(−b_l, b_l), biases 0 (``zero_bias``) or U(±1/√n_l):

    * ``kaiming_uniform``: b_l = g·√(3/n_l), g the gain of `activation` (`ACTIVATION_GAINS`: √2 for
      ReLU) on hidden layers; on the linear output layer g is the same activation gain
      (``output_gain: activation``, this project's default) or 1 (``output_gain: linear``, the
      reference code's ``kaiming_uniform_(nonlinearity='linear')``: e.g. 0.0387 instead of 0.0548 at
      fan-in 2000);
    * ``lecun_uniform``: b_l = √(3/n_l) on every layer (gain 1, so ``output_gain`` changes nothing);
    * ``torch_default``: b_l = 1/√n_l on every layer (PyTorch's default Linear init).

    ``hidden_init`` (if given) replaces `init` on the hidden layers only, e.g. ``torch_default`` hidden
    layers under a ``kaiming_uniform`` output layer (the reference's SCR learner with SELU units).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str,
        streams: RunStreams,
        init: InitKind = "kaiming_uniform",
        zero_bias: bool = True,
        dtype: torch.dtype = torch.float32,
        output_gain: OutputGain = "activation",
        hidden_init: InitKind | None = None,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
        self.sizes = [int(s) for s in sizes]
        self.activation = activation
        self.act = ACTIVATIONS[activation]
        self.init = init
        if output_gain not in ("activation", "linear"):
            raise ValueError(f"output_gain must be 'activation' or 'linear', got {output_gain!r}")
        self.output_gain = output_gain
        self.hidden_init = hidden_init
        self.weights: list[torch.Tensor] = []
        self.biases: list[torch.Tensor] = []
        self.bounds: list[float] = []
        for layer, (fan_in, fan_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            bound = self.init_bound(layer)
            self.bounds.append(bound)
            w = streams.uniform(f"init/w{layer}", 0, (fan_out, fan_in), -bound, bound, dtype=dtype)
            if zero_bias:
                b = torch.zeros(streams.n, fan_out, dtype=dtype, device=streams.device)
            else:
                bb = torch_default_bound(fan_in)
                b = streams.uniform(f"init/b{layer}", 0, (fan_out,), -bb, bb, dtype=dtype)
            self.weights.append(w)
            self.biases.append(b)

    def init_bound(self, layer: int) -> float:
        """Uniform bound b_l of layer `layer`'s initial weights (see the class docstring)."""
        fan_in = self.sizes[layer]
        output = layer == len(self.sizes) - 2
        init = self.hidden_init if self.hidden_init is not None and not output else self.init
        if init == "kaiming_uniform":
            gain_of = "linear" if output and self.output_gain == "linear" else self.activation
            return kaiming_uniform_bound(fan_in, gain_of)
        if init == "lecun_uniform":
            return (3.0 / fan_in) ** 0.5
        return torch_default_bound(fan_in)

    @property
    def n_hidden(self) -> int:
        return len(self.sizes) - 2

    def parameters(self) -> list[torch.Tensor]:
        """Parameters in the order w0, b0, w1, b1, ..."""
        out: list[torch.Tensor] = []
        for w, b in zip(self.weights, self.biases):
            out += [w, b]
        return out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ForwardCache]:
        """x ``[S, B, in]`` -> (output ``[S, B, out]``, cache of pre/post activations)."""
        pre: list[torch.Tensor] = []
        post: list[torch.Tensor] = []
        h = x
        last = len(self.weights) - 1
        for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
            a = _linear(h, w, b)
            if layer == last:
                return a, ForwardCache(x, pre, post)
            h = self.act(a)
            pre.append(a)
            post.append(h)
        raise AssertionError("unreachable")

    def backward(
        self, cache: ForwardCache, grad_out: torch.Tensor, reuse_buffers: bool = False
    ) -> list[torch.Tensor]:
        """Gradients of sum(grad_out * output) w.r.t. `parameters()` (same order), by hand.

        ``reuse_buffers=True`` writes the weight gradients into buffers owned by the net and reused
        every call (the caller must consume them before the next call, as an optimiser step does):
        a fresh ``[S, out, in]`` gradient above glibc's mmap threshold is page-faulted in every step,
        which at width 2000 costs more system time than the arithmetic. Results are bit-identical.
        """
        grads: list[torch.Tensor] = []
        delta = grad_out  # [S, B, out]
        for layer in range(len(self.weights) - 1, -1, -1):
            h_in = cache.x if layer == 0 else cache.post[layer - 1]
            grads.append(delta.sum(1))
            grads.append(_outer(delta, h_in, self._grad_buffer(layer) if reuse_buffers else None))
            if layer > 0:
                dh = _back(delta, self.weights[layer])
                if self.activation == "relu":  # one fused pass: dh where the unit was active, else 0
                    delta = torch.ops.aten.threshold_backward(dh, cache.post[layer - 1], 0.0)
                else:
                    delta = dh * activation_grad(self.activation, cache.pre[layer - 1], cache.post[layer - 1])
        grads.reverse()
        return grads

    def _grad_buffer(self, layer: int) -> torch.Tensor:
        bufs = self.__dict__.setdefault("_grad_bufs", {})
        w = self.weights[layer]
        buf = bufs.get(layer)
        if buf is None or buf.shape != w.shape or buf.dtype != w.dtype:
            buf = bufs[layer] = torch.empty_like(w)
        return buf

    def unit_layers(self) -> list[UnitLayer]:
        """Hidden layers as `UnitLayer` views for CBP/ReDo."""
        return [
            UnitLayer(
                name=f"layer{layer + 1}",
                in_weight=self.weights[layer],
                in_bias=self.biases[layer],
                out_weight=self.weights[layer + 1],
                out_bias=self.biases[layer + 1],
                init=("uniform", self.bounds[layer]),
            )
            for layer in range(self.n_hidden)
        ]

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        return {"weights": self.weights, "biases": self.biases}

    def load_state_dict(self, state: dict[str, list[torch.Tensor]]) -> None:
        for dst, src in zip(self.weights + self.biases, state["weights"] + state["biases"], strict=True):
            dst.copy_(src)
