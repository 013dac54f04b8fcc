"""Slippery Ant's friction sequence (docs/protocols/ppo.md): log-uniform draws that depend only on the run seed."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lop.rng import RunStreams

FRICTION_STREAM = "friction"


def friction_values(seeds: Sequence[int], index: int, low: float, high: float) -> torch.Tensor:
    """``[S]`` float64: friction number ``index`` of each run, log-uniform on [low, high).

    f = exp(log low + u (log high - log low)), u ~ U[0, 1) from stream ``"friction"`` at
    counter ``index`` (index 0 is the friction of the first episodes).
    """
    u = RunStreams(seeds).uniform(FRICTION_STREAM, index, (1,), dtype=torch.float64)[:, 0]
    log_low = math.log(low)
    return torch.exp(log_low + u * (math.log(high) - log_low))


def friction_value(seed: int, index: int, low: float, high: float) -> float:
    """Friction number ``index`` of one run (row of `friction_values`)."""
    return float(friction_values([seed], index, low, high)[0])
