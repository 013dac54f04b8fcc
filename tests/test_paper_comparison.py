"""Ours vs the paper (issue #10): the comparison table, per-experiment metrics JSON and plot CSVs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from analysis_fakes import toy_runs

from lop.analysis.aggregate import aggregate_runs, write_aggregate
from lop.analysis.compare import (
    COLUMNS,
    comparison_markdown,
    comparison_rows,
    experiment_metrics,
    plot_table,
    write_comparison,
)
from lop.analysis.figures import panel_lines
from lop.analysis.registry import (
    AxisSpec,
    BinSpec,
    FigureSpec,
    LineSpec,
    PanelSpec,
    ReferenceSpec,
    Registry,
    load_registry,
)

REFS = (
    ReferenceSpec(y=1.0, x=40, label="CBP at 40 (fig)", line="CBP"),
    ReferenceSpec(y=0.9, x=1000, label="BP beyond our runs", line="BP 0.01"),
    ReferenceSpec(y=0.7, label="a constant (no line)"),
)


def _registry(band: str = "se") -> Registry:
    panel = PanelSpec(
        title="loss",
        metric="loss",
        y=AxisSpec(label="y"),
        bin=BinSpec(width=10),
        lines=(
            LineSpec(label="BP 0.01", method="bp", where={"lr": 0.01}),
            LineSpec(label="CBP", method="cbp"),
            LineSpec(label="absent", method="nope"),
        ),
        reference=REFS,
    )
    fig = FigureSpec(title="toy", experiment="toy", panels=(panel,), band=band, paper="Fig. T")
    return Registry(figures={"toy_fig": fig})


@pytest.fixture
def table(tmp_path) -> pd.DataFrame:
    toy_runs(tmp_path / "runs", seeds=3, steps=40)
    return aggregate_runs(tmp_path / "runs")


def test_rows_pair_each_published_value_with_our_line(table):
    reg = _registry()
    rows = comparison_rows(reg, {"toy": table}, "demo")
    assert [r["reference"] for r in rows] == [r.label for r in REFS]
    lines = {ln.label: ln for ln in panel_lines(table, reg.figures["toy_fig"].panels[0], "se", "demo")[0]}
    cbp, bp, const = rows
    s = lines["CBP"].summary
    assert cbp["ours_x"] == 40 and cbp["ours_mean"] == pytest.approx(s.mean[-1])
    # value = 0.5 + 0.01 seed + step/1000; the bin ending at 40 holds steps 30..39; seeds 0..2
    assert cbp["ours_mean"] == pytest.approx(0.5 + 0.01 + 0.0345)
    assert cbp["ours_hi"] - cbp["ours_mean"] == pytest.approx(0.01 / np.sqrt(3))
    assert cbp["difference"] == pytest.approx(cbp["ours_mean"] - 1.0)
    assert cbp["seeds"] == 3 and cbp["scale"] == "demo" and "demo scale" in cbp["data"]
    assert bp["ours_x"] == 40 and bp["paper_x"] == 1000  # our runs are shorter: our last bin, said so
    assert const["ours_mean"] is None and const["line"] == ""


def test_figures_without_an_aggregate_are_left_out(table):
    assert comparison_rows(_registry(), {"other": table}, "demo") == []
    assert "no figure with published values" in comparison_markdown([], "demo")


def test_markdown_and_csv(table, tmp_path):
    rows = comparison_rows(_registry(), {"toy": table}, "smoke")
    write_comparison(rows, "smoke", tmp_path / "t.md", tmp_path / "t.csv")
    csv = pd.read_csv(tmp_path / "t.csv")
    assert list(csv.columns) == COLUMNS and len(csv) == 3
    md = (tmp_path / "t.md").read_text()
    assert md.startswith("# Ours vs the paper (smoke scale)")
    table_lines = [ln for ln in md.splitlines() if ln.startswith("| Fig. T")]
    assert len(table_lines) == 3 and "± s.e." in table_lines[0] and "no line" in table_lines[2]


def test_bootstrap_figures_say_ci(table):
    rows = comparison_rows(_registry("bootstrap95"), {"toy": table}, "demo")
    assert rows[0]["band"] == "bootstrap95" and "95 % CI" in comparison_markdown(rows, "demo")


def test_metrics_json_has_the_last_bin_of_every_line(table):
    m = experiment_metrics(_registry(), "toy", table, "demo")
    values = m["toy_fig"]["1: loss"]
    assert set(values) == {"BP 0.01", "CBP"}
    assert values["CBP"] == pytest.approx(0.5445, abs=1e-6)
    json.dumps(m)  # plain JSON for dvc metrics


def test_plot_table_has_a_column_per_registry_line(table):
    wide = plot_table(_registry().figures["toy_fig"], table, "demo")
    assert list(wide.columns) == ["x", "BP 0.01", "CBP", "absent"]
    assert wide["x"].tolist() == [10, 20, 30, 40] and wide["absent"].isna().all()


def test_cli_writes_the_tables(table, tmp_path, lop_main):
    write_aggregate(table, tmp_path / "agg" / "scr-demo.parquet")
    reg = load_registry("params/figures.yaml")
    assert any(f.experiment == "scr" for f in reg.figures.values())
    res = lop_main(
        "compare", "--agg", str(tmp_path / "agg" / "scr-demo.parquet"), "--scale", "demo",
        "--md", str(tmp_path / "c.md"), "--csv", str(tmp_path / "c.csv"),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert pd.read_csv(tmp_path / "c.csv")["figure"].eq("ed_fig2").all()
    res = lop_main(
        "summary", "--agg", str(tmp_path / "agg" / "scr-demo.parquet"), "--experiment", "scr",
        "--scale", "demo", "--metrics", str(tmp_path / "m" / "scr.json"), "--plots-dir", str(tmp_path / "p"),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert set(json.loads((tmp_path / "m" / "scr.json").read_text())) == {"ed_fig2"}
    assert (tmp_path / "p" / "ed_fig2.csv").is_file()
