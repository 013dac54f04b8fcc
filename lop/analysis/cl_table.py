"""The forgetting-and-plasticity table: every method of a task-sequence experiment with its forgetting
summaries and its plasticity measures side by side, on the same runs (``lop cl-table``).

One row per (experiment, method, setting); every cell is the mean ± 1 s.e. over seeds of a per-run value:

* forgetting: ``acc``, ``bwt``, ``fwt``, ``forgetting``, ``avg_incremental_acc`` (`lop.cl_metrics`, from
  the run's accuracy matrix);
* plasticity: ``learn_first`` and ``learn_last``, the accuracy on a task right after training it,
  R[i, i], averaged over the first and the last ``max(1, T // 10)`` tasks (a method that loses
  plasticity learns the late tasks worse than the early ones), and the probes after the last task:
  ``dead_units``, ``dormant_units``, ``effective_rank``, ``stable_rank`` (each the mean over the hidden
  layers) and ``weight_magnitude``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lop import cl_metrics
from lop.analysis.stats import finite_mean_se as mean_se
from lop.io import atomic_write

FORGETTING = cl_metrics.SUMMARY_METRICS
PLASTICITY = (
    "learn_first",
    "learn_last",
    "dead_units",
    "dormant_units",
    "effective_rank",
    "stable_rank",
    "weight_magnitude",
)
PROBES = ("dead_units", "dormant_units", "effective_rank", "stable_rank")


def run_values(rows: pd.DataFrame) -> dict[str, float]:
    """Every table value of one run (its tidy ``step, metric, value`` rows)."""
    r = cl_metrics.accuracy_matrix(rows[["step", "metric", "value"]].itertuples(index=False, name=None))
    t = r.shape[1]
    out: dict[str, float] = {k: float(v) for k, v in cl_metrics.summaries(r).items()}
    diag = np.array([r[i, i - 1] for i in range(1, t + 1)])
    k = max(1, t // 10)
    out["learn_first"], out["learn_last"] = float(np.mean(diag[:k])), float(np.mean(diag[-k:]))
    last = rows[rows["step"] == rows["step"].max()]
    for name in PROBES:
        sel = last[last["metric"].str.startswith(f"{name}/")]
        out[name] = float(sel["value"].mean()) if len(sel) else math.nan
    wm = last[last["metric"] == "weight_magnitude"]
    out["weight_magnitude"] = float(wm["value"].iloc[0]) if len(wm) else math.nan
    return out


def table_rows(tables: Mapping[str, pd.DataFrame]) -> list[dict[str, Any]]:
    """One row per experiment, method and setting with ``<value>`` (mean) and ``<value>_se`` columns."""
    out = []
    for experiment, table in sorted(tables.items()):
        if table.empty or not table["metric"].str.startswith("test_accuracy/task_").any():
            continue
        for (method, setting), runs in table.groupby(["method", "setting_id"], sort=True):
            per_run = [run_values(g) for _, g in runs.groupby("seed", sort=True)]
            row: dict[str, Any] = {
                "experiment": experiment,
                "method": method,
                "setting": setting,
                "seeds": len(per_run),
            }
            for name in FORGETTING + PLASTICITY:
                m, se = mean_se(np.array([v[name] for v in per_run], dtype=float))
                row[name], row[f"{name}_se"] = m, se
            out.append(row)
    return out


def _cell(row: Mapping[str, Any], name: str) -> str:
    m, se = row[name], row[f"{name}_se"]
    if not math.isfinite(m):
        return "—"
    return f"{m:.3g} ± {se:.2g}" if math.isfinite(se) else f"{m:.3g}"


def table_markdown(rows: list[dict[str, Any]], scale: str) -> str:
    """The table as markdown, one section per experiment."""
    head = ["method", "setting", "seeds", *FORGETTING, *PLASTICITY]
    out = [
        f"# Forgetting and plasticity, side by side ({scale} scale)",
        "",
        "Mean ± 1 s.e. over seeds. Forgetting: ACC, BWT, FWT, Chaudhry's forgetting and the average incremental "
        "accuracy from each run's accuracy matrix. Plasticity: accuracy on a task right after training it, "
        "averaged over the first and the last tenth of the tasks (`learn_first`, `learn_last`), and the probes "
        "after the last task (fractions of dead and dormant units, effective and stable rank, all averaged over "
        "the hidden layers; mean |θ|).",
    ]
    for experiment in sorted({r["experiment"] for r in rows}):
        out += ["", f"## {experiment}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in (r for r in rows if r["experiment"] == experiment):
            cells = [r["method"], r["setting"], str(r["seeds"])] + [
                _cell(r, n) for n in FORGETTING + PLASTICITY
            ]
            out.append("| " + " | ".join(cells) + " |")
    if not rows:
        out += ["", "No task-sequence aggregate was given."]
    return "\n".join(out) + "\n"


def write_table(rows: list[dict[str, Any]], scale: str, md: Path, csv: Path) -> None:
    frame = pd.DataFrame(rows)
    atomic_write(
        Path(csv), lambda tmp: tmp.write_bytes(frame.to_csv(index=False, float_format="%.6g").encode())
    )
    atomic_write(Path(md), lambda tmp: tmp.write_bytes(table_markdown(rows, scale).encode()))


def cmd_cl_table(args) -> int:
    from lop.analysis.compare import _read_aggregates

    rows = table_rows(_read_aggregates(args.agg))
    write_table(rows, args.scale, Path(args.md), Path(args.csv))
    print(f"{args.md}: {len(rows)} method setting(s)")
    return 0
