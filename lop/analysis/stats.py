"""Summary statistics over seeds for the figures (docs/protocols/README.md).

* Supervised figures: mean ± 1 standard error over seeds, ddof = 1.
* RL figures: mean with a 95% percentile-bootstrap confidence interval over seeds, resampled with a
  FIXED seed through `lop.rng` (never an unseeded bootstrap), so a figure is byte-stable.

Everything works on a "wide" array ``[n_seeds, n_x]`` (one row per seed, NaN where a seed has no
value, e.g. after it diverged); statistics at each x use the seeds present there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from lop.errors import ConfigError
from lop.rng import RunStreams

Reduce = Literal["mean", "max", "min", "last"]
Band = Literal["se", "bootstrap95", "none"]
BOOTSTRAP_SEED = 0
BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class Summary:
    """Per-x statistics of one line: centre, band bounds and the number of seeds present."""

    x: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n: np.ndarray


def bin_steps(
    df: pd.DataFrame, width: int | None, reduce: Reduce = "mean", edge: Literal["left", "right"] = "left"
) -> pd.DataFrame:
    """Reduce each seed's ``(step, value)`` rows within bins of ``width`` steps.

    Bin ``b`` is plotted at its end ``(b+1)·width`` (the paper's "binned over 50 tasks" x-axis) and holds
    steps ``[b·width, (b+1)·width)`` when steps are 0-based indices (``edge="left"``: task, epoch) or
    ``(b·width, (b+1)·width]`` when they are counts (``edge="right"``: examples or env steps seen so far).
    ``width=None`` keeps the steps as they are. Returns columns ``seed, x, value`` sorted by seed then x.
    """
    if reduce not in ("mean", "max", "min", "last"):
        raise ConfigError("bin.reduce", f"unknown reduction {reduce!r}; use mean, max, min or last")
    d = df[["seed", "step", "value"]].sort_values(["seed", "step"], kind="stable")
    if width is None:
        out = d.rename(columns={"step": "x"})
        return out.groupby(["seed", "x"], sort=True, as_index=False)["value"].agg(reduce)
    if width <= 0:
        raise ConfigError("bin.width", f"must be a positive number of steps, got {width}")
    step = d["step"].to_numpy()
    x = (step // width + 1) * width if edge == "left" else ((step - 1) // width + 1) * width
    d = d.assign(x=x)
    return d.groupby(["seed", "x"], sort=True, as_index=False)["value"].agg(reduce)


def to_wide(binned: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``seed, x, value`` rows -> (seeds, xs, values ``[n_seeds, n_x]`` with NaN for missing)."""
    table = binned.pivot(index="seed", columns="x", values="value").sort_index().sort_index(axis=1)
    return table.index.to_numpy(), table.columns.to_numpy(), table.to_numpy(dtype=np.float64)


def mean_se(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean and mean ± 1 s.e. (ddof=1) over axis 0, ignoring NaN; s.e. is 0 with a single seed."""
    n = np.sum(np.isfinite(values), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(values, axis=0) / np.where(n > 0, n, np.nan)
        dev = np.where(np.isfinite(values), values - mean, 0.0)
        var = np.sum(dev**2, axis=0) / np.where(n > 1, n - 1, np.nan)
        se = np.where(n > 1, np.sqrt(var) / np.sqrt(np.maximum(n, 1)), 0.0)
    return mean, mean - se, mean + se, n


def bootstrap_ci(
    values: np.ndarray,
    level: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    stream: str = "figures/bootstrap",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean and a percentile-bootstrap CI over seeds (axis 0), resampling seeds with replacement.

    The resampling indices come from `lop.rng.RunStreams([seed])`, so the interval is a pure function of
    the input values (and of ``seed``/``stream``).
    """
    n_seeds = values.shape[0]
    mean, _, _, n = mean_se(values)
    if n_seeds < 2:
        return mean, mean.copy(), mean.copy(), n
    idx = RunStreams([seed]).randint(stream, n_seeds, (resamples, n_seeds), n_seeds)[0].numpy()
    finite = np.isfinite(values)
    vals = np.where(finite, values, 0.0)
    sums = vals[idx].sum(axis=1)  # [resamples, n_x]
    counts = finite[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = sums / np.where(counts > 0, counts, np.nan)
        tail = (1.0 - level) / 2.0
        lo = np.nanquantile(boot, tail, axis=0)
        hi = np.nanquantile(boot, 1.0 - tail, axis=0)
    single = n <= 1
    return mean, np.where(single, mean, lo), np.where(single, mean, hi), n


def summarise(binned: pd.DataFrame, band: Band) -> Summary:
    """Mean and band over seeds of binned ``seed, x, value`` rows."""
    _, xs, wide = to_wide(binned)
    if band == "bootstrap95":
        mean, lo, hi, n = bootstrap_ci(wide)
    elif band in ("se", "none"):
        mean, lo, hi, n = mean_se(wide)
        if band == "none":
            lo, hi = mean, mean
    else:
        raise ConfigError("band", f"unknown band {band!r}; use se, bootstrap95 or none")
    return Summary(x=xs, mean=mean, lo=lo, hi=hi, n=n)


def finite_mean_se(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard error s/√n (ddof = 1; 0 for one value) of the finite values; NaN for none."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else 0.0
