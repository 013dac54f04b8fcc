"""Paper figures from an aggregate table, as byte-reproducible PNG and PDF.

`panel_lines` turns the aggregate + a `PanelSpec` into per-line summaries (binned per seed, then
mean ± s.e. or bootstrap CI over seeds, `lop.analysis.stats`); `draw_figure` lays the panels out with
seaborn styling, the paper's reference values and, unless the figure was made at paper scale from real
data, a visible "<scale> scale — stand-in data" label. `save_figure` strips every date/version from the
PNG and PDF metadata so the same aggregate always gives the same bytes.
"""

from __future__ import annotations

import math
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from lop.analysis.registry import FigureSpec, LineSpec, PanelSpec, StyleSpec
from lop.analysis.stats import Summary, bin_steps, summarise
from lop.errors import DataError
from lop.io import atomic_write

PAPER_SCALE = "paper"
# No dates, no software versions: identical inputs -> identical bytes.
PDF_METADATA = {"Creator": None, "Producer": None, "CreationDate": None, "ModDate": None}
PNG_METADATA = {"Software": None}
MARKERS_BELOW = 12  # lines with this few points get markers (a single bin is otherwise invisible)
YLABEL_WRAP = 28  # characters per line of a y label (a longer one would run past a panel's height)
LEGEND_ONE_COLUMN = 6  # more lines than this: a two-column legend (fewer rows over the data)
REF_FONT_PT = 5.5  # reference-mark labels
HEADING_LINE_IN = 0.2  # height of one line of a figure's heading (title, band, note), in inches
REF_BOX_PAD = 0.05  # padding of a reference label's white box, in units of its font size
REF_LABEL_MARGIN_PT = 2.5  # clear space between two stacked reference labels' boxes
REF_LABEL_ZORDER = 3.0  # matplotlib's text level: above the data lines (2), below the legend (5)


@dataclass(frozen=True)
class Line:
    """A drawn line: its label, style and the summary over seeds."""

    label: str
    color: str | None
    linestyle: str
    x_scale: float
    summary: Summary
    n_seeds: int
    n_diverged: int


def _matches(value: object, wanted: object) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return wanted is None
    if isinstance(wanted, bool) or isinstance(value, bool | np.bool_):
        return bool(value) == wanted
    if isinstance(wanted, int | float):
        try:
            return math.isclose(float(value), float(wanted), rel_tol=1e-9, abs_tol=0.0)
        except (TypeError, ValueError):
            return False
    return str(value) == str(wanted)


def select_runs(table: pd.DataFrame, line: LineSpec, where: str) -> pd.DataFrame:
    """Rows of the runs a line selects (method, then ``setting_id``/``where`` on hyperparameter columns)."""
    rows = table[table["method"] == line.method]
    if line.setting_id is not None:
        rows = rows[rows["setting_id"] == line.setting_id]
    for key, wanted in line.where.items():
        if key not in rows.columns:
            if rows.empty:
                return rows
            raise DataError(f"{where}: line {line.label!r} selects on {key!r}, which no run of it has")
        mask = np.fromiter((_matches(v, wanted) for v in rows[key]), dtype=bool, count=len(rows))
        rows = rows[mask]
    return rows


def metric_rows(rows: pd.DataFrame, panel: PanelSpec) -> pd.DataFrame:
    """``seed, step, value`` of the panel's metric; a glob's matches are combined per seed and step."""
    names = [m for m in rows["metric"].unique() if panel.matches(str(m))]
    sel = rows[rows["metric"].isin(names)]
    out = sel.groupby(["seed", "step"], sort=True, as_index=False)["value"].agg(panel.combine)
    return out


def _binned(rows: pd.DataFrame, panel: PanelSpec, scale: str) -> pd.DataFrame:
    return bin_steps(metric_rows(rows, panel), panel.bin.width_for(scale), panel.bin.reduce, panel.bin.edge)


