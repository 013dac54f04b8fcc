"""Aggregation: every finished run of one experiment + scale into one tidy Parquet table.

A run folder ``<runs>/<method>/<setting_id>/seed-<seed>/`` holds ``metrics.parquet`` (step, metric,
value) and ``run.json`` (docs/architecture.md). The aggregate has one row per (run, step, metric):

    experiment, scale, method, setting_id, seed, status, diverged_at, stand_in, step, metric, value,
    <hyperparameter columns>

where the hyperparameter columns are the run's ``setting`` (the grid values that define it), nested
keys joined with ``.`` (``lr``, ``cbp.replacement_rate``). Rows are sorted, so the same runs always give
the same table. ``stand_in`` (bool) is the run's ``run.json`` flag (false when absent, as in runs written
before it existed); figures made from a table with any stand-in run carry a "stand-in data" label at every
scale.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lop.data.artifact import read_json
from lop.data.download import sha256sum
from lop.errors import ConfigError, DataError
from lop.io import atomic_write
from lop.limits import SEED_LIMIT, check_out_dir, safe_component

RUN_FILE = "run.json"
METRICS_FILE = "metrics.parquet"
RUN_COLUMNS = ("experiment", "scale", "method", "setting_id", "seed", "status", "diverged_at", "stand_in")
METRIC_COLUMNS = ("step", "metric", "value")
BASE_COLUMNS = (*RUN_COLUMNS, *METRIC_COLUMNS)
STATUSES = ("complete", "diverged")
SORT_KEYS = ["method", "setting_id", "seed", "metric", "step"]


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"cbp": {"replacement_rate": 1e-4}}`` -> ``{"cbp.replacement_rate": 1e-4}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def find_runs(runs_root: Path) -> list[Path]:
    """All ``run.json`` files of finished runs under a runs root (``<method>/<setting>/seed-*/``)."""
    return sorted(p for p in runs_root.glob(f"*/*/seed-*/{RUN_FILE}") if not p.parts[-4].startswith("."))


def read_run(run_json: Path) -> dict[str, Any]:
    """Read and check one ``run.json``; raises `DataError` naming the file."""
    run = read_json(run_json)
    missing = [k for k in ("method", "setting_id", "seed", "status") if k not in run]
    if missing:
        raise DataError(
            f"{run_json}: missing key(s) {', '.join(missing)}; not a run.json written by `lop run`"
        )
    if run["status"] not in STATUSES:
        raise DataError(f"{run_json}: status {run['status']!r} is not one of {', '.join(STATUSES)}")
    if not isinstance(run.get("stand_in", False), bool):
        raise DataError(f"{run_json}: 'stand_in' must be true or false, got {run['stand_in']!r}")
    check_run_record(run, run_json)
    return run


def check_run_record(run: Mapping[str, Any], run_json: Path) -> None:
    """The run schema: types and ranges of the run-level keys, ``diverged_at`` consistent with
    ``status``, the config agreeing with the run, and the folder ``<method>/<setting_id>/seed-<seed>``
    agreeing with the run.json it holds. Raises `DataError` naming the file."""
    bad = f"{run_json}: "
    fix = "; not a run.json written by `lop run` for this folder: delete the run folder and re-run its job"
    for key in ("method", "setting_id"):
        value = run[key]
        try:
            safe_component(value, key, key)
        except ConfigError as e:
            raise DataError(f"{bad}{e}{fix}") from None
    for key in ("experiment", "scale"):
        if key in run and not isinstance(run[key], str):
            raise DataError(f"{bad}'{key}' must be a string, got {str(run[key])[:40]!r}{fix}")
    seed = run["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise DataError(f"{bad}'seed' must be an integer in [0, 2**63), got {str(seed)[:40]!r}{fix}")
    div = run.get("diverged_at")
    if div is not None and (isinstance(div, bool) or not isinstance(div, int) or not 0 <= div < SEED_LIMIT):
        raise DataError(f"{bad}'diverged_at' must be null or a step >= 0, got {str(div)[:40]!r}{fix}")
    if (div is not None) != (run["status"] == "diverged"):
        raise DataError(f"{bad}status {run['status']!r} disagrees with diverged_at {div!r}{fix}")
    config = run.get("config")
    if config is not None:
        if not isinstance(config, Mapping):
            raise DataError(f"{bad}'config' must be an object{fix}")
        for ck, rk in (
            ("method_name", "method"),
            ("setting_id", "setting_id"),
            ("seed", "seed"),
            ("experiment", "experiment"),
            ("scale", "scale"),
        ):
            if ck in config and rk in run and config[ck] != run[rk]:
                raise DataError(f"{bad}config.{ck} {config[ck]!r} disagrees with {rk} {run[rk]!r}{fix}")
    parts = run_json.parts
    if len(parts) >= 4 and parts[-2].startswith("seed-"):
        want = (run["method"], run["setting_id"], f"seed-{seed}")
        if tuple(parts[-4:-1]) != want:
            raise DataError(f"{bad}describes run {'/'.join(want)} but lies in {'/'.join(parts[-4:-1])}{fix}")


def read_metrics(path: Path, sha256: str | None = None) -> pa.Table:
    """Read one ``metrics.parquet`` with the contract's columns and types (and its sha256 when the run.json
    records one)."""
    if not path.is_file():
        raise DataError(f"{path}: missing next to its run.json; delete the run folder and re-run its job")
    if sha256 is not None and (not isinstance(sha256, str) or sha256sum(path) != sha256):
        raise DataError(
            f"{path}: sha256 differs from the metrics_sha256 in its run.json: the file is corrupt or was "
            "changed; delete the run folder and re-run its job"
        )
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: unreadable Parquet ({e}); delete the run folder and re-run its job") from e
    missing = [c for c in METRIC_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (expected step, metric, value)")
    try:
        return table.select(list(METRIC_COLUMNS)).cast(
            pa.schema([("step", pa.int64()), ("metric", pa.string()), ("value", pa.float64())])
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise DataError(f"{path}: columns step/metric/value have the wrong types ({e})") from e


def _column(values: list[Any]) -> pd.Series:
    """One hyperparameter column with a Parquet-friendly dtype (float, boolean or string)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="boolean")
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return pd.Series([math.nan if v is None else float(v) for v in values], dtype="float64")
    return pd.Series(
        [None if v is None else v if isinstance(v, str) else json.dumps(v, sort_keys=True) for v in values],
        dtype="string",
    )


