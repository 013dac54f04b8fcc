"""Helpers of the pipeline tests: a fresh copy of the working tree and Snakemake/DVC runners."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
DVC = [sys.executable, "-m", "dvc"]
TRAIN_PREFIX = "train__"


def fresh_copy(dest: Path) -> Path:
    """Copy the working tree (tracked + untracked, not ignored) into ``dest`` as a new git repo.

    This is what a fresh ``git clone`` holds once the lead commits; results, caches and ``.snakemake``
    of the original never come along.
    """
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout.split(b"\0")
    dest.mkdir(parents=True, exist_ok=True)
    for raw in files:
        if not raw:
            continue
        rel = raw.decode()
        src = ROOT / rel
        if not src.is_file():  # deleted but still tracked
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "fresh copy of the working tree")
    return dest


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def env_for(ws: Path, **extra: str) -> dict[str, str]:
    """The workspace's own `lop` package first on the path (a fresh clone runs its own code)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAKEMAKE")}
    env["PYTHONPATH"] = os.pathsep.join([str(ws), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def run(
    cmd: list[str], ws: Path, timeout: float, check: bool = True, **env: str
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, cwd=ws, env=env_for(ws, **env), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def snakemake(
    ws: Path, *args: str, timeout: float = 600, check: bool = True, **env: str
) -> subprocess.CompletedProcess:
    return run([*SNAKEMAKE, *args], ws, timeout, check, **env)


def dvc(ws: Path, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    return run([*DVC, *args], ws, timeout, check)


def job_stats(output: str) -> dict[str, int]:
    """Rule -> job count from Snakemake's "Job stats" table (empty when there was nothing to do)."""
    m = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\ntotal\s+\d+", output, re.S)
    if not m:
        return {}
    rows = (line.split() for line in m.group(1).splitlines() if line.strip())
    return {name: int(count) for name, count in rows}


def training_jobs(output: str) -> int:
    return sum(n for rule, n in job_stats(output).items() if rule.startswith(TRAIN_PREFIX))
