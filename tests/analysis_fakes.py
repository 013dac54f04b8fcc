"""Hand-made run folders in the `lop run` output format (docs/architecture.md), for analysis tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def write_run(
    root: Path,
    method: str,
    setting_id: str,
    seed: int,
    metrics: dict[str, tuple[np.ndarray, np.ndarray]],
    setting: dict[str, Any] | None = None,
    status: str = "complete",
    diverged_at: int | None = None,
    experiment: str = "toy",
    scale: str = "demo",
    stand_in: bool | None = None,
) -> Path:
    """Write ``metrics.parquet`` then ``run.json`` for one run; returns the run.json path
    (``stand_in=None`` leaves the key out, like runs written before it existed)."""
    folder = root / method / setting_id / f"seed-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    frames = [
        pd.DataFrame({"step": np.asarray(s, dtype=np.int64), "metric": name, "value": np.asarray(v, float)})
        for name, (s, v) in metrics.items()
    ]
    pd.concat(frames, ignore_index=True).to_parquet(folder / "metrics.parquet", index=False)
    run = {
        "status": status,
        "diverged_at": diverged_at,
        "experiment": experiment,
        "scale": scale,
        "method": method,
        "setting": setting or {},
        "setting_id": setting_id,
        "seed": seed,
        "config": {"method": setting or {}},
    }
    if stand_in is not None:
        run["stand_in"] = stand_in
    (folder / "run.json").write_text(json.dumps(run, indent=2))
    return folder / "run.json"


def toy_runs(root: Path, seeds: int = 3, steps: int = 40) -> list[Path]:
    """Two methods x settings x seeds with known values: value = base + 0.01*seed + step/1000."""
    out = []
    step = np.arange(steps, dtype=np.int64)
    for method, settings in {"bp": {"lr-0.01": 0.01, "lr-0.001": 0.001}, "cbp": {"rr-1e-4": 1e-4}}.items():
        for sid, hp in settings.items():
            for seed in range(seeds):
                base = 1.0 if method == "bp" else 0.5
                vals = base + 0.01 * seed + step / 1000.0
                setting = {"lr": hp} if method == "bp" else {"cbp": {"replacement_rate": hp}}
                metrics = {
                    "loss": (step, vals),
                    "dead_units/layer1": (step[::10], np.full(len(step[::10]), 0.1 * (seed + 1))),
                    "dead_units/layer2": (step[::10], np.full(len(step[::10]), 0.3 * (seed + 1))),
                }
                out.append(write_run(root, method, sid, seed, metrics, setting))
    return out
