"""Figure statistics, the registry and byte-reproducible figures (issue #3, item 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from analysis_fakes import toy_runs, write_run

from lop.analysis.aggregate import aggregate_runs, write_aggregate
from lop.analysis.figures import draw_figure, make_figure, panel_lines, stand_in_label
from lop.analysis.registry import (
    AxisSpec,
    BinSpec,
    FigureSpec,
    LineSpec,
    PanelSpec,
    ReferenceSpec,
    StyleSpec,
    load_registry,
)
from lop.analysis.stats import bin_steps, bootstrap_ci, mean_se
from lop.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


# ---- statistics --------------------------------------------------------------------------------
def test_mean_se_uses_ddof_1_and_ignores_missing_seeds():
    values = np.array([[1.0, 2.0], [3.0, np.nan], [5.0, 4.0]])
    mean, lo, hi, n = mean_se(values)
    se0 = np.std([1, 3, 5], ddof=1) / np.sqrt(3)
    se1 = np.std([2, 4], ddof=1) / np.sqrt(2)
    np.testing.assert_allclose(mean, [3.0, 3.0])
    np.testing.assert_allclose(hi - mean, [se0, se1])
    np.testing.assert_allclose(mean - lo, [se0, se1])
    np.testing.assert_array_equal(n, [3, 2])
    m1, lo1, hi1, _ = mean_se(np.array([[7.0]]))
    assert lo1[0] == hi1[0] == m1[0] == 7.0


def test_bootstrap_is_seeded_and_brackets_the_mean():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(20, 5))
    a = bootstrap_ci(values)
    b = bootstrap_ci(values)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    mean, lo, hi, _ = a
    assert np.all(lo < mean) and np.all(mean < hi)
    assert np.all(lo >= values.min(0)) and np.all(hi <= values.max(0))
    # A wider spread gives a wider interval; another seed gives another (valid) interval.
    _, lo2, hi2, _ = bootstrap_ci(values * 3)
    np.testing.assert_allclose(hi2 - lo2, 3 * (hi - lo), rtol=1e-9)
    _, lo3, _, _ = bootstrap_ci(values, seed=5)
    assert not np.array_equal(lo3, lo)


def test_bin_steps_reductions_and_positions():
    df = pd.DataFrame({"seed": 0, "step": np.arange(10), "value": np.arange(10.0)})
    mean = bin_steps(df, 5, "mean")
    assert mean["x"].tolist() == [5, 10] and mean["value"].tolist() == [2.0, 7.0]
    assert bin_steps(df, 5, "max")["value"].tolist() == [4.0, 9.0]
    assert bin_steps(df, 5, "last")["value"].tolist() == [4.0, 9.0]
    assert bin_steps(df, None)["x"].tolist() == list(range(10))
    counts = bin_steps(df.assign(step=df["step"] + 1), 5, "last", edge="right")  # steps 1..10 are counts
    assert counts["x"].tolist() == [5, 10] and counts["value"].tolist() == [4.0, 9.0]
    with pytest.raises(ConfigError):
        bin_steps(df, 5, "median")  # type: ignore[arg-type]


# ---- registry ----------------------------------------------------------------------------------
def test_project_registry_is_valid_and_covers_every_paper_figure():
    registry = load_registry(ROOT / "params" / "figures.yaml")
    papers = {f.paper for f in registry.figures.values()}
    assert {"Fig. 1b", "Fig. 1c", "Fig. 2", "Fig. 3", "Fig. 4"} <= papers
    assert {f"Extended Data Fig. {k}" for k in (2, 3, 4, 5)} <= papers
    for fid, spec in registry.figures.items():
        assert (ROOT / "workflow" / "report" / (spec.caption or f"{fid}.rst")).is_file(), fid
        if all(panel.kind == "matrix" for panel in spec.panels):  # heatmaps of the mean: no band to draw
            assert spec.band == "none", fid
            continue
        assert spec.band == ("bootstrap95" if fid in {"fig3", "fig4", "ed_fig5", "ed_fig5bcd"} else "se"), fid


@pytest.mark.parametrize(
    "text, key",
    [
        ("figures: {f: {title: t, experiment: e, panels: [], colour: red}}", "figures.f.colour"),
        ("figures: {f: {title: t, experiment: e, panels: []}}", "figures.f.panels"),
        (
            "figures: {f: {title: t, experiment: e, band: ci, panels: [{title: p, metric: m, y: {label: y}}]}}",
            "figures.f.band",
        ),
        ("figures: {f: {title: t, experiment: e, panels: [{title: p, metric: m}]}}", "figures.f.panels[0].y"),
        ("figures: [1, 2]", "figures"),
        (
            "figures: {f: {title: t, experiment: e, panels: [{title: p, metric: m, y: {label: y}, "
            "bin: {width: 0}}]}}",
            "figures.f.panels[0].bin.width",
        ),
    ],
)
def test_bad_registry_names_file_and_key(tmp_path, text, key):
    path = tmp_path / "figures.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_registry(path)
    assert str(path) in str(e.value) and key in str(e.value)


# ---- figures -----------------------------------------------------------------------------------
def _panel(**kw) -> PanelSpec:
    base = dict(title="p", metric="loss", y=AxisSpec(label="y"), x=AxisSpec(label="x"))
    return PanelSpec(**{**base, **kw})


def _figure(**kw) -> FigureSpec:
    lines = (
        LineSpec(label="BP 0.01", method="bp", where={"lr": 0.01}),
        LineSpec(label="CBP", method="cbp"),
        LineSpec(label="absent", method="nope"),
    )
    panels = (
        _panel(
            lines=lines,
            bin=BinSpec(width=10),
            reference=(ReferenceSpec(y=1.0, x=40, label="paper", line="CBP"),),
        ),
        _panel(metric="dead_units/*", y=AxisSpec(label="dead", scale=100)),
    )
    return FigureSpec(**{"title": "toy", "experiment": "toy", "panels": panels, **kw})


def test_panel_lines_bin_per_seed_then_summarise(tmp_path):
    toy_runs(tmp_path, seeds=3, steps=40)
    table = aggregate_runs(tmp_path)
    lines, missing = panel_lines(table, _figure().panels[0], "se", "demo")
    assert [ln.label for ln in lines] == ["BP 0.01", "CBP"] and len(missing) == 1 and "absent" in missing[0]
    bp = lines[0].summary
    np.testing.assert_array_equal(bp.x, [10, 20, 30, 40])
    # value = 1 + 0.01 seed + step/1000: bin mean over steps 0..9 = 1.0045 + 0.01 seed; seeds 0,1,2.
    np.testing.assert_allclose(bp.mean[0], 1.0045 + 0.01)
    np.testing.assert_allclose(bp.hi[0] - bp.mean[0], 0.01 / np.sqrt(3))
    # the glob combines layers (mean of 0.1(s+1) and 0.3(s+1)) and the axis scale applies
    dead, _ = panel_lines(table, _figure().panels[1], "se", "demo")
    assert {ln.label for ln in dead} == {"bp lr-0.01", "bp lr-0.001", "cbp rr-1e-4"}
    np.testing.assert_allclose(dead[0].summary.mean, 100 * 0.2 * 2)


def test_relative_to_pairs_seeds(tmp_path):
    toy_runs(tmp_path, seeds=2, steps=20)
    table = aggregate_runs(tmp_path)
    panel = _panel(
        lines=(LineSpec(label="CBP", method="cbp"),),
        relative_to=LineSpec(label="ref", method="bp", where={"lr": 0.001}),
    )
    (line,), _ = panel_lines(table, panel, "none", "demo")
    cbp = 0.5 + 0.01 * np.arange(2)[:, None] + np.arange(20)[None] / 1000
    ref = 1.0 + 0.01 * np.arange(2)[:, None] + np.arange(20)[None] / 1000
    np.testing.assert_allclose(line.summary.mean, (cbp / ref).mean(0))


def test_figures_are_byte_identical_when_rebuilt(tmp_path):
    toy_runs(tmp_path / "runs", seeds=3, steps=40)
    write_aggregate(aggregate_runs(tmp_path / "runs"), tmp_path / "agg.parquet")
    table = pd.read_parquet(tmp_path / "agg.parquet")
    for band in ("se", "bootstrap95"):
        spec = _figure(band=band)
        outs = []
        for k in range(2):
            png, pdf = tmp_path / f"{band}{k}.png", tmp_path / f"{band}{k}.pdf"
            warnings = make_figure(spec, table, "demo", StyleSpec(), png, pdf, "toy")
            assert len(warnings) == 1
            outs.append((png.read_bytes(), pdf.read_bytes()))
        assert outs[0][0][:8] == b"\x89PNG\r\n\x1a\n" and outs[0][1][:5] == b"%PDF-"
        assert outs[0] == outs[1]
        assert b"CreationDate" not in outs[0][1] and b"matplotlib" not in outs[0][0]


def test_stand_in_label_only_off_paper_scale(tmp_path):
    toy_runs(tmp_path, seeds=2, steps=10)
    table = aggregate_runs(tmp_path)
    assert stand_in_label(table, "demo") == "demo scale — stand-in data"
    assert stand_in_label(table, "paper") is None
    assert stand_in_label(table.assign(stand_in=True), "paper") == "paper scale — stand-in data"
    fig, _ = draw_figure(_figure(), table, "demo", StyleSpec())
    assert any(t.get_text() == "demo scale — stand-in data" for t in fig.texts)
    fig, _ = draw_figure(_figure(), table, "paper", StyleSpec())
    assert not any("stand-in" in t.get_text() for t in fig.texts)


def test_stand_in_runs_are_labelled_even_at_paper_scale(tmp_path):
    step = np.arange(5)
    real = tmp_path / "real"
    for seed in (0, 1):
        write_run(real, "bp", "a", seed, {"loss": (step, step * 1.0)}, scale="paper", stand_in=False)
    assert stand_in_label(aggregate_runs(real), "paper") is None
    mixed = tmp_path / "mixed"
    write_run(mixed, "bp", "a", 0, {"loss": (step, step * 1.0)}, scale="paper", stand_in=False)
    write_run(mixed, "cbp", "b", 0, {"loss": (step, step * 1.0)}, scale="paper", stand_in=True)
    assert stand_in_label(aggregate_runs(mixed), "paper") == "paper scale — stand-in data"


def test_diverged_runs_are_counted_in_the_legend(tmp_path):
    step = np.arange(10)
    write_run(tmp_path, "bp", "a", 0, {"loss": (step[:4], step[:4] * 1.0)}, status="diverged", diverged_at=4)
    write_run(tmp_path, "bp", "a", 1, {"loss": (step, step * 1.0)})
    table = aggregate_runs(tmp_path)
    (line,), _ = panel_lines(table, _panel(methods=("bp",)), "se", "demo")
    assert line.n_diverged == 1 and line.n_seeds == 2
    np.testing.assert_array_equal(line.summary.n, [2] * 4 + [1] * 6)
