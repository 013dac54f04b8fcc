"""The summary table of `budgeted_cl`: every method against naive (uniform) replay at equal compute.

For each method and budget (``problem.budget_factor``) and each final accuracy (after the last step:
``stream_accuracy``, ``pretrain_accuracy``, ``seen_accuracy``), the table gives the method's mean over
seeds and the paired difference to the naive method of the same scenario (``naive`` for class-incremental
methods, ``naive_data`` for the ``*_data`` ones) at the same budget: mean ± standard error over the seeds
both have, s.e. = sd/√n (ddof 1). A method *beats* naive when the difference exceeds 2 s.e., is *worse*
when it is below −2 s.e., and *ties* otherwise, on the stream accuracy and on the accuracy over every seen
class. The last lines say whether any method beats naive: the paper's finding is that none does.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

BUDGET = "problem.budget_factor"
METRICS = ("stream_accuracy", "pretrain_accuracy", "seen_accuracy")


def _naive_of(method: str) -> str:
    return "naive_data" if method.endswith("_data") else "naive"


def final_values(agg: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, budget, seed) with each metric of `METRICS` at the run's last step."""
    df = agg[agg["metric"].isin(METRICS) & (agg["status"] == "complete")]
    last = df.loc[df.groupby(["method", "setting_id", "seed", "metric"])["step"].idxmax()]
    out = last.pivot_table(index=["method", BUDGET, "seed"], columns="metric", values="value").reset_index()
    return out


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan


def equal_compute_table(agg: pd.DataFrame) -> pd.DataFrame:
    """The table (module docstring) from an aggregate of `budgeted_cl` runs."""
    fv = final_values(agg)
    rows = []
    for (method, budget), g in fv.groupby(["method", BUDGET], sort=True):
        naive = fv[(fv["method"] == _naive_of(method)) & (fv[BUDGET] == budget)].set_index("seed")
        g = g.set_index("seed")
        row: dict[str, object] = {"method": method, "budget": float(budget), "seeds": len(g)}
        for m in METRICS:
            mean, se = _mean_se(g[m].to_numpy(float))
            row[f"{m}"] = mean
            row[f"{m}_se"] = se
            common = g.index.intersection(naive.index)
            if method == _naive_of(method) or len(common) == 0:
                d, dse = math.nan, math.nan
            else:
                d, dse = _mean_se((g.loc[common, m] - naive.loc[common, m]).to_numpy(float))
            row[f"delta_{m}"] = d
            row[f"delta_{m}_se"] = dse
        for col, m in (("vs_naive", "stream_accuracy"), ("vs_naive_seen", "seen_accuracy")):
            row[col] = _verdict(row[f"delta_{m}"], row[f"delta_{m}_se"], method == _naive_of(method))
        rows.append(row)
    return pd.DataFrame(rows)


def _verdict(d: object, dse: object, baseline: bool) -> str:
    if baseline:
        return "baseline"
    if not isinstance(d, float) or math.isnan(d):
        return ""
    band = 2 * (dse if isinstance(dse, float) and not math.isnan(dse) else 0.0)
    return "beats" if d > band else "worse" if d < -band else "ties"


def _pm(mean: float, se: float, scale: float = 100.0) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean * scale:+.1f} ± {se * scale:.1f}" if not math.isnan(se) else f"{mean * scale:+.1f}"


def markdown(table: pd.DataFrame, scale: str) -> str:
    """The table as Markdown (accuracies in %), with the verdict on the paper's finding."""
    lines = [
        f"# budgeted_cl ({scale}): every method vs naive uniform replay at equal compute",
        "",
        "Final accuracy after the last step (mean ± s.e. over seeds, %) and the paired difference to naive at",
        "the same budget; *beats*/*worse*: the stream-accuracy difference is beyond ±2 s.e.",
        "",
        "| method | budget | seeds | stream acc. | Δ stream vs naive | Δ pretrain vs naive | Δ seen vs naive | vs naive (stream) | vs naive (seen) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in table.iterrows():
        acc = "–" if math.isnan(r["stream_accuracy"]) else f"{100 * r['stream_accuracy']:.1f} ± {100 * r['stream_accuracy_se']:.1f}"
        lines.append(
            f"| {r['method']} | {r['budget']:g}× | {r['seeds']} | {acc} | "
            f"{_pm(r['delta_stream_accuracy'], r['delta_stream_accuracy_se'])} | "
            f"{_pm(r['delta_pretrain_accuracy'], r['delta_pretrain_accuracy_se'])} | "
            f"{_pm(r['delta_seen_accuracy'], r['delta_seen_accuracy_se'])} | {r['vs_naive']} | {r['vs_naive_seen']} |"
        )
    lines.append("")
    for col, what in (("vs_naive", "stream-class accuracy"), ("vs_naive_seen", "accuracy on all seen classes (stream + pretraining)")):
        beats = table[table[col] == "beats"]
        if beats.empty:
            lines.append(f"* On {what}, **naive uniform replay is not beaten** by any method at any budget.")
        else:
            which = ", ".join(f"{m} at {b:g}×" for m, b in zip(beats["method"], beats["budget"], strict=True))
            lines.append(f"* On {what}, naive uniform replay is beaten by: {which}.")
    return "\n".join(lines) + "\n"


def write_table(agg_path: str | Path, md: str | Path, csv: str | Path, scale: str) -> pd.DataFrame:
    """Read an aggregate, write the table as Markdown and CSV (atomically); returns it."""
    from lop.io import atomic_write

    table = equal_compute_table(pd.read_parquet(agg_path))
    atomic_write(Path(md), lambda p: Path(p).write_text(markdown(table, scale)))
    atomic_write(Path(csv), lambda p: table.to_csv(p, index=False))
    return table
