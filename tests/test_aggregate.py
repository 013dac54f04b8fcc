"""Aggregation of run folders into one tidy table (issue #3, item 3)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest
from analysis_fakes import toy_runs, write_run

from lop.analysis import commands
from lop.analysis.aggregate import BASE_COLUMNS, aggregate_runs, read_aggregate, write_aggregate
from lop.errors import DataError


def test_tidy_table_has_every_row_sorted_with_hyperparameter_columns(tmp_path):
    toy_runs(tmp_path, seeds=3, steps=40)
    table = aggregate_runs(tmp_path)
    assert list(table.columns[: len(BASE_COLUMNS)]) == list(BASE_COLUMNS)
    assert {"lr", "cbp.replacement_rate"} <= set(table.columns)
    # 3 settings x 3 seeds x (40 loss + 2 x 4 dead-unit rows)
    assert len(table) == 3 * 3 * (40 + 8)
    assert table["seed"].dtype == np.int64 and table["step"].dtype == np.int64
    assert table["value"].dtype == np.float64
    keys = table[["method", "setting_id", "seed", "metric", "step"]]
    assert keys.equals(keys.sort_values(list(keys.columns)).reset_index(drop=True))
    bp = table[(table.method == "bp") & (table.setting_id == "lr-0.01")]
    assert np.allclose(bp["lr"], 0.01) and bp["cbp.replacement_rate"].isna().all()
    one = bp[(bp.seed == 2) & (bp.metric == "loss") & (bp.step == 7)]
    assert one["value"].item() == pytest.approx(1.0 + 0.02 + 0.007)


def test_expected_runs_must_all_exist_and_stale_runs_are_left_out(tmp_path):
    toy_runs(tmp_path, seeds=2, steps=10)
    expected = [f"bp/lr-0.01/seed-{s}/run.json" for s in range(2)]
    table = aggregate_runs(tmp_path, expected)
    assert set(table["setting_id"]) == {"lr-0.01"}
    with pytest.raises(DataError, match=r"seed-5/run\.json"):
        aggregate_runs(tmp_path, [*expected, "bp/lr-0.01/seed-5/run.json"])


def test_diverged_status_is_kept(tmp_path):
    step = np.arange(5)
    write_run(tmp_path, "bp", "a", 0, {"loss": (step, step * 1.0)}, status="diverged", diverged_at=3)
    write_run(tmp_path, "bp", "a", 1, {"loss": (step, step * 1.0)})
    table = aggregate_runs(tmp_path)
    runs = table.drop_duplicates("seed").set_index("seed")
    assert runs.loc[0, "status"] == "diverged" and runs.loc[0, "diverged_at"] == 3
    assert runs.loc[1, "status"] == "complete" and pd.isna(runs.loc[1, "diverged_at"])


def test_stand_in_column_comes_from_run_json_and_defaults_to_false(tmp_path):
    step = np.arange(3)
    write_run(tmp_path, "bp", "a", 0, {"loss": (step, step * 1.0)}, stand_in=True)
    write_run(tmp_path, "bp", "a", 1, {"loss": (step, step * 1.0)}, stand_in=False)
    write_run(tmp_path, "bp", "a", 2, {"loss": (step, step * 1.0)})  # written before the key existed
    table = aggregate_runs(tmp_path)
    assert "stand_in" in BASE_COLUMNS and table["stand_in"].dtype == bool
    assert table.drop_duplicates("seed").set_index("seed")["stand_in"].to_dict() == {
        0: True,
        1: False,
        2: False,
    }
    out = write_aggregate(table, tmp_path / "agg.parquet")
    assert read_aggregate(out)["stand_in"].tolist() == table["stand_in"].tolist()
    write_aggregate(table.drop(columns="stand_in"), out)  # an aggregate written before the column existed
    back = read_aggregate(out)
    assert list(back.columns) == list(table.columns) and not back["stand_in"].any()
    write_run(tmp_path, "bp", "a", 3, {"loss": (step, step * 1.0)}, stand_in="yes")
    with pytest.raises(DataError, match=r"seed-3/run\.json: 'stand_in' must be true or false"):
        aggregate_runs(tmp_path)


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda p: p.write_text("{not json"), "unreadable"),
        (lambda p: p.write_text(json.dumps({"method": "bp"})), "missing key"),
        (lambda p: (p.parent / "metrics.parquet").unlink(), r"metrics\.parquet: missing"),
        (
            lambda p: pd.DataFrame({"step": [0], "value": [1.0]}).to_parquet(p.parent / "metrics.parquet"),
            "missing column",
        ),
    ],
)
def test_broken_run_folders_name_the_file(tmp_path, corrupt, match):
    paths = toy_runs(tmp_path, seeds=1, steps=5)
    corrupt(paths[0])
    with pytest.raises(DataError, match=match) as e:
        aggregate_runs(tmp_path)
    assert str(paths[0].parent) in str(e.value)


def test_empty_runs_root_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no finished runs"):
        aggregate_runs(tmp_path)


def test_written_aggregate_is_byte_stable_and_round_trips(tmp_path):
    toy_runs(tmp_path / "runs", seeds=2, steps=10)
    table = aggregate_runs(tmp_path / "runs")
    a = write_aggregate(table, tmp_path / "a.parquet")
    b = write_aggregate(aggregate_runs(tmp_path / "runs"), tmp_path / "b.parquet")
    assert a.read_bytes() == b.read_bytes()
    back = read_aggregate(a)
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    assert not list(tmp_path.glob(".*.tmp"))


def test_read_aggregate_errors(tmp_path):
    with pytest.raises(DataError, match="no such aggregate"):
        read_aggregate(tmp_path / "none.parquet")
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="missing column"):
        read_aggregate(tmp_path / "bad.parquet")


def test_lop_aggregate_command(tmp_path, capsys):
    toy_runs(tmp_path / "runs", seeds=2, steps=10)
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "agg" / "toy-demo.parquet"
    args = parser.parse_args(["aggregate", "--runs", str(tmp_path / "runs"), "--out", str(out)])
    assert args.func(args) == 0
    assert "6 runs" in capsys.readouterr().out
    assert len(read_aggregate(out)) == 6 * (10 + 2 * 1)
