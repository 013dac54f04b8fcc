"""The budgeted_cl summary table: paired differences to naive at the same budget, and the verdicts."""

from __future__ import annotations

import pandas as pd
import pytest

from lop.analysis.budgeted_table import equal_compute_table, markdown


def _agg(values: dict[tuple[str, float], list[float]]) -> pd.DataFrame:
    rows = []
    for (method, budget), accs in values.items():
        for seed, acc in enumerate(accs):
            for metric in ("stream_accuracy", "pretrain_accuracy", "seen_accuracy"):
                for step, v in ((1, 0.0), (3, acc)):  # only the last step counts
                    rows.append(
                        {"method": method, "setting_id": f"b={budget}", "seed": seed, "status": "complete",
                         "problem.budget_factor": budget, "step": step, "metric": metric, "value": v}
                    )
    return pd.DataFrame(rows)


def test_differences_are_paired_by_seed_at_equal_budget():
    agg = _agg({
        ("naive", 1.0): [0.5, 0.6, 0.7],
        ("fifo", 1.0): [0.6, 0.7, 0.8],  # +0.1 on every seed: s.e. 0 → beats
        ("herding", 1.0): [0.4, 0.8, 0.6],  # +(-0.1, 0.2, -0.1): mean 0, ties
        ("naive", 4.0): [0.9, 0.9, 0.9],
        ("fifo", 4.0): [0.5, 0.5, 0.5],
    })
    t = equal_compute_table(agg).set_index(["method", "budget"])
    assert t.loc[("fifo", 1.0), "delta_stream_accuracy"] == pytest.approx(0.1)
    assert t.loc[("fifo", 1.0), "vs_naive"] == "beats"
    assert t.loc[("herding", 1.0), "vs_naive"] == "ties"
    assert t.loc[("fifo", 4.0), "delta_stream_accuracy"] == pytest.approx(-0.4)
    assert t.loc[("fifo", 4.0), "vs_naive"] == "worse"
    assert t.loc[("naive", 1.0), "vs_naive"] == "baseline"
    assert t.loc[("naive", 1.0), "stream_accuracy"] == pytest.approx(0.6)
    assert t.loc[("naive", 1.0), "stream_accuracy_se"] == pytest.approx(0.1 / 3**0.5)
    md = markdown(equal_compute_table(agg), "demo")
    assert "beaten** by" not in md and "naive uniform replay is beaten by: fifo at 1×" in md


def test_data_incremental_methods_compare_with_naive_data():
    agg = _agg({("naive", 1.0): [0.1, 0.1], ("naive_data", 1.0): [0.5, 0.5], ("class_balanced_data", 1.0): [0.5, 0.5]})
    t = equal_compute_table(agg).set_index(["method", "budget"])
    assert t.loc[("class_balanced_data", 1.0), "delta_stream_accuracy"] == pytest.approx(0.0)
    assert "not beaten" in markdown(equal_compute_table(agg), "demo")
