"""Train a group of runs: checkpoint, resume, and write per-run results (the run contract).

Per run: ``<out>/<method>/<setting_id>/seed-<seed>/metrics.parquet`` (tidy: step, metric, value), then
``run.meta.json`` (volatile provenance: commit, versions, device, wall time, timestamps, resume unit) and
last ``run.json`` (resolved config, status, metrics checksum and ``stand_in`` = the trainer's
`Trainer.stand_in`): everything in run.json is a function of seed + config, so on one machine the
same job writes the same bytes.
The group checkpoints atomically to ``<out>/.checkpoints/<group-hash>.pt`` and a re-run after a kill resumes
from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from lop.config import to_dict
from lop.errors import CheckpointError, ConfigError
from lop.experiments.base import ExperimentSpec, MetricBlock, RunSpec, check_packable, check_supported
from lop.io import (
    atomic_write,
    device_description,
    git_commit,
    load_checkpoint,
    save_checkpoint,
    save_torch,
    versions,
)
from lop.limits import SEED_LIMIT, inside, safe_component

CHECKPOINT_FORMAT = 1
META_FILE = "run.meta.json"  # volatile provenance of a run (host, versions, times); never DVC-hashed


def run_dir(out: Path, run: RunSpec) -> Path:
    return Path(out) / run.method / run.setting_id / f"seed-{run.seed}"


def _checked_run_dir(out: Path, run: RunSpec, where: str) -> Path:
    """`run_dir` after checking that the method and setting id are safe path components and that the
    folder resolves inside `out` (nothing is ever written outside the output folder)."""
    safe_component(run.method, f"{where}: method", "method name")
    safe_component(run.setting_id, f"{where}: setting id", "setting id")
    if isinstance(run.seed, bool) or not isinstance(run.seed, int) or not 0 <= run.seed < SEED_LIMIT:
        raise ConfigError(f"{where}: seed", f"seed {run.seed!r} is not an integer in [0, 2**63)")
    return inside(out, run_dir(out, run), where)


def resolved_config(spec: ExperimentSpec, scale: str, problem: Any, run: RunSpec) -> dict[str, Any]:
    return {
        "experiment": spec.name,
        "scale": scale,
        "problem": to_dict(problem),
        "method_name": run.method,
        "setting_id": run.setting_id,
        "setting": run.setting,
        "method": to_dict(run.config),
        "seed": run.seed,
    }


def group_hash(spec: ExperimentSpec, scale: str, problem: Any, runs: Sequence[RunSpec]) -> str:
    blob = json.dumps([resolved_config(spec, scale, problem, r) for r in runs], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from lop.errors import ConfigError

    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError("device", f"unknown device {name!r}; use one of: auto, cpu, cuda, cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError("device", f"unsupported device {name!r}; use one of: auto, cpu, cuda, cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", "CUDA was requested but no GPU is available; use --device cpu")
    return dev


class _Progress:
    """tqdm on a terminal; one line per interval in log files."""

    def __init__(self, total: int, start: int, label: str, enabled: bool | None, interval_s: float = 30.0):
        self.total, self.label, self.interval = total, label, interval_s
        self.tty = sys.stderr.isatty() if enabled is None else enabled
        self.bar = None
        self.t0 = self.last = time.monotonic()
        self.start = start
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=label, unit="unit", dynamic_ncols=True)

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.monotonic()
        if now - self.last >= self.interval or done == self.total:
            rate = (done - self.start) / max(now - self.t0, 1e-9)
            eta = (self.total - done) / rate if rate > 0 else float("inf")
            print(
                f"[lop] {self.label}: {done}/{self.total} units ({100 * done / self.total:.0f}%), "
                f"{rate:.3g} units/s, eta {eta:.0f}s",
                file=sys.stderr,
                flush=True,
            )
            self.last = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def save_models(trainer: Any, runs: Sequence[RunSpec], models_dir: Path, unit: int) -> None:
    """Save each run's slice of the trainer's network tensors after `unit` units (atomic per file)."""
    state = {k: v.detach().cpu() for k, v in trainer.model_state().items()}
    for k, run in enumerate(runs):
        per_run = {name: t[k].clone() for name, t in state.items() if t.dim() > 0 and t.shape[0] == len(runs)}
        path = run_dir(models_dir, run) / f"{trainer.unit_name}-{unit:05d}.pt"
        save_torch(path, per_run)


def _is_complete(path: Path, config: dict[str, Any]) -> bool:
    rj = path / "run.json"
    if not rj.exists() or not (path / "metrics.parquet").exists():
        return False
    try:
        data = json.loads(rj.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return data.get("status") in ("complete", "diverged") and data.get("config") == config


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _checked_resume_state(
    state: dict[str, Any], path: Path, n_units: int, n_runs: int
) -> tuple[int, float, str]:
    """(unit, elapsed, started) of a checkpoint whose contents fit this run group: the unit within
    [1, n_units), finite elapsed time, and metric blocks of matching shapes (steps [T], values [runs, T]);
    a tampered or foreign checkpoint is a `CheckpointError`, never a silent resume."""
    fix = "delete it to restart the runs"
    unit, elapsed, started = state.get("unit"), state.get("elapsed"), state.get("started")
    if isinstance(unit, bool) or not isinstance(unit, int) or not 0 < unit < n_units:
        raise CheckpointError(f"{path}: unit {unit!r} is outside 1..{n_units - 1}; {fix}")
    if isinstance(elapsed, bool) or not isinstance(elapsed, int | float) or not 0 <= elapsed < 1e12:
        raise CheckpointError(f"{path}: elapsed time {elapsed!r} is not a duration; {fix}")
    if not isinstance(started, str):
        raise CheckpointError(f"{path}: 'started' is not a timestamp; {fix}")
    blocks = state.get("metrics")
    if not isinstance(blocks, dict):
        raise CheckpointError(f"{path}: no metrics; {fix}")
    for name, block in blocks.items():
        steps = block.get("steps") if isinstance(block, dict) else None
        values = block.get("values") if isinstance(block, dict) else None
        ok = (
            isinstance(steps, torch.Tensor)
            and isinstance(values, torch.Tensor)
            and steps.dim() == 1
            and values.dim() == 2
            and values.shape == (n_runs, steps.shape[0])
        )
        if not ok:
            raise CheckpointError(
                f"{path}: metric {str(name)[:40]!r} has the wrong shape for {n_runs} runs; {fix}"
            )
    return unit, float(elapsed), started


def run_group(
    spec: ExperimentSpec,
    problem: Any,
    runs: Sequence[RunSpec],
    out: Path,
    *,
    scale: str,
    device: torch.device,
    checkpoint_every: int | None = None,
    checkpoint_minutes: float = 10.0,
    progress: bool | None = None,
    models_dir: Path | None = None,
    models_every: int = 0,
) -> list[Path]:
    """Train `runs` together (or resume them) and write their results; returns the run folders.

    With `models_dir` and `models_every` > 0, each run's network tensors are saved after every
    `models_every` units (and the last) to ``<models_dir>/<method>/<setting_id>/seed-<seed>/<unit>-NNNNN.pt``,
    e.g. at task or increment boundaries, to recompute internals after a run.
    """
    out = Path(out)
    configs = [resolved_config(spec, scale, problem, r) for r in runs]
    dirs = [_checked_run_dir(out, r, "--out") for r in runs]
    if models_dir is not None:
        for r in runs:
            _checked_run_dir(Path(models_dir), r, "--models-dir")
    if all(_is_complete(d, c) for d, c in zip(dirs, configs)):
        print(f"[lop] all {len(runs)} runs already complete in {out}", file=sys.stderr)
        return dirs
    check_packable(runs)
    for r in runs:
        check_supported(spec, r.config, f"method {r.method!r} [{r.setting_id}]")
    ghash = group_hash(spec, scale, problem, runs)
    ckpt_path = out / ".checkpoints" / f"{ghash}.pt"
    started = datetime.now(UTC).isoformat(timespec="seconds")
    trainer = spec.build(problem, runs, device)
    metrics: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    unit, elapsed = 0, 0.0
    resumed_from: int | None = None
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        if state.get("group_hash") != ghash or state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{ckpt_path}: belongs to another run group; delete it to restart")
        try:
            trainer.load_state_dict(state["trainer"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{ckpt_path}: does not match this run group ({e}); delete it") from e
        unit, elapsed, started = _checked_resume_state(state, ckpt_path, trainer.n_units, len(runs))
        for name, block in state["metrics"].items():
            metrics[name] = [(block["steps"], block["values"])]
        resumed_from = unit
        print(f"[lop] resumed from {ckpt_path} at {trainer.unit_name} {unit}", file=sys.stderr)

    crash_after = int(os.environ.get("LOP_CRASH_AFTER_UNIT", "-1"))  # test hook: SIGKILL after unit
    label = f"{spec.name} {runs[0].method} ({len(runs)} runs)"
    bar = _Progress(trainer.n_units, unit, label, progress)
    t_start = time.monotonic()
    last_ckpt = t_start

    def snapshot(next_unit: int) -> None:
        merged = {
            name: {"steps": torch.cat([s for s, _ in blocks]), "values": torch.cat([v for _, v in blocks], 1)}
            for name, blocks in metrics.items()
        }
        for name, m in merged.items():
            metrics[name] = [(m["steps"], m["values"])]
        save_checkpoint(
            ckpt_path,
            {
                "format": CHECKPOINT_FORMAT,
                "group_hash": ghash,
                "unit": next_unit,
                "elapsed": elapsed + time.monotonic() - t_start,
                "started": started,
                "trainer": trainer.state_dict(),
                "metrics": merged,
            },
        )

    while unit < trainer.n_units:
        blocks: list[MetricBlock] = trainer.train_unit(unit)
        for b in blocks:
            metrics.setdefault(b.name, []).append((b.steps.detach().cpu(), b.values.detach().cpu()))
        unit += 1
        if (
            models_dir is not None
            and models_every > 0
            and (unit % models_every == 0 or unit == trainer.n_units)
        ):
            save_models(trainer, runs, Path(models_dir), unit)
        bar.update(unit)
        now = time.monotonic()
        due_units = checkpoint_every is not None and unit % checkpoint_every == 0
        if unit < trainer.n_units and (due_units or now - last_ckpt >= 60.0 * checkpoint_minutes):
            snapshot(unit)
            last_ckpt = now
            if crash_after >= 0 and unit >= crash_after:
                os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    wall = elapsed + time.monotonic() - t_start
    diverged = trainer.diverged_at().cpu().tolist()
    finished = datetime.now(UTC).isoformat(timespec="seconds")
    # run.json holds only what the computation determines (same seed + config -> same bytes, so DVC's
    # hash of a runs folder is reproducible); where, when and how long it ran goes to run.meta.json,
    # which `.dvcignore` keeps out of DVC's hashes (docs/reliability.md, "Reproducible hashes").
    group = {"group_size": len(runs), "group_hash": ghash}
    meta = {
        "git_commit": git_commit(),
        "versions": versions(),
        "device": device_description(device),
        "wall_time_s": round(wall, 3),
        "resumed_from_unit": resumed_from,
        "started": started,
        "finished": finished,
    }
    for k, (run, path, cfg) in enumerate(zip(runs, dirs, configs)):
        frames = []
        for name, parts in metrics.items():
            steps = torch.cat([s for s, _ in parts]).to(torch.int64).numpy()
            values = torch.cat([v[k] for _, v in parts]).to(torch.float64).numpy()
            frames.append(pd.DataFrame({"step": steps, "metric": name, "value": values}))
        df = (
            pd.concat(frames, ignore_index=True)
            if frames
            else pd.DataFrame(columns=["step", "metric", "value"])
        )
        df["metric"] = df["metric"].astype(str)
        atomic_write(path / "metrics.parquet", lambda p, df=df: df.to_parquet(p, index=False))
        record = {
            "metrics_sha256": _sha256(path / "metrics.parquet"),
            "status": "diverged" if diverged[k] >= 0 else "complete",
            "diverged_at": diverged[k] if diverged[k] >= 0 else None,
            "experiment": spec.name,
            "scale": scale,
            "method": run.method,
            "setting": run.setting,
            "setting_id": run.setting_id,
            "seed": run.seed,
            "stand_in": bool(trainer.stand_in),
            "config": cfg,
            **group,
        }
        atomic_write(path / META_FILE, lambda p, m=meta: p.write_text(json.dumps(m, indent=2) + "\n"))
        atomic_write(path / "run.json", lambda p, r=record: p.write_text(json.dumps(r, indent=2) + "\n"))
    ckpt_path.unlink(missing_ok=True)
    return dirs
