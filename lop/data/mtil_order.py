"""The MTIL task order "Order I" (docs/protocols/moe_mtil.md), in a module that imports nothing.

`lop.data.mtil` (the data layer, numpy) and `lop.experiments.schemas` (parameter validation, which must
stay free of torch and numpy) both read it from here.
"""

from __future__ import annotations

#: the MTIL task order "Order I"
ORDER_I: tuple[str, ...] = (
    "aircraft",
    "caltech101",
    "cifar100",
    "dtd",
    "eurosat",
    "flowers",
    "food",
    "mnist",
    "pets",
    "cars",
    "sun397",
)
