"""Panels of the task-sequence experiments: accuracy-matrix heatmaps and per-method bars.

* ``kind: matrix`` — the mean over seeds of the accuracy matrix R[i, j] (`lop.cl_metrics.accuracy_matrix`
  of each run's ``test_accuracy/task_<j>`` rows; row 0 = before training) of the panel's one line, as a
  heatmap with the values written in the cells when the matrix is small.
* ``kind: bars`` — per line, the mean over seeds of the metric's last value (e.g. ``acc`` at step T),
  with ± 1 s.e. error bars; a reference mark whose ``line`` names a bar is drawn on that bar as a cross,
  labelled "(paper)".
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from lop import cl_metrics
from lop.analysis.registry import LineSpec, PanelSpec
from lop.analysis.stats import finite_mean_se as mean_se

ANNOTATE_UP_TO = 12  # write the values into the cells of matrices with at most this many tasks


def seed_matrices(rows: pd.DataFrame) -> np.ndarray:
    """``[n_seeds, T + 1, T]`` accuracy matrices of the selected runs' rows (one run per seed)."""
    mats = []
    n_tasks = None
    for _, g in rows.groupby(["setting_id", "seed"], sort=True):
        r = cl_metrics.accuracy_matrix(g[["step", "metric", "value"]].itertuples(index=False, name=None))
        n_tasks = r.shape[1] if n_tasks is None else n_tasks
        if r.shape[1] == n_tasks:
            mats.append(r)
    return np.stack(mats) if mats else np.empty((0, 1, 1))


def last_values(rows: pd.DataFrame, metric: str) -> np.ndarray:
    """The metric's value at its last step, one per run (setting, seed)."""
    sel = rows[rows["metric"] == metric].sort_values("step", kind="stable")
    return sel.groupby(["setting_id", "seed"], sort=True)["value"].last().to_numpy(dtype=float)


def draw_matrix(ax: plt.Axes, rows: pd.DataFrame, panel: PanelSpec, line: LineSpec) -> bool:
    """Heatmap of the mean accuracy matrix; False when the line has no task-sequence runs."""
    mats = seed_matrices(rows) if not rows.empty else np.empty((0, 1, 1))
    if mats.shape[0] == 0:
        return False
    with np.errstate(all="ignore"):
        mean = np.nanmean(mats, axis=0) * panel.y.scale
    top = 100.0 if panel.y.scale == 100 else 1.0
    t = mean.shape[1]
    im = ax.imshow(mean, vmin=0.0, vmax=top, cmap="viridis", aspect="auto", interpolation="nearest")
    bar = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("test accuracy" + (" (%)" if top == 100 else ""), fontsize="x-small")
    if t <= ANNOTATE_UP_TO:
        for i in range(t + 1):
            for j in range(t):
                v = mean[i, j]
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.0f}" if top == 100 else f"{v:.2f}", ha="center", va="center",
                            fontsize=5, color="white" if v < 0.6 * top else "black")
    ticks = np.arange(t) if t <= ANNOTATE_UP_TO else np.linspace(0, t - 1, 5).round().astype(int)
    ax.set_xticks(ticks, [str(j + 1) for j in ticks])
    yt = np.arange(t + 1) if t <= ANNOTATE_UP_TO else np.linspace(0, t, 5).round().astype(int)
    ax.set_yticks(yt, [str(i) for i in yt])
    ax.set_title(f"{line.label}: {t} tasks, {mats.shape[0]} seeds")
    return True


def draw_bars(
    ax: plt.Axes, selections: list[tuple[LineSpec, pd.DataFrame]], panel: PanelSpec, colors: list[object]
) -> bool:
    """One bar per line (mean ± s.e. of the metric's last value); paper references as crosses."""
    labels, means, errs = [], [], []
    for spec, rows in selections:
        m, se = mean_se(last_values(rows, panel.metric)) if not rows.empty else (math.nan, math.nan)
        labels.append(spec.label)
        means.append(m * panel.y.scale)
        errs.append(se * panel.y.scale)
    if not np.isfinite(means).any():
        return False
    x = np.arange(len(labels))
    if len(labels) > len(colors):  # one distinct colour per bar
        colors = list(sns.color_palette("husl", len(labels)))
    ax.bar(x, np.nan_to_num(means), yerr=np.nan_to_num(errs), color=[colors[i] for i in x], capsize=2, width=0.7)
    ax.axhline(0.0, color="0.3", linewidth=0.6)
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize="x-small")
    marked = False
    for ref in panel.reference:
        if ref.line in labels:
            ax.plot([labels.index(ref.line)], [ref.y], marker="x", color="black", markersize=6,
                    linestyle="none", label=None if marked else "(paper)")
            marked = True
        else:
            ax.axhline(ref.y, color="0.3", linestyle=":", linewidth=0.9)
    if marked:
        # above the axes' right corner: inside, it would cover a bar
        ax.legend(fontsize="x-small", frameon=False, loc="lower right", bbox_to_anchor=(1.0, 1.0), borderaxespad=0.1)
    steps = [rows.loc[rows["metric"] == panel.metric, "step"].max() for _, rows in selections if not rows.empty]
    seeds = [rows["seed"].nunique() for _, rows in selections if not rows.empty]
    ax.set_title(f"{panel.title}\n{int(max(steps))} tasks, {min(seeds)}–{max(seeds)} seeds" if min(seeds) != max(seeds)
                 else f"{panel.title}\n{int(max(steps))} tasks, {seeds[0]} seeds", fontsize="small")
    return True