def _run_table(runs: list[dict[str, Any]], sources: list[Path]) -> pd.DataFrame:
    """One row per run: the run-level columns plus the flattened setting."""
    rows = []
    for run, src in zip(runs, sources, strict=True):
        setting = run.get("setting")
        hp = flatten(setting) if isinstance(setting, Mapping) else {}
        clash = sorted(set(hp) & set(BASE_COLUMNS))
        if clash:
            raise DataError(
                f"{src}: setting key(s) {', '.join(clash)} clash with the aggregate's own columns"
            )
        rows.append(
            {
                "experiment": run.get("experiment"),
                "scale": run.get("scale"),
                "method": run["method"],
                "setting_id": run["setting_id"],
                "seed": int(run["seed"]),
                "status": run["status"],
                "diverged_at": run.get("diverged_at"),
                "stand_in": run.get("stand_in", False),
                **hp,
            }
        )
    keys = list(dict.fromkeys(k for r in rows for k in r))
    hp_keys = sorted(k for k in keys if k not in RUN_COLUMNS)
    table = pd.DataFrame(
        {
            "experiment": pd.Series([r["experiment"] for r in rows], dtype="string"),
            "scale": pd.Series([r["scale"] for r in rows], dtype="string"),
            "method": pd.Series([r["method"] for r in rows], dtype="string"),
            "setting_id": pd.Series([r["setting_id"] for r in rows], dtype="string"),
            "seed": pd.Series([r["seed"] for r in rows], dtype="int64"),
            "status": pd.Series([r["status"] for r in rows], dtype="string"),
            "diverged_at": pd.Series([r["diverged_at"] for r in rows], dtype="Int64"),
            "stand_in": pd.Series([r["stand_in"] for r in rows], dtype="bool"),
        }
    )
    for k in hp_keys:
        table[k] = _column([r.get(k) for r in rows])
    return table