def panel_lines(
    table: pd.DataFrame, panel: PanelSpec, band: str, scale: str, where: str = "panel"
) -> tuple[list[Line], list[str]]:
    """Summaries of every line of a panel at `scale`, plus warnings for lines with no data at this scale."""
    specs = list(panel.lines_at(scale))
    if not panel.lines:
        methods = panel.methods or tuple(sorted(table["method"].unique()))
        pairs = table[table["method"].isin(methods)][["method", "setting_id"]].drop_duplicates()
        specs = [
            LineSpec(label=f"{m} {s}", method=m, setting_id=s)
            for m, s in sorted(pairs.itertuples(index=False, name=None))
        ]
    reference = None
    if panel.relative_to is not None:
        ref_rows = select_runs(table, panel.relative_to, where)
        reference = _binned(ref_rows, panel, scale) if not ref_rows.empty else None
    lines, missing = [], []
    for spec in specs:
        rows = select_runs(table, spec, where)
        binned = _binned(rows, panel, scale) if not rows.empty else None
        if binned is None or binned.empty:
            missing.append(
                f"{where}: no data for line {spec.label!r} (method {spec.method}) at {scale} scale"
            )
            continue
        if panel.relative_to is not None:
            if reference is None:
                missing.append(f"{where}: no data for the reference line {panel.relative_to.label!r}")
                continue
            paired = binned.merge(reference, on=["seed", "x"], suffixes=("", "_ref"))
            binned = paired.assign(value=paired["value"] / paired["value_ref"])[["seed", "x", "value"]]
        binned = binned.assign(value=binned["value"] * panel.y.scale)
        runs = rows[["setting_id", "seed", "status"]].drop_duplicates()
        lines.append(
            Line(
                label=spec.label,
                color=spec.color,
                linestyle=spec.linestyle,
                x_scale=spec.x_scale,
                summary=summarise(binned, band),  # type: ignore[arg-type]
                n_seeds=int(runs["seed"].nunique()),
                n_diverged=int((runs["status"] == "diverged").sum()),
            )
        )
    return lines, missing


def stand_in_label(table: pd.DataFrame, scale: str) -> str | None:
    """The watermark text, or None for paper-scale figures from real data."""
    stand_in = bool(table["stand_in"].fillna(False).any()) if "stand_in" in table.columns else False
    if scale == PAPER_SCALE and not stand_in:
        return None
    return f"{scale} scale — stand-in data"


