"""Interruptions (issue #3, item 7): a killed job resumes from its checkpoint; killing Snakemake and
running it again redoes no finished run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from pipeline_helpers import SNAKEMAKE, env_for, fresh_copy, job_stats, run, snakemake, training_jobs

pytestmark = [pytest.mark.pipeline, pytest.mark.slow]
TARGET = ("results/agg/scr-smoke.parquet", "--config", "scale=smoke")
RUNS = Path("results/runs/scr/smoke")


def _finished(ws: Path) -> dict[Path, tuple[int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (ws / RUNS).glob("*/*/seed-*/run.json")}


def test_killed_job_resumes_from_its_checkpoint(tmp_path):
    ws = fresh_copy(tmp_path / "lop")
    ckpt = {"LOP_RUN_EXTRA_ARGS": "--checkpoint-every 1"}
    crashed = snakemake(  # --keep-going: every job starts (and is killed), however the jobs interleave
        ws,
        *TARGET,
        "--cores",
        "2",
        "--keep-going",
        check=False,
        timeout=600,
        LOP_CRASH_AFTER_UNIT="1",
        **ckpt,
    )
    assert crashed.returncode != 0
    n_jobs = training_jobs(crashed.stdout + crashed.stderr)
    assert n_jobs > 0 and not _finished(ws)
    assert len(list((ws / RUNS / ".checkpoints").glob("*.pt"))) == n_jobs

    resumed = snakemake(ws, *TARGET, "--cores", "2", timeout=600, **ckpt)
    assert training_jobs(resumed.stdout + resumed.stderr) == n_jobs
    logs = list((ws / "results/logs/scr/smoke/train").glob("*.log"))
    assert len(logs) == n_jobs and all("resumed from" in p.read_text() for p in logs)
    assert not list((ws / RUNS / ".checkpoints").glob("*.pt"))

    # The resumed runs equal an uninterrupted run of the same job (CPU: bit-identical).
    ref = tmp_path / "ref"
    run(
        [
            "lop",
            "run",
            "--params",
            "params/scr.yaml",
            "--scale",
            "smoke",
            "--method",
            "bp",
            "--seeds",
            "0,1",
            "--out",
            str(ref),
        ],
        ws,
        timeout=300,
    )
    ref_metrics = sorted(ref.glob("bp/*/seed-*/metrics.parquet"))
    assert ref_metrics
    for p in ref_metrics:
        got = pd.read_parquet(ws / RUNS / p.relative_to(ref))
        pd.testing.assert_frame_equal(got, pd.read_parquet(p))


def test_killing_snakemake_redoes_no_finished_run(tmp_path):
    ws = fresh_copy(tmp_path / "lop")
    total = training_jobs(snakemake(ws, "-n", *TARGET, timeout=300).stdout)
    log = tmp_path / "snakemake.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [*SNAKEMAKE, *TARGET, "--cores", "1"],
            cwd=ws,
            env=env_for(ws),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if re.search(r"Finished jobid: \d+ \(Rule: train__", log.read_text()):
                break  # one training job is done, the next one is running
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=600)  # snakemake lets the running job finish its step; slow on a loaded machine
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    finished = _finished(ws)
    from lop.params import load_params, n_runs

    if not finished or len(finished) == n_runs(load_params(ws / "params/scr.yaml"), "smoke"):
        pytest.skip("the kill did not land between two jobs (machine too fast or too slow)")

    again = snakemake(ws, *TARGET, "--cores", "2", timeout=600)
    out = again.stdout + again.stderr
    assert 0 < training_jobs(out) < total
    for p, (mtime, data) in finished.items():
        assert p.stat().st_mtime_ns == mtime and p.read_bytes() == data, f"{p} was redone"
    assert len(_finished(ws)) > len(finished)
    assert job_stats(out).get("aggregate") == 1