def aggregate_runs(runs_root: str | Path, expected: Iterable[str] | None = None) -> pd.DataFrame:
    """The tidy table of every run under ``runs_root`` (or exactly the ``expected`` run.json paths).

    ``expected`` holds run.json paths relative to ``runs_root`` (a Job's ``outputs``); any missing one is
    an error, and runs lying around from an older grid are left out.
    """
    root = Path(runs_root)
    if expected is None:
        paths = find_runs(root)
    else:
        paths = sorted(root / p for p in expected)
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DataError(
                f"{root}: {len(missing)} expected run(s) have no run.json, e.g. {missing[0]}; "
                "run their training jobs first (snakemake ... or `lop run`)"
            )
    if not paths:
        raise DataError(f"{root}: no finished runs (no */*/seed-*/run.json); train the experiment first")
    runs = [read_run(p) for p in paths]
    seen: dict[tuple[str, str, int], Path] = {}
    for run, p in zip(runs, paths, strict=True):
        key = (run["method"], run["setting_id"], int(run["seed"]))
        if key in seen:
            raise DataError(f"{p}: duplicates run {key} of {seen[key]}")
        seen[key] = p
    experiments = {r.get("experiment") for r in runs}
    if len(experiments) > 1:
        raise DataError(f"{root}: runs of several experiments mixed ({sorted(map(str, experiments))})")
    scales = {r.get("scale") for r in runs}
    if len(scales) > 1:
        raise DataError(
            f"{root}: runs of several scales mixed ({sorted(map(str, scales))}); aggregate one scale at a time"
        )
    run_table = _run_table(runs, paths)
    metrics = [read_metrics(p.parent / METRICS_FILE, r.get("metrics_sha256")) for p, r in zip(paths, runs)]
    lengths = np.array([t.num_rows for t in metrics], dtype=np.int64)
    long = pa.concat_tables(metrics).to_pandas()
    long["step"] = long["step"].astype("int64")
    long["metric"] = long["metric"].astype("string")
    run_index = np.repeat(np.arange(len(paths)), lengths)
    table = pd.concat([run_table.iloc[run_index].reset_index(drop=True), long], axis=1)
    hp_cols = [c for c in run_table.columns if c not in RUN_COLUMNS]
    table = table[[*BASE_COLUMNS, *hp_cols]]
    return table.sort_values(SORT_KEYS, kind="stable").reset_index(drop=True)


def write_aggregate(table: pd.DataFrame, out: str | Path) -> Path:
    """Write the aggregate atomically (temp file + ``os.replace``); same table -> same bytes."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(str(out), "is a folder; give the aggregate's file name, e.g. results/agg/x.parquet")
    check_out_dir(out.parent, str(out))
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    atomic_write(out, lambda tmp: pq.write_table(arrow, tmp, compression="zstd"))
    return out


def read_aggregate(path: str | Path) -> pd.DataFrame:
    """Read an aggregate written by `write_aggregate`, checking its base columns."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such aggregate; build it with `snakemake {path}` or `lop aggregate`")
    try:
        table = pq.read_table(path).to_pandas()
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: unreadable Parquet ({e}); delete it and rebuild it") from e
    missing = [c for c in BASE_COLUMNS if c not in table.columns and c != "stand_in"]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; rebuild it with `lop aggregate`")
    if "stand_in" not in table.columns:  # an aggregate written before the column existed
        table.insert(list(table.columns).index("diverged_at") + 1, "stand_in", False)
    return table
