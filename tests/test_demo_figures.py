"""The demo scale fills every figure panel it draws (issue #11): a planning check on the params, no training.

For every figure of the registry whose experiment has a params file, the runs the demo scale would train
(`expand_jobs`: method, setting id, grid values, seeds) are laid out as the aggregate's run columns, and
every panel drawn at the demo scale must select at least one of them with one of its lines.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.text import Text

from lop.analysis.figures import reference_label_positions, select_runs
from lop.analysis.registry import LineSpec, load_registry
from lop.params import expand_jobs, list_param_files, load_params

ROOT = Path(__file__).resolve().parents[1]
SCALE = "demo"


def planned_runs(params_file: Path, scale: str) -> pd.DataFrame:
    """One row per planned run: method, setting_id, seed and the grid values (the aggregate's columns)."""
    params = load_params(params_file)
    rows = []
    for job in expand_jobs(params, scale):
        settings = params.job_settings(scale, job.method)  # a pack_methods job names "method/setting"
        for sid in job.setting_ids:
            s = settings[sid]
            for seed in job.seeds:
                rows.append({"method": s.method, "setting_id": s.setting_id, "seed": seed, **s.values})
    return pd.DataFrame(rows)


def _experiments() -> dict[str, Path]:
    """Experiments with a demo scale (a params file without one builds no demo figures)."""
    out = {}
    for path in list_param_files(ROOT / "params"):
        params = load_params(path)
        if SCALE in params.data.scales:
            out[params.experiment] = path
    return out


EXPERIMENTS = _experiments()
REGISTRY = load_registry(ROOT / "params" / "figures.yaml")
DEMO_FIGURES = sorted(REGISTRY.for_experiments(set(EXPERIMENTS)))


@pytest.mark.parametrize("figure_id", DEMO_FIGURES)
def test_every_demo_panel_has_a_series(figure_id):
    spec = REGISTRY.figures[figure_id]
    table = planned_runs(EXPERIMENTS[spec.experiment], SCALE)
    panels = spec.panels_at(SCALE)
    assert panels, f"{figure_id}: no panel at the {SCALE} scale"
    for i, panel in enumerate(panels):
        where = f"{figure_id}.panels[{i}] ({panel.title_for(SCALE)!r})"
        if panel.lines:
            drawn = [ln for ln in panel.lines_at(SCALE) if not select_runs(table, ln, where).empty]
        else:
            methods = set(panel.methods) if panel.methods else set(table["method"])
            drawn = sorted(methods & set(table["method"]))
        assert drawn, f"{where}: no line has runs at the {SCALE} scale"
        if panel.relative_to is not None:
            assert not select_runs(table, panel.relative_to, where).empty, where


def test_planned_runs_select_like_the_aggregate():
    """The planning table answers `where` selections as the aggregate would (grid values as columns)."""
    table = planned_runs(ROOT / "params" / "scr.yaml", "smoke")
    bp = select_runs(table, LineSpec(label="bp", method="bp", where={"lr": 0.01}), "t")
    assert set(bp["setting_id"]) == {"lr=0.01"} and sorted(bp["seed"]) == [0, 1]
    assert select_runs(table, LineSpec(label="x", method="bp", where={"lr": 0.5}), "t").empty


def test_panels_and_lines_restricted_to_scales():
    spec = REGISTRY.figures["ed_fig3"]
    paper, demo = spec.panels_at("paper"), spec.panels_at(SCALE)
    assert {p.title for p in demo} <= {p.title for p in paper}
    for panel in demo:
        for line in panel.lines_at(SCALE):
            assert not line.scales or SCALE in line.scales


@pytest.mark.parametrize(
    "ys, gap",
    [([0.5, 0.51, 0.52], 0.05), ([0.9, 0.95, 0.97, 0.99], 0.06), ([0.1, 0.8], 0.05), ([0.5] * 30, 0.05)],
)
def test_reference_labels_never_overlap(ys, gap):
    pos = reference_label_positions(ys, gap, 0.0, 0.95)
    ordered = sorted(pos)
    assert all(0.0 <= p <= 0.95 + 1e-12 for p in pos)
    step = gap if len(ys) * gap <= 0.95 + gap else 0.95 / (len(ys) - 1)
    assert all(b - a >= step - 1e-9 for a, b in itertools.pairwise(ordered))
    for i, y in enumerate(ys):  # a label with room stays at its own line
        if y <= 0.95 and all(abs(y - z) >= gap for j, z in enumerate(ys) if j != i):
            assert pos[i] == y


def test_draw_figure_uses_the_scale_titles_panels_and_lines(tmp_path):
    from analysis_fakes import toy_runs

    from lop.analysis.aggregate import aggregate_runs
    from lop.analysis.figures import draw_figure
    from lop.analysis.registry import AxisSpec, FigureSpec, PanelSpec, ReferenceSpec, StyleSpec

    toy_runs(tmp_path, seeds=2, steps=20)
    table = aggregate_runs(tmp_path)
    lines = (
        LineSpec(label="BP paper", method="bp", where={"lr": 0.001}, scales=("paper",)),
        LineSpec(label="BP demo", method="bp", where={"lr": 0.01}, scales=("demo",)),
    )
    refs = tuple(ReferenceSpec(y=1.0 + 0.001 * k, label=f"ref {k} (paper)") for k in range(3))
    spec = FigureSpec(
        title="paper title",
        titles={"demo": "demo title: 20 steps"},
        notes={"demo": "One honest sentence."},
        experiment="toy",
        ncols=2,
        panels=(
            PanelSpec(
                title="p",
                titles={"demo": "p at demo"},
                metric="loss",
                y=AxisSpec(label="y"),
                lines=lines,
                reference=refs,
            ),
            PanelSpec(title="paper only", metric="loss", y=AxisSpec(label="y"), scales=("paper",)),
        ),
    )
    fig, warnings = draw_figure(spec, table, "demo", StyleSpec())
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 1 and axes[0].get_title() == "p at demo" and not warnings
    assert [t.get_label() for t in axes[0].get_lines() if not t.get_label().startswith("_")] == ["BP demo"]
    assert (
        "demo title: 20 steps" in fig._suptitle.get_text()
        and "One honest sentence." in fig._suptitle.get_text()
    )
    labels = [t for t in axes[0].texts if t.get_text().startswith("ref")]
    assert len(labels) == 3
    fig.canvas.draw()
    boxes = [Text.get_window_extent(t) for t in labels]  # the text alone, not the joining tick
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    fig, _ = draw_figure(spec, table, "paper", StyleSpec())
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 2 and "paper title" in fig._suptitle.get_text()


def test_close_reference_labels_are_pushed_apart_by_their_rendered_height():
    """Two reference lines closer than a label's height (ED Fig. 2's "linear learner (fig)" at 0.88 and
    "BP α=0.001 (fig)" at 0.85): the labels' white boxes, text and padding, are stacked with a clear
    margin between them, not merely without overlapping glyphs."""
    import matplotlib.pyplot as plt

    from lop.analysis.figures import REF_LABEL_MARGIN_PT, _label_references
    from lop.analysis.registry import AxisSpec, PanelSpec, ReferenceSpec

    refs = (
        ReferenceSpec(y=0.85, label="BP α=0.001 (fig)"),
        ReferenceSpec(y=0.88, label="linear learner (fig)"),
    )
    panel = PanelSpec(title="p", metric="loss", y=AxisSpec(label="y"), reference=refs)
    fig, ax = plt.subplots(figsize=(3.6, 2.6), dpi=150)
    ax.plot([0.0, 1.0], [0.45, 1.4])
    for ref in refs:
        ax.axhline(ref.y)
    _label_references(ax, panel, {})
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = sorted(
        (t.get_bbox_patch().get_window_extent(renderer) for t in ax.texts if "(fig)" in t.get_text()),
        key=lambda b: b.y0,
    )
    plt.close(fig)
    assert len(boxes) == 2
    clearance_px = boxes[1].y0 - boxes[0].y1
    assert clearance_px >= 0.9 * REF_LABEL_MARGIN_PT * 150 / 72.0, clearance_px


def _one_panel_figure(tmp_path, note: str | None = None, legend: str | None = None):
    from analysis_fakes import toy_runs

    from lop.analysis.aggregate import aggregate_runs
    from lop.analysis.registry import AxisSpec, FigureSpec, PanelSpec

    toy_runs(tmp_path, seeds=2, steps=20)
    panel = PanelSpec(title="p", metric="loss", y=AxisSpec(label="y"), methods=("bp",), legend=legend)
    spec = FigureSpec(title="toy", experiment="toy", ncols=1, panels=(panel,), notes={"demo": note} if note else {})
    return spec, aggregate_runs(tmp_path)


@pytest.mark.parametrize("loc", ["lower left", "upper right", "center right"])
def test_panel_legend_goes_where_the_registry_says(tmp_path, loc):
    from matplotlib.legend import Legend

    from lop.analysis.figures import draw_figure
    from lop.analysis.registry import StyleSpec

    spec, table = _one_panel_figure(tmp_path, legend=loc)
    fig, _ = draw_figure(spec, table, "demo", StyleSpec())
    legend = fig.axes[0].get_legend()
    assert legend is not None and legend._loc == Legend.codes[loc]


def test_registry_refuses_an_unknown_legend_place(tmp_path):
    from lop.analysis.registry import load_registry

    text = (ROOT / "params" / "figures.yaml").read_text().replace("legend: lower left", "legend: somewhere", 1)
    bad = tmp_path / "figures.yaml"
    bad.write_text(text)
    with pytest.raises(Exception, match=r"legend"):
        load_registry(bad)


def test_a_long_note_takes_height_from_the_figure_not_the_panel(tmp_path):
    """A one-column figure wraps a long note into many lines: the heading grows the figure, the panel
    keeps its height, and the heading's text ends above the panel's title."""
    from lop.analysis.figures import draw_figure
    from lop.analysis.registry import StyleSpec

    spec_short, table = _one_panel_figure(tmp_path / "a")
    spec_long, _ = _one_panel_figure(tmp_path / "b", note=" ".join(["A sentence that explains the figure."] * 12))
    heights = []
    for spec in (spec_short, spec_long):
        fig, _ = draw_figure(spec, table, "demo", StyleSpec())
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        heights.append(ax.get_window_extent(renderer).height / fig.dpi)
        assert fig._suptitle.get_window_extent(renderer).y0 > ax.title.get_window_extent(renderer).y1
    assert heights[1] >= heights[0] - 0.1, heights  # the panel is not squeezed by the note


def test_stacked_reference_labels_cover_the_ticks_of_the_labels_above_them():
    """A label pushed up is joined to its line by a tick that runs down past the labels below it; those
    are drawn later (higher zorder), their boxes over the tick, and all stay under the legend (zorder 5)."""
    import matplotlib.pyplot as plt

    from lop.analysis.figures import _label_references
    from lop.analysis.registry import AxisSpec, PanelSpec, ReferenceSpec

    refs = tuple(ReferenceSpec(y=0.80 + 0.005 * k, label=f"reference {k} (fig)") for k in range(4))
    panel = PanelSpec(title="p", metric="loss", y=AxisSpec(label="y"), reference=refs)
    fig, ax = plt.subplots(figsize=(3.6, 2.6), dpi=150)
    ax.plot([0.0, 1.0], [0.0, 1.0])
    _label_references(ax, panel, {})
    labels = sorted(ax.texts, key=lambda t: t.get_position()[1])  # bottom to top
    plt.close(fig)
    assert len(labels) == 4
    zorders = [t.get_zorder() for t in labels]
    assert zorders == sorted(zorders, reverse=True) and len(set(zorders)) == 4, zorders
    assert all(2 < z < 5 for z in zorders), zorders
