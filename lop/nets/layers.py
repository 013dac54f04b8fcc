"""Seed-batched layer primitives and initialisers.

Shapes: a linear layer's weight is ``[S, out, in]``, its bias ``[S, out]``; inputs are ``[S, B, in]``.
Initial values are drawn from `lop.rng.RunStreams`, so a run's initialisation does not depend on
the batch it trains in.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lop.rng import RunStreams

# Gains of nn.init.calculate_gain; elu and swish use the ReLU gain (the reference's choice for units
# that are ReLU-like for positive inputs).
ACTIVATION_GAINS: dict[str, float] = {
    "linear": 1.0,
    "sigmoid": 1.0,
    "tanh": 5.0 / 3.0,
    "relu": math.sqrt(2.0),
    "leaky_relu": math.sqrt(2.0 / (1.0 + 0.01**2)),
    "elu": math.sqrt(2.0),
    "swish": math.sqrt(2.0),
    "selu": 0.75,
}


def batched_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y[s] = x[s] @ weight[s].T + bias[s] for x ``[S, B, in]``; returns ``[S, B, out]``."""
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def kaiming_uniform_bound(fan_in: int, activation: str = "relu") -> float:
    """He et al. (2015) uniform bound gain·sqrt(3 / fan_in)."""
    return ACTIVATION_GAINS[activation] * math.sqrt(3.0 / fan_in)


def torch_default_bound(fan_in: int) -> float:
    """PyTorch's default Linear/Conv init bound 1/sqrt(fan_in) (kaiming_uniform with a = sqrt(5))."""
    return 1.0 / math.sqrt(fan_in)


def uniform_init(
    streams: RunStreams, name: str, shape: tuple[int, ...], bound: float, counter: int = 0
) -> torch.Tensor:
    """``[S, *shape]`` drawn from U(-bound, bound) on stream ``name``."""
    return streams.uniform(name, counter, shape, -bound, bound)


def normal_init(
    streams: RunStreams, name: str, shape: tuple[int, ...], std: float, counter: int = 0
) -> torch.Tensor:
    """``[S, *shape]`` drawn from N(0, std²) on stream ``name``."""
    return streams.normal(name, counter, shape, std)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": lambda a: a,
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "leaky_relu": lambda a: torch.nn.functional.leaky_relu(a, 0.01),
    "elu": torch.nn.functional.elu,
    "swish": torch.nn.functional.silu,
    "selu": torch.nn.functional.selu,
}
