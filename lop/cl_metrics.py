"""Forgetting metrics of continual learning, computed from an accuracy matrix.

The accuracy matrix of a run over ``T`` tasks is ``R`` with shape ``[T + 1, T]``:

* row ``0`` holds the accuracy on every task *before any training* (random initialisation), the
  baseline ``b_j`` of forward transfer;
* row ``i`` (``1 ≤ i ≤ T``) holds the accuracy on every task after training tasks ``1..i``.

Columns are tasks, 0-based in the array (column ``c`` is task ``c + 1``). Entries that were not
measured are NaN; a metric that needs one of them is NaN. The definitions (docs/protocols/metrics.md,
"Forgetting metrics"), with tasks numbered 1..T and ``R[i, j]`` = accuracy on task ``j`` after task ``i``:

* ``acc`` = (1/T) Σ_j R[T, j]                                   (Lopez-Paz & Ranzato 2017, "ACC");
* ``bwt`` = 1/(T−1) Σ_{j<T} (R[T, j] − R[j, j])                 (backward transfer; negative = forgetting);
* ``fwt`` = 1/(T−1) Σ_{j≥2} (R[j−1, j] − b_j), b_j = R[0, j]    (forward transfer against random init);
* ``forgetting`` = 1/(T−1) Σ_{j<T} (max_{l ∈ [j, T−1]} R[l, j] − R[T, j])   (Chaudhry et al. 2018, F_T);
* ``avg_incremental_acc`` = (1/T) Σ_{k=1..T} A_k, A_k = (1/k) Σ_{j≤k} R[k, j]  (A_1 included).

The multi-domain task-incremental (MTIL) summaries of Zheng et al. 2023 (ZSCL), used by MoE adapters
(docs/protocols/moe_mtil.md), read the whole square ``R[1..T, 1..T]``, tasks not yet trained included:

* ``mtil_transfer`` = 1/(T−1) Σ_{j≥2} (1/(j−1)) Σ_{i<j} R[i, j]   (each task before it is trained,
  after every earlier step; the zero-shot row 0 is not used);
* ``mtil_avg`` = (1/T²) Σ_{i, j} R[i, j]                            (every task after every step);
* ``mtil_last`` = (1/T) Σ_j R[T, j]                                 (= ``acc``).

All functions take one matrix ``[T + 1, T]`` or a batch ``[S, T + 1, T]`` and return a float or an
``[S]`` array (float64).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import numpy as np

__all__ = [
    "SUMMARY_METRICS",
    "acc",
    "accuracy_matrix",
    "avg_incremental_acc",
    "bwt",
    "forgetting",
    "fwt",
    "mtil_avg",
    "mtil_last",
    "mtil_summaries",
    "mtil_transfer",
    "summaries",
    "task_metric",
]

#: the metric-name prefix of one column of the accuracy matrix in a tidy metrics table
TASK_METRIC = "test_accuracy/task_{j}"
_TASK_RE = re.compile(r"^test_accuracy/task_(\d+)$")

#: summary names written by :func:`summaries`, in order
SUMMARY_METRICS = ("acc", "bwt", "fwt", "forgetting", "avg_incremental_acc")
#: summary names written by :func:`mtil_summaries`, in order
MTIL_METRICS = ("mtil_transfer", "mtil_avg", "mtil_last")


def task_metric(j: int) -> str:
    """Metric name of task ``j`` (1-based) in a tidy table: ``test_accuracy/task_<j>``."""
    if j < 1:
        raise ValueError(f"task numbers start at 1, got {j}")
    return TASK_METRIC.format(j=j)


def _as_batch(r: np.ndarray) -> tuple[np.ndarray, bool]:
    arr = np.asarray(r, dtype=np.float64)
    single = arr.ndim == 2
    if single:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2] + 1 or arr.shape[2] < 1:
        raise ValueError(f"an accuracy matrix has shape [T+1, T] (or [S, T+1, T]); got {np.shape(r)}")
    return arr, single


def _out(values: np.ndarray, single: bool) -> float | np.ndarray:
    return float(values[0]) if single else values


def acc(r: np.ndarray) -> float | np.ndarray:
    """Average accuracy after the last task: (1/T) Σ_j R[T, j]."""
    arr, single = _as_batch(r)
    return _out(arr[:, -1, :].mean(axis=1), single)


def bwt(r: np.ndarray) -> float | np.ndarray:
    """Backward transfer: 1/(T−1) Σ_{j<T} (R[T, j] − R[j, j]); NaN for T = 1."""
    arr, single = _as_batch(r)
    t = arr.shape[2]
    if t < 2:
        return _out(np.full(arr.shape[0], np.nan), single)
    cols = np.arange(t - 1)
    just_trained = arr[:, cols + 1, cols]  # R[j, j] in 1-based task numbers
    return _out((arr[:, -1, : t - 1] - just_trained).mean(axis=1), single)


def fwt(r: np.ndarray) -> float | np.ndarray:
    """Forward transfer: 1/(T−1) Σ_{j≥2} (R[j−1, j] − R[0, j]); NaN for T = 1."""
    arr, single = _as_batch(r)
    t = arr.shape[2]
    if t < 2:
        return _out(np.full(arr.shape[0], np.nan), single)
    cols = np.arange(1, t)
    before = arr[:, cols, cols]  # accuracy on task j after tasks 1..j-1 (row j-1, column j-1 0-based)
    baseline = arr[:, 0, cols]
    return _out((before - baseline).mean(axis=1), single)


def forgetting(r: np.ndarray) -> float | np.ndarray:
    """Chaudhry's average forgetting after the last task.

    F_T = 1/(T−1) Σ_{j<T} f_j, f_j = max_{l ∈ [j, T−1]} R[l, j] − R[T, j]: the drop from the best
    accuracy a task reached after it was trained to its final accuracy. NaN for T = 1.
    """
    arr, single = _as_batch(r)
    t = arr.shape[2]
    if t < 2:
        return _out(np.full(arr.shape[0], np.nan), single)
    rows = np.arange(t + 1)[:, None]
    cols = np.arange(t)[None, :]
    # rows l = j .. T-1 (1-based) of column j: array rows c+1 .. t-1 of column c
    window = (rows >= cols + 1) & (rows <= t - 1)
    masked = np.where(window[None], arr, -np.inf)
    best = masked.max(axis=1)[:, : t - 1]
    return _out((best - arr[:, -1, : t - 1]).mean(axis=1), single)


def avg_incremental_acc(r: np.ndarray) -> float | np.ndarray:
    """Average incremental accuracy: (1/T) Σ_{k=1..T} A_k with A_k = (1/k) Σ_{j≤k} R[k, j]."""
    arr, single = _as_batch(r)
    t = arr.shape[2]
    rows = np.arange(1, t + 1)[:, None]
    cols = np.arange(t)[None, :]
    seen = (cols < rows).astype(np.float64)  # [T, T]: tasks 1..k for row k
    a_k = (arr[:, 1:, :] * seen[None]).sum(axis=2) / seen.sum(axis=1)[None]
    return _out(a_k.mean(axis=1), single)


def mtil_transfer(r: np.ndarray) -> float | np.ndarray:
    """MTIL "Transfer": 1/(T−1) Σ_{j≥2} mean_{1≤i<j} R[i, j] (upper triangle, row 0 excluded); NaN for T = 1."""
    arr, single = _as_batch(r)
    t = arr.shape[2]
    if t < 2:
        return _out(np.full(arr.shape[0], np.nan), single)
    rows = np.arange(1, t + 1)[:, None]  # array rows 1..T = steps i
    cols = np.arange(1, t + 1)[None, :]  # tasks j (1-based)
    upper = (rows < cols).astype(np.float64)  # [T, T]: i < j
    per_task = (np.where(upper[None] > 0, arr[:, 1:, :], 0.0)).sum(axis=1)[:, 1:] / upper.sum(axis=0)[
        None, 1:
    ]
    return _out(per_task.mean(axis=1), single)


def mtil_avg(r: np.ndarray) -> float | np.ndarray:
    """MTIL "Avg": the mean of R[i, j] over every step i = 1..T and task j = 1..T."""
    arr, single = _as_batch(r)
    return _out(arr[:, 1:, :].mean(axis=(1, 2)), single)


def mtil_last(r: np.ndarray) -> float | np.ndarray:
    """MTIL "Last": (1/T) Σ_j R[T, j], the accuracy on every task after the last step."""
    return acc(r)


def mtil_summaries(r: np.ndarray) -> dict[str, float | np.ndarray]:
    """All of :data:`MTIL_METRICS` for one matrix or a batch."""
    return {"mtil_transfer": mtil_transfer(r), "mtil_avg": mtil_avg(r), "mtil_last": mtil_last(r)}


def summaries(r: np.ndarray) -> dict[str, float | np.ndarray]:
    """All of :data:`SUMMARY_METRICS` for one matrix or a batch."""
    return {
        "acc": acc(r),
        "bwt": bwt(r),
        "fwt": fwt(r),
        "forgetting": forgetting(r),
        "avg_incremental_acc": avg_incremental_acc(r),
    }


def accuracy_matrix(
    rows: Iterable[tuple[int, str, float]] | Mapping[tuple[int, str], float], n_tasks: int | None = None
) -> np.ndarray:
    """Build ``R`` ``[T + 1, T]`` from tidy ``(step, metric, value)`` rows.

    ``step`` is the number of tasks trained (0 = before training) and ``metric`` is
    ``test_accuracy/task_<j>``; other metrics are ignored. Missing entries are NaN. ``T`` is
    ``n_tasks`` or the largest task number present.
    """
    items = list(rows.items()) if isinstance(rows, Mapping) else [((s, m), v) for s, m, v in rows]
    cells: dict[tuple[int, int], float] = {}
    for (step, metric), value in items:
        match = _TASK_RE.match(str(metric))
        if match is None:
            continue
        cells[(int(step), int(match.group(1)))] = float(value)
    t = n_tasks if n_tasks is not None else max((j for _, j in cells), default=0)
    if t < 1:
        raise ValueError("no test_accuracy/task_<j> rows: not a task-sequence run")
    out = np.full((t + 1, t), np.nan)
    for (step, j), value in cells.items():
        if 0 <= step <= t and 1 <= j <= t:
            out[step, j - 1] = value
    return out
