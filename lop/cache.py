"""`lop cache verify`: are the cached results of a DVC lock file really in the workspace?

`dvc pull --allow-missing` exits 0 ("Everything is up to date") when the remote is unreachable or holds
none of the files: it cannot tell "nothing to fetch" from "nothing fetched". This check reads the lock file
DVC pulled from (dvc.lock by default) and compares every recorded training-run folder with the workspace:
it fails with one line naming what is missing and the remote to fix, or reports what is there.
No DVC import: it reads the lock file's YAML (docs/cached-results.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from lop.errors import LopError

RUNS_PREFIX = "results/runs/"  # what from-cache figures need; aggregates and figures are rebuilt from it


class CacheError(LopError):
    """Cached results that should have been pulled are not in the workspace."""


@dataclass(frozen=True)
class Output:
    path: str
    nfiles: int | None  # a folder's file count as DVC recorded it; None for a file


def locked_outputs(lock_file: Path, prefix: str = RUNS_PREFIX) -> list[Output]:
    """The outputs under ``prefix`` recorded in a dvc.lock file, with their file counts."""
    if not lock_file.is_file():
        raise CacheError(f"{lock_file}: no such lock file; run this in the repository root (or give --lock)")
    try:
        lock = yaml.safe_load(lock_file.read_text()) or {}
    except yaml.YAMLError as e:
        raise CacheError(f"{lock_file}: not valid YAML: {e}") from e
    stages = lock.get("stages") or {}
    pipeline = lock_file.with_name("dvc.yaml")
    if pipeline.is_file():  # a lock keeps entries of stages since removed from dvc.yaml: skip those
        try:
            current = set((yaml.safe_load(pipeline.read_text()) or {}).get("stages") or {})
        except yaml.YAMLError as e:
            raise CacheError(f"{pipeline}: not valid YAML: {e}") from e
        stages = {name: st for name, st in stages.items() if name.split("@")[0] in current}
    out = []
    for stage in stages.values():
        for o in stage.get("outs") or []:
            path = str(o.get("path", ""))
            if path.startswith(prefix):
                n = o.get("nfiles")
                out.append(Output(path, int(n) if n is not None else None))
    return sorted(out, key=lambda o: o.path)


def _tracked_files(folder: Path) -> int:
    """Files DVC would track in a folder: .dvcignore leaves out dot-folders (checkpoints), temp files and
    each run's volatile ``run.meta.json``."""
    n = 0
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).parts
        if (
            p.is_file()
            and not any(part.startswith(".") for part in rel)
            and "__pycache__" not in rel
            and p.name != "run.meta.json"
        ):
            n += 1
    return n


def missing_outputs(outputs: list[Output], root: Path) -> list[str]:
    """Outputs absent from the workspace, or folders holding fewer files than the lock recorded."""
    missing = []
    for o in outputs:
        p = root / o.path
        if not p.exists():
            missing.append(o.path)
        elif o.nfiles is not None and (not p.is_dir() or _tracked_files(p) < o.nfiles):
            have = _tracked_files(p) if p.is_dir() else 0
            missing.append(f"{o.path} ({have} of {o.nfiles} files)")
    return missing


def remote_url(root: Path, name: str = "results") -> str | None:
    """The URL of a DVC remote as DVC resolves it (including .dvc/config.local), or None."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "dvc", "remote", "list"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == name:
            return parts[1]
    return None


def verify(lock_file: Path, root: Path, experiments: set[str] | None = None) -> list[Output]:
    """Raise CacheError unless every run folder of the lock file (of ``experiments``) is complete."""
    outputs = locked_outputs(lock_file)
    if experiments:
        outputs = [o for o in outputs if o.path.removeprefix(RUNS_PREFIX).split("/")[0] in experiments]
    if not outputs:
        raise CacheError(
            f"{lock_file}: records no training runs{' of ' + ', '.join(sorted(experiments)) if experiments else ''}; "
            "nothing was ever published for this commit (run the pipeline, or check out a commit with results)"
        )
    missing = missing_outputs(outputs, root)
    if missing:
        url = remote_url(root)
        where = f"remote 'results' ({url})" if url else "the 'results' remote"
        raise CacheError(
            f"cached results missing: {len(missing)} of {len(outputs)} run folder(s) recorded in {lock_file} "
            f"are not here, e.g. {missing[0]}. `dvc pull` did not bring them from {where}: it is "
            "unreachable or does not hold this commit's results. Point it at the published results with "
            "`dvc remote modify --local results url <URL>` and pull again (docs/cached-results.md)"
        )
    return outputs


def cmd_verify(args: argparse.Namespace) -> int:
    root = Path(args.root)
    lock = Path(args.lock) if Path(args.lock).is_absolute() else root / args.lock
    only = {e for e in args.experiments.split(",") if e} if args.experiments else None
    outputs = verify(lock, root, only)
    files = sum(o.nfiles or 1 for o in outputs)
    print(f"ok: {len(outputs)} run folder(s), {files} file(s) of {lock.name} present")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    cache = sub.add_parser("cache", help="check cached results pulled with DVC")
    csub = cache.add_subparsers(dest="cache_command", required=True)
    ver = csub.add_parser(
        "verify",
        help="fail unless every training-run folder recorded in the DVC lock file is in the workspace",
    )
    ver.add_argument("--lock", default="dvc.lock", help="DVC lock file (default dvc.lock)")
    ver.add_argument("--root", default=".", help="repository root (default .)")
    ver.add_argument("--experiments", help="only these experiments (comma list)")
    ver.set_defaults(func=cmd_verify)
