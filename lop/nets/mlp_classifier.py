"""An autograd view of `lop.nets.mlp.BatchedMLP` for mini-batch learners.

`MLPClassifier` holds a `BatchedMLP` (same initialisation: the same `lop.rng` streams, bounds and
layer order) and makes its weights autograd leaves, so that `lop.problems.image_tasks.MinibatchLearner`
and the task-sequence learner can train it like the conv nets: ``net(x)`` gives logits
``[S, B, out]``, ``net(x, return_activations=True)`` also the post-activation hidden layers by name
(``layer1``, ``layer2``, ... — the names of `unit_layers`, so CBP and ReDo find them).

``output_init="zero"`` sets the output layer's weights and biases to zero after the usual draw (Zenke
et al.'s zero-initialised output layer): every logit is 0 at initialisation, the hidden layers are
unchanged, and the first steps train the output layer only (the hidden layers get no gradient while
the output weights are zero).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch

from lop.errors import CheckpointError
from lop.nets.mlp import BatchedMLP, InitKind, OutputGain
from lop.nets.units import UnitLayer
from lop.rng import RunStreams


class MLPClassifier:
    """Seed-batched MLP classifier ``sizes = [in, h1, ..., out]`` with autograd parameters."""

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str,
        streams: RunStreams,
        init: InitKind = "kaiming_uniform",
        output_gain: OutputGain = "activation",
        output_init: Literal["default", "zero"] = "default",
    ) -> None:
        if output_init not in ("default", "zero"):
            raise ValueError(f"output_init must be 'default' or 'zero', got {output_init!r}")
        self.mlp = BatchedMLP(sizes, activation, streams, init=init, output_gain=output_gain)
        self.output_init = output_init
        if output_init == "zero":
            with torch.no_grad():
                for t in self.mlp.parameters()[-2:]:  # the output layer's weight and bias
                    t.zero_()
        for t in self.mlp.parameters():
            t.requires_grad_(True)
        self.sizes = self.mlp.sizes

    def parameters(self) -> list[torch.Tensor]:
        """w0, b0, w1, b1, ... (the optimiser's order)."""
        return self.mlp.parameters()

    @property
    def weights(self) -> list[torch.Tensor]:
        return self.mlp.weights

    def forward(
        self, x: torch.Tensor, return_activations: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x ``[S, B, in]`` -> logits ``[S, B, out]`` (and ``{layer<l>: [S, B, width]}``)."""
        out, cache = self.mlp.forward(x.flatten(2))
        if not return_activations:
            return out
        return out, {f"layer{i + 1}": h for i, h in enumerate(cache.post)}

    __call__ = forward

    def unit_layers(self) -> list[UnitLayer]:
        return self.mlp.unit_layers()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"w{i}": t.detach() for i, t in enumerate(self.parameters())}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        own = {f"w{i}": t for i, t in enumerate(self.parameters())}
        if set(own) != set(state) or any(tuple(state[k].shape) != tuple(t.shape) for k, t in own.items()):
            raise CheckpointError(
                "network state does not match this architecture; resume with the same config or delete the checkpoint"
            )
        with torch.no_grad():
            for k, t in own.items():
                t.copy_(state[k])
