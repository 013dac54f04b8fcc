"""Description of a layer of replaceable units, shared by every network and by CBP/ReDo.

A *unit* is a hidden neuron (linear layer) or channel (conv layer). Networks describe each hidden
layer as a `UnitLayer` whose tensors are *views* of the network's parameters, with the unit axis at
a fixed position, so CBP (`lop.algos.cbp`) and ReDo can reinitialise units in place without knowing
the architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch


@dataclass
class UnitLayer:
    """One hidden layer of replaceable units (docs/protocols/cbp.md).

    in_weight:  ``[S, n, *fan_in_dims]`` — row ``i`` holds unit i's incoming weights
                (linear ``[S, n, in]``; conv ``[S, n, in, kh, kw]``).
    in_bias:    ``[S, n]`` or None.
    out_weight: ``[S, m, n, *rest]`` — a view of the next layer's weight with the unit axis at dim 2
                (linear→linear ``[S, m, n]``; conv→conv ``[S, m, n, kh, kw]``; conv→flatten→linear
                ``weight.view(S, m, n, H*W)``, so a channel owns its H·W columns).
    out_bias:   ``[S, m]`` next layer's bias (for CBP's optional bias correction) or None.
    init:       how incoming weights are redrawn: ``("uniform", bound)`` or ``("normal", std)``.
    bn:         optional BatchNorm tensors of the unit's channel ``[S, n]``: keys weight, bias,
                running_mean, running_var (reset to 1, 0, 0, 1 when a unit is replaced).
    """

    name: str
    in_weight: torch.Tensor
    in_bias: torch.Tensor | None
    out_weight: torch.Tensor
    out_bias: torch.Tensor | None
    init: tuple[Literal["uniform", "normal"], float]
    bn: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def n_units(self) -> int:
        return self.in_weight.shape[1]

    @property
    def fan_in_shape(self) -> tuple[int, ...]:
        return tuple(self.in_weight.shape[2:])
