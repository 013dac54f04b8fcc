"""A seed-batched ReLU MLP with the image networks' interface (autograd, ``fc`` head, features).

``x [S, B, in] → h_1 = relu(W_1 x + b_1) → … → h_d (the features) → fc``. Parameters are named
``hidden<i>.weight`` ``[S, width, fan_in]``, ``hidden<i>.bias`` and ``fc.weight`` ``[S, n_classes, width]``,
``fc.bias``; PyTorch's default initialisation U(±1/√fan_in), drawn from the run streams
``init/hidden<i>/*`` and ``init/fc/*``. Used by `budgeted_cl` on the embedded 8×8 digits, where the same
code path as ResNet-18 (features for herding/k-means, an ``fc`` head for the FC corrections) is needed.
"""

from __future__ import annotations

import torch

from lop.nets.batched_conv import SeedBatchedNet
from lop.nets.layers import batched_linear, torch_default_bound, uniform_init
from lop.rng import RunStreams


class FeatureMLP(SeedBatchedNet):
    """``depth`` hidden ReLU layers of ``width`` units for S runs at once."""

    def __init__(
        self, streams: RunStreams, n_in: int, n_classes: int, width: int = 64, depth: int = 2
    ) -> None:
        super().__init__(streams.n, streams.device, torch.float32)
        self.n_features = width
        self.n_classes = n_classes
        self.depth = depth
        fan_in = n_in
        for i in range(depth):
            bound = torch_default_bound(fan_in)
            self._add_param(f"hidden{i}.weight", uniform_init(streams, f"init/hidden{i}/weight", (width, fan_in), bound))
            self._add_param(f"hidden{i}.bias", uniform_init(streams, f"init/hidden{i}/bias", (width,), bound))
            fan_in = width
        bound = torch_default_bound(fan_in)
        self._add_param("fc.weight", uniform_init(streams, "init/fc/weight", (n_classes, fan_in), bound))
        self._add_param("fc.bias", uniform_init(streams, "init/fc/bias", (n_classes,), bound))

    def forward(
        self, x: torch.Tensor, return_features: bool = False, return_activations: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """x ``[S, B, in]`` → logits ``[S, B, n_classes]`` (+ features ``[S, B, width]``, + activations)."""
        acts: dict[str, torch.Tensor] = {}
        h = x
        for i in range(self.depth):
            h = torch.relu(batched_linear(h, self.params[f"hidden{i}.weight"], self.params[f"hidden{i}.bias"]))
            acts[f"hidden{i}"] = h
        logits = batched_linear(h, self.params["fc.weight"], self.params["fc.bias"])
        extra: tuple[torch.Tensor | dict[str, torch.Tensor], ...] = ()
        if return_features:
            extra += (h,)
        if return_activations:
            extra += (acts,)
        return (logits, *extra) if extra else logits

    __call__ = forward
