"""The SLURM path (issue #3, item 6): resources map to sbatch options, and the smoke scale runs each
training job as a SLURM job on a single-node cluster started by .ci/slurm-setup.sh."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from types import SimpleNamespace

import pytest
import yaml
from pipeline_helpers import ROOT, fresh_copy, job_stats, snakemake

PROFILE = ROOT / "workflow" / "profiles" / "slurm" / "config.yaml"


class _Resources(dict):
    """Snakemake's job.resources: a mapping with attribute access."""

    __getattr__ = dict.get


def _submit(resources: dict, threads: int) -> str:
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    job = SimpleNamespace(resources=_Resources(resources), threads=threads)
    params = dict(run_uuid="u", slurm_logfile="l", comment_str="c", account="", partition="", workdir="/w")
    return get_submit_command(job, params) + set_gres_string(job)


def test_profile_targets_the_slurm_executor():
    profile = yaml.safe_load(PROFILE.read_text())
    assert profile["executor"] == "slurm"
    assert profile["slurm-status-command"] == "squeue"  # works without accounting
    assert set(profile["default-resources"]) >= {"mem_mb", "runtime", "gpu"}


def test_job_resources_map_to_sbatch_options():
    """lop.params resources (gpu, mem_mb, runtime, threads) are the plugin's resource names."""
    cpu = _submit({"gpu": 0, "mem_mb": 3000, "runtime": 90}, threads=4)
    assert "--mem 3000" in cpu and "-t 90" in cpu and "--cpus-per-task=4" in cpu and "--gpus" not in cpu
    gpu = _submit({"gpu": 1, "mem_mb": 16000, "runtime": 2880}, threads=4)
    assert "--gpus=1" in gpu and "--mem 16000" in gpu and "-t 2880" in gpu
    typed = _submit({"gpu": 2, "gpu_model": "a100", "mem_mb": 1000, "runtime": 5}, threads=1)
    assert "--gpus=a100:2" in typed
    gres = _submit({"gres": "gpu:a100:1", "mem_mb": 1000, "runtime": 5}, threads=1)
    assert "--gres=gpu:a100:1" in gres


def _start_cluster() -> None:
    if os.geteuid() != 0:
        pytest.skip("SLURM test needs root (it installs slurm-wlm and munge and starts their daemons)")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("SLURM test needs Debian packages (no apt-get, no slurmctld)")
    proc = subprocess.run(
        ["bash", str(ROOT / ".ci" / "slurm-setup.sh")], capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        pytest.skip(f"could not start a SLURM cluster: {(proc.stdout + proc.stderr)[-800:]}")


@pytest.mark.slurm
@pytest.mark.pipeline
@pytest.mark.slow
def test_smoke_scale_runs_every_training_job_as_a_slurm_job(tmp_path):
    _start_cluster()
    ws = fresh_copy(tmp_path / "lop")
    proc = snakemake(
        ws,
        "figures",
        "--profile",
        "workflow/profiles/slurm",
        "--config",
        "scale=smoke",
        "experiments=scr",
        timeout=1200,
    )
    stats = job_stats(proc.stdout + proc.stderr)
    n_train = sum(n for r, n in stats.items() if r.startswith("train__"))
    assert n_train > 0 and (ws / "results/figures/smoke/ed_fig2.png").stat().st_size > 10_000
    logs = sorted((ws / "results/logs/scr/smoke/train").glob("*.log"))
    assert len(logs) == n_train
    from lop.params import expand_jobs, load_params

    jobs = {j.job_id: j for j in expand_jobs(load_params(ws / "params/scr.yaml"), "smoke")}
    for log in logs:
        m = re.search(r"slurm_job_id=(\d+) ", log.read_text())
        assert m, f"{log} did not run inside a SLURM job"
        job = jobs[log.stem]
        info = subprocess.run(
            ["scontrol", "show", "job", m[1]], capture_output=True, text=True, timeout=60
        ).stdout
        if info:  # still known to slurmctld (MinJobAge): the allocation matches the declared resources
            assert f"NumCPUs={job.resources['threads']}" in info
            hours, minutes = divmod(job.resources["runtime"], 60)
            assert f"TimeLimit={hours:02d}:{minutes:02d}:00" in info
            assert f"MinMemoryNode={job.resources['mem_mb']}M" in info