def draw_figure(
    spec: FigureSpec, table: pd.DataFrame, scale: str, style: StyleSpec, figure_id: str = "figure"
) -> tuple[plt.Figure, list[str]]:
    """Draw every panel of a figure at `scale`; returns the figure and the warnings about missing lines.

    Panels and lines restricted to other scales are left out; titles are the scale's (`title_for`); a
    panel that still has no line says so in its centre.
    """
    sns.set_theme(
        style=style.theme, context=style.context, palette=style.palette, font_scale=style.font_scale
    )
    panels = spec.panels_at(scale)
    n = len(panels)
    ncols = min(spec.ncols, n)
    nrows = math.ceil(n / ncols)
    w, h = style.panel_size
    note = spec.notes.get(scale)
    band = {"se": "mean ± 1 s.e.", "bootstrap95": "mean, 95% bootstrap CI", "none": "mean"}[spec.band]
    width = max(30, int(11 * w * ncols))  # ~11 characters per inch
    head = f"{textwrap.fill(spec.title_for(scale), width=width)}\n({band} over seeds)"
    if note:
        head += "\n" + textwrap.fill(note, width=int(width * 1.25))
    # room for the heading: its lines at HEADING_LINE_IN each, so that a long note (a one-column figure
    # wraps it into many lines) takes height from the figure, not from the panels
    extra = 0.22 + HEADING_LINE_IN * (head.count("\n") + 1)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(w * ncols, h * nrows + extra), squeeze=False, dpi=style.dpi
    )
    palette = sns.color_palette(style.palette, 10)
    colors: dict[str, object] = {}
    warnings_out: list[str] = []
    for i, panel in enumerate(panels):
        ax = axes[i // ncols][i % ncols]
        if panel.kind != "lines":
            warnings_out += _draw_cl_panel(ax, table, panel, scale, palette, f"{figure_id}.panels[{i}]")
            continue
        lines, missing = panel_lines(table, panel, spec.band, scale, where=f"{figure_id}.panels[{i}]")
        warnings_out += missing
        for line in lines:
            s = line.summary
            x = s.x * line.x_scale * panel.x.scale
            if line.label not in colors:  # one colour per label across the figure's panels
                colors[line.label] = line.color or palette[len(colors) % len(palette)]
            color = colors[line.label]
            label = line.label + (f" ({line.n_diverged} diverged)" if line.n_diverged else "")
            marker = "o" if len(x) <= MARKERS_BELOW else None
            ax.plot(
                x,
                s.mean,
                color=color,
                linestyle=line.linestyle,
                linewidth=1.2,
                marker=marker,
                ms=3,
                label=label,
            )
            if spec.band != "none":
                ax.fill_between(x, s.lo, s.hi, color=color, alpha=style.band_alpha, linewidth=0)
        _draw_reference_lines(ax, panel, scale, colors)
        if not lines:
            ax.text(0.5, 0.5, f"no data at {scale} scale", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(textwrap.fill(panel.title_for(scale), width=max(24, int(12 * w))), fontsize="small")
        ax.set_xlabel(panel.x.label)
        ax.set_ylabel(textwrap.fill(panel.y.label, width=YLABEL_WRAP))
        if panel.x.log:
            ax.set_xscale("log")
        if panel.y.log:
            ax.set_yscale("log")
        if panel.y.lim is not None:
            ax.set_ylim(*panel.y.lim)
        if panel.x.lim is not None:
            ax.set_xlim(*panel.x.lim)
        handles = ax.get_legend_handles_labels()[0]
        loc = panel.legend or "best"
        if len(handles) > LEGEND_ONE_COLUMN:  # many lines: two compact columns on a light box, out of the way
            ax.legend(fontsize="xx-small", ncol=2, frameon=True, framealpha=0.85, edgecolor="none", loc=loc)
        elif handles:
            ax.legend(fontsize="x-small", frameon=False, loc=loc)
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    fig.suptitle(head, fontsize="medium")
    label = stand_in_label(table, scale)
    if label is not None:
        fig.text(0.995, 0.005, label, ha="right", va="bottom", fontsize="small", color="#b00000", alpha=0.85)
    fig.tight_layout(rect=(0, 0.03, 1, 1))  # the layout leaves room for the suptitle itself
    for i, panel in enumerate(panels):  # after the layout: label positions depend on the final axes size
        if panel.kind == "lines":  # bar panels mark the paper's values on their bars, with a legend entry
            _label_references(axes[i // ncols][i % ncols], panel, colors)
    return fig, warnings_out


def _draw_cl_panel(
    ax: plt.Axes, table: pd.DataFrame, panel: PanelSpec, scale: str, palette: list, where: str
) -> list[str]:
    """A ``matrix`` or ``bars`` panel (`lop.analysis.cl_panels`); returns warnings for missing lines."""
    from lop.analysis.cl_panels import draw_bars, draw_matrix

    specs = list(panel.lines) or [
        LineSpec(label=str(m), method=str(m)) for m in (panel.methods or sorted(table["method"].unique()))
    ]
    selections = [(spec, select_runs(table, spec, where)) for spec in specs]
    missing = [f"{where}: no data for line {s.label!r} (method {s.method}) at {scale} scale"
               for s, rows in selections if rows.empty]
    if panel.kind == "matrix":
        ok = draw_matrix(ax, selections[0][1], panel, specs[0])
        ax.set_xlabel(panel.x.label)
        ax.set_ylabel(panel.y.label)
    else:
        ok = draw_bars(ax, selections, panel, palette)
        ax.set_ylabel(panel.y.label)
        if panel.y.lim is not None:
            ax.set_ylim(*panel.y.lim)
    if not ok:
        ax.set_title(panel.title)
        ax.text(0.5, 0.5, f"no data at {scale} scale", ha="center", va="center", transform=ax.transAxes)
    return missing


def _draw_reference_lines(ax: plt.Axes, panel: PanelSpec, scale: str, colors: dict[str, object]) -> None:
    """The paper's values: dotted horizontal lines, plus (x, y) markers where the x axis is the paper's."""
    for ref in panel.reference:
        color = colors.get(ref.line, "0.3") if ref.line else "0.3"
        ax.axhline(ref.y, color=color, linestyle=":", linewidth=0.9, alpha=0.8)
        if ref.x is not None and scale == PAPER_SCALE:
            ax.plot([ref.x * panel.x.scale], [ref.y], marker="x", color=color, markersize=6, linestyle="none")


def reference_label_positions(
    ys: list[float], gap: float, low: float = 0.0, high: float = 1.0
) -> list[float]:
    """Label heights (axes fraction) near `ys` with at least `gap` between neighbours, inside [low, high].

    Greedy: sorted bottom-up, each label sits at max(its own y, the previous label + gap); if the stack
    then ends above `high`, it is pushed down as a whole (and, if it does not fit, spread evenly).
    Returned in the input order.
    """
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    pos: list[float] = []
    for i in order:
        y = min(max(ys[i], low), high)
        pos.append(y if not pos else max(y, pos[-1] + gap))
    if pos and pos[-1] > high:
        shift = pos[-1] - high
        pos = [p - shift for p in pos]
        for k in range(len(pos) - 2, -1, -1):  # keep the gaps, now going downwards
            pos[k] = min(pos[k], pos[k + 1] - gap)
        if pos[0] < low:  # too many labels for the height: spread them evenly
            step = (high - low) / max(1, len(pos) - 1)
            pos = [low + k * step for k in range(len(pos))]
    out = [0.0] * len(ys)
    for k, i in enumerate(order):
        out[i] = pos[k]
    return out


def reference_label_gap(ax: plt.Axes, labels: list[str]) -> float:
    """The height (axes fraction) a reference label of `ax` takes when stacked: the tallest of `labels`
    as rendered (ascenders, descenders, parentheses), its box padding and `REF_LABEL_MARGIN_PT`."""
    renderer = ax.figure.canvas.get_renderer()
    probe = ax.text(0.0, 0.0, "", fontsize=REF_FONT_PT, transform=ax.transAxes)
    text_px = 0.0
    for label in labels:
        probe.set_text(label)
        text_px = max(text_px, probe.get_window_extent(renderer).height)
    probe.remove()
    pt_px = ax.figure.dpi / 72.0
    box_px = text_px + 2.0 * REF_BOX_PAD * REF_FONT_PT * pt_px + REF_LABEL_MARGIN_PT * pt_px
    return box_px / max(ax.get_window_extent(renderer).height, 1.0)


def _label_references(ax: plt.Axes, panel: PanelSpec, colors: dict[str, object]) -> None:
    """Label the reference lines at the right edge, stacked so that no two labels overlap.

    Each label sits just above its dotted line; labels closer than their rendered height (tallest
    label with its box, plus a small margin: `reference_label_gap`) are moved apart and joined to their
    line by a thin tick.
    """
    refs = list(panel.reference)
    if not refs:
        return
    gap = reference_label_gap(ax, [r.label for r in refs])
    for _ in range(4):  # make head room above the highest reference for the stacked labels
        ax.get_ylim()  # applies any pending autoscaling, so that transData holds the final limits
        to_axes = ax.transData + ax.transAxes.inverted()
        ys = [float(to_axes.transform((0.0, r.y))[1]) for r in refs]
        pos = reference_label_positions([y + 0.01 for y in ys], gap, low=0.0, high=math.inf)
        over = max(pos) + gap - 1.0
        if over <= 0.0 or panel.y.lim is not None:
            break
        lo, hi = ax.get_ylim()
        if ax.get_yscale() == "log":
            ax.set_ylim(lo, hi * (hi / lo) ** (over + 0.02))
        else:
            ax.set_ylim(lo, hi + (over + 0.02) * (hi - lo))
    pos = reference_label_positions([y + 0.01 for y in ys], gap, low=0.0, high=1.0 - gap)
    # a pushed-up label's tick runs down past the labels below it: those are drawn on top, their boxes
    # over the tick
    rank = {k: r for r, k in enumerate(sorted(range(len(pos)), key=lambda k: -pos[k]))}
    for k, (ref, y, p) in enumerate(zip(refs, ys, pos, strict=True)):
        color = colors.get(ref.line, "0.3") if ref.line else "0.3"
        ax.annotate(
            ref.label,
            xy=(1.0, min(max(y, 0.0), 1.0)),
            xycoords="axes fraction",
            xytext=(0.995, p),
            textcoords="axes fraction",
            ha="right",
            va="bottom",
            fontsize=REF_FONT_PT,
            color=color,
            bbox={
                "boxstyle": f"square,pad={REF_BOX_PAD}",
                "facecolor": "white",
                "edgecolor": "none",
                "alpha": 0.75,
            },
            arrowprops=None if abs(p - y - 0.01) < 1e-9 else {"arrowstyle": "-", "color": color, "lw": 0.4},
            zorder=REF_LABEL_ZORDER + rank[k] / len(pos),  # stays below the legend
        )


def save_figure(fig: plt.Figure, png: str | Path, pdf: str | Path) -> None:
    """Write PNG and PDF atomically with dates and versions stripped (byte-stable)."""
    atomic_write(Path(png), lambda tmp: fig.savefig(tmp, format="png", metadata=PNG_METADATA))
    atomic_write(Path(pdf), lambda tmp: fig.savefig(tmp, format="pdf", metadata=PDF_METADATA))
    plt.close(fig)


def make_figure(
    spec: FigureSpec,
    table: pd.DataFrame,
    scale: str,
    style: StyleSpec,
    png: str | Path,
    pdf: str | Path,
    figure_id: str = "figure",
) -> list[str]:
    """Draw and save one figure; returns warnings (lines with no data at this scale)."""
    if table.empty:
        raise DataError(f"{figure_id}: the aggregate of {spec.experiment} is empty")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # tight_layout on tiny test figures
        fig, out = draw_figure(spec, table, scale, style, figure_id)
        save_figure(fig, png, pdf)
    return out
