"""Figures and the table of the task-sequence experiments, on a synthetic aggregate with known matrices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lop import cl_metrics
from lop.analysis.cl_table import run_values, table_markdown, table_rows
from lop.analysis.figures import make_figure
from lop.analysis.registry import FigureSpec, PanelSpec, StyleSpec, load_registry
from lop.config import from_dict
from lop.errors import ConfigError

T = 4


def _matrix(seed: int, forget: float) -> np.ndarray:
    """A [T+1, T] matrix: 0.1 at init, 0.9 on a task after training it, minus `forget` per later task."""
    r = np.full((T + 1, T), 0.1)
    for i in range(1, T + 1):
        for j in range(1, i + 1):
            r[i, j - 1] = 0.9 - forget * (i - j) + 0.01 * seed
    return r


def _aggregate() -> pd.DataFrame:
    rows = []
    for method, forget in (("finetune", 0.2), ("si", 0.01)):
        for seed in (0, 1):
            r = _matrix(seed, forget)
            for i in range(T + 1):
                for j in range(1, T + 1):
                    rows.append((method, seed, i, cl_metrics.task_metric(j), r[i, j - 1]))
                rows.append((method, seed, i, "dead_units/layer1", 0.1 * seed))
                rows.append((method, seed, i, "dead_units/layer2", 0.3 * seed))
                rows.append((method, seed, i, "weight_magnitude", 0.5))
            for name, value in cl_metrics.summaries(r).items():
                rows.append((method, seed, T, name, value))
    df = pd.DataFrame(rows, columns=["method", "seed", "step", "metric", "value"])
    return df.assign(experiment="cl_x", scale="smoke", setting_id="default", status="complete",
                     diverged_at=None, stand_in=True)


def test_table_values_come_from_each_runs_matrix():
    table = _aggregate()
    rows = {r["method"]: r for r in table_rows({"cl_x": table})}
    assert set(rows) == {"finetune", "si"} and rows["si"]["seeds"] == 2
    for method, forget in (("finetune", 0.2), ("si", 0.01)):
        expected = [cl_metrics.summaries(_matrix(s, forget)) for s in (0, 1)]
        for name in cl_metrics.SUMMARY_METRICS:
            assert rows[method][name] == pytest.approx(np.mean([e[name] for e in expected]))
    assert rows["finetune"]["forgetting"] > rows["si"]["forgetting"]
    one = run_values(table[(table.method == "si") & (table.seed == 1)])
    assert one["learn_first"] == pytest.approx(0.91) and one["learn_last"] == pytest.approx(0.91)
    assert one["dead_units"] == pytest.approx(0.2)  # mean over the two layers
    assert np.isnan(one["effective_rank"])  # not probed in this table: "—", never a made-up value
    md = table_markdown(list(rows.values()), "smoke")
    assert "| si | default | 2 |" in md and "—" in md


def test_matrix_and_bars_panels_draw(tmp_path):
    table = _aggregate()
    spec = from_dict(FigureSpec, {
        "title": "t", "experiment": "cl_x", "band": "se", "ncols": 3,
        "panels": [
            {"title": "m", "kind": "matrix", "metric": "test_accuracy/task_*", "y": {"label": "i", "scale": 100},
             "lines": [{"label": "SI", "method": "si"}]},
            {"title": "acc", "kind": "bars", "metric": "acc", "y": {"label": "ACC"},
             "lines": [{"label": "finetune", "method": "finetune"}, {"label": "si", "method": "si"},
                       {"label": "ewc", "method": "ewc"}],
             "reference": [{"y": 0.969, "label": "SI (paper)", "line": "si"}]},
        ],
    })
    warnings = make_figure(spec, table, "smoke", StyleSpec(), tmp_path / "f.png", tmp_path / "f.pdf")
    assert warnings == ["figure.panels[1]: no data for line 'ewc' (method ewc) at smoke scale"]
    assert (tmp_path / "f.png").stat().st_size > 10_000 and (tmp_path / "f.pdf").exists()


def test_a_matrix_panel_shows_exactly_one_line():
    with pytest.raises(ConfigError, match="exactly one line"):
        from_dict(PanelSpec, {"title": "m", "kind": "matrix", "metric": "test_accuracy/task_*", "y": {"label": "i"},
                              "lines": [{"label": "a", "method": "a"}, {"label": "b", "method": "b"}]})


def test_registry_cl_figures_reference_existing_methods():
    from lop.params import load_params

    registry = load_registry()
    for fid, spec in registry.figures.items():
        if not spec.experiment.startswith("cl_"):
            continue
        methods = set(load_params(f"params/{spec.experiment}.yaml").data.methods)
        for panel in spec.panels:
            assert {ln.method for ln in panel.lines} <= methods, fid
