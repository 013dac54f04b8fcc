"""Ours vs the paper, and small per-experiment summaries for DVC (metrics JSON, plot CSVs).

* `comparison_rows`: every published value of the figure registry (`reference:` of a panel, see
  params/figures.yaml) next to our value of the line it belongs to, at the paper's x (the nearest bin) or,
  when our runs are shorter (smoke/demo), at our last bin — the table says which x it used.
* `experiment_metrics`: per figure, panel and line, our value at the last bin (`dvc metrics show`).
* `plot_table`: a figure's first panel as a wide table, one column per line (`dvc plots show`).

The numbers come from the same code as the figures (`lop.analysis.figures.panel_lines`): binning, the
reduction per seed, the y scale, and the band (mean ± s.e. or the seeded 95 % bootstrap interval).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lop.analysis.registry import FigureSpec, PanelSpec, Registry
from lop.io import atomic_write

# the figure code (matplotlib, seaborn) is imported when a table is made, not by the CLI parser
if TYPE_CHECKING:
    from lop.analysis.figures import Line

COLUMNS = [
    "figure",
    "paper_figure",
    "panel",
    "reference",
    "line",
    "paper_x",
    "paper_value",
    "ours_x",
    "ours_mean",
    "ours_lo",
    "ours_hi",
    "band",
    "seeds",
    "difference",
    "scale",
    "data",
]


def _lines(spec: FigureSpec, panel: PanelSpec, table: pd.DataFrame, scale: str) -> dict[str, Line]:
    from lop.analysis.figures import panel_lines

    lines, _ = panel_lines(table, panel, spec.band, scale)
    return {ln.label: ln for ln in lines}


def _at(line: Line, x: float | None) -> tuple[float, float, float, float] | None:
    """(x, mean, lo, hi) of a line at the bin nearest ``x`` (in the panel's units), else its last bin."""
    s = line.summary
    xs = np.asarray(s.x, dtype=float) * line.x_scale
    ok = np.isfinite(np.asarray(s.mean, dtype=float))
    if not ok.any():
        return None
    idx = np.flatnonzero(ok)
    if x is not None and xs[idx].min() <= x <= xs[idx].max() * 1.0001:
        i = idx[np.argmin(np.abs(xs[idx] - x))]
    else:
        i = idx[-1]
    return float(xs[i]), float(s.mean[i]), float(s.lo[i]), float(s.hi[i])


def comparison_rows(
    registry: Registry, tables: Mapping[str, pd.DataFrame], scale: str
) -> list[dict[str, Any]]:
    """One row per published value of every figure whose experiment has an aggregate in ``tables``."""
    from lop.analysis.figures import stand_in_label

    rows = []
    for fid, spec in registry.figures.items():
        table = tables.get(spec.experiment)
        if table is None or table.empty:
            continue
        data = stand_in_label(table, scale) or f"{scale} scale — real data"
        for panel in spec.panels:
            if not panel.reference:
                continue
            lines = _lines(spec, panel, table, scale)
            for ref in panel.reference:
                line = lines.get(ref.line) if ref.line else None
                at = _at(line, ref.x) if line is not None else None
                row = {
                    "figure": fid,
                    "paper_figure": spec.paper,
                    "panel": panel.title,
                    "reference": ref.label,
                    "line": ref.line or "",
                    "paper_x": ref.x,
                    "paper_value": ref.y,
                    "ours_x": None,
                    "ours_mean": None,
                    "ours_lo": None,
                    "ours_hi": None,
                    "band": spec.band,
                    "seeds": line.n_seeds if line is not None else 0,
                    "difference": None,
                    "scale": scale,
                    "data": data,
                }
                if at is not None:
                    row.update(ours_x=at[0], ours_mean=at[1], ours_lo=at[2], ours_hi=at[3])
                    row["difference"] = at[1] - ref.y
                rows.append(row)
    return rows


def _write(path: Path, data: bytes) -> None:
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def comparison_markdown(rows: list[dict[str, Any]], scale: str) -> str:
    """The comparison as a markdown table, with what the columns mean."""
    band = {"se": "± s.e.", "bootstrap95": "95 % CI", "none": ""}
    out = [
        f"# Ours vs the paper ({scale} scale)",
        "",
        "Published values from `params/figures.yaml` (*(fig)*: read off the paper's figures, about ±0.5 "
        "points) next to ours: mean over seeds at the paper's x (the nearest bin), or at our last bin when "
        "our runs are shorter; the band is the figure's (± one standard error, or a seeded 95 % bootstrap "
        "interval). Below paper scale, or on stand-in data, the numbers are not comparable to the paper's: "
        "the `data` column says which.",
        "",
        "| figure | panel | published value | paper x | paper | ours x | ours | seeds | ours − paper | data |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["ours_mean"] is None:
            ours = "no line" if not r["line"] else "no data"
        else:
            half = (r["ours_hi"] - r["ours_lo"]) / 2
            ours = f"{_fmt(r['ours_mean'])} {band[r['band']]} {_fmt(half, 2)}".strip()
        out.append(
            f"| {r['paper_figure'] or r['figure']} | {r['panel']} | {r['reference']} | {_fmt(r['paper_x'])} "
            f"| {_fmt(r['paper_value'])} | {_fmt(r['ours_x'])} | {ours} | {r['seeds']} "
            f"| {_fmt(r['difference'])} | {r['data']} |"
        )
    if not rows:
        out.append("| — | no figure with published values has an aggregate at this scale | | | | | | | | |")
    return "\n".join(out) + "\n"


def write_comparison(rows: list[dict[str, Any]], scale: str, md: Path, csv: Path) -> None:
    frame = pd.DataFrame(rows, columns=COLUMNS)
    _write(Path(csv), frame.to_csv(index=False, float_format="%.6g").encode())
    _write(Path(md), comparison_markdown(rows, scale).encode())


def experiment_metrics(
    registry: Registry, experiment: str, table: pd.DataFrame, scale: str
) -> dict[str, dict[str, dict[str, float]]]:
    """{figure: {"<panel n>: <title>": {line: value at the last bin}}} for `dvc metrics show`."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for fid, spec in sorted(registry.figures.items()):
        if spec.experiment != experiment:
            continue
        panels = {}
        for k, panel in enumerate(spec.panels, 1):
            values = {}
            for label, line in _lines(spec, panel, table, scale).items():
                at = _at(line, None)
                if at is not None:
                    values[label] = round(at[1], 6)
            panels[f"{k}: {panel.title}"] = values
        out[fid] = panels
    return out


def plot_table(spec: FigureSpec, table: pd.DataFrame, scale: str) -> pd.DataFrame:
    """The first panel of a figure as ``x, <line 1>, <line 2>, ...`` (means; every registry line label a
    column, once, empty where a line has no data or is not drawn at this scale), for `dvc plots show`."""
    panel = spec.panels[0]
    lines = _lines(spec, panel, table, scale)
    labels = list(dict.fromkeys(ln.label for ln in panel.lines)) or sorted(lines)
    series = {}
    for label in labels:
        line = lines.get(label)
        if line is not None:
            xs = np.asarray(line.summary.x, dtype=float) * line.x_scale
            series[label] = pd.Series(np.asarray(line.summary.mean, dtype=float), index=xs)
        else:
            series[label] = pd.Series(dtype=float)
    wide = pd.DataFrame(series).sort_index()
    wide.index.name = "x"
    return wide.reset_index()


def write_experiment_summaries(
    registry: Registry, experiment: str, table: pd.DataFrame, scale: str, metrics: Path, plots_dir: Path
) -> list[Path]:
    """The metrics JSON of an experiment and one plot CSV per figure; returns the files written."""
    _write(
        Path(metrics),
        (
            json.dumps(experiment_metrics(registry, experiment, table, scale), indent=2, sort_keys=True)
            + "\n"
        ).encode(),
    )
    written = [Path(metrics)]
    for fid, spec in sorted(registry.figures.items()):
        if spec.experiment == experiment:
            path = Path(plots_dir) / f"{fid}.csv"
            _write(path, plot_table(spec, table, scale).to_csv(index=False, float_format="%.6g").encode())
            written.append(path)
    return written


def _read_aggregates(paths: list[str]) -> dict[str, pd.DataFrame]:
    """Aggregates by experiment; the experiment is the file name up to the scale (<experiment>-<scale>)."""
    from lop.analysis.aggregate import read_aggregate

    return {Path(p).name.rsplit("-", 1)[0]: read_aggregate(p) for p in paths}


def cmd_compare(args) -> int:
    from lop.analysis.registry import load_registry

    rows = comparison_rows(load_registry(args.registry), _read_aggregates(args.agg), args.scale)
    write_comparison(rows, args.scale, Path(args.md), Path(args.csv))
    print(
        f"{args.md}: {len(rows)} published value(s), {sum(r['ours_mean'] is not None for r in rows)} with ours"
    )
    return 0


def cmd_summary(args) -> int:
    from lop.analysis.aggregate import read_aggregate
    from lop.analysis.registry import load_registry

    files = write_experiment_summaries(
        load_registry(args.registry),
        args.experiment,
        read_aggregate(args.agg),
        args.scale,
        Path(args.metrics),
        Path(args.plots_dir),
    )
    print("wrote " + ", ".join(str(f) for f in files))
    return 0
