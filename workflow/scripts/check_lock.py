"""Does a clean rebuild reproduce the committed dvc.lock? (docs/reliability.md, "Reproducible hashes")

    python workflow/scripts/check_lock.py                      # the CI subset (STAGES below), minutes
    python workflow/scripts/check_lock.py --stages all         # every stage: the whole demo pipeline
    python workflow/scripts/check_lock.py --stages train_scr figures --keep /tmp/rebuild
    python workflow/scripts/check_lock.py --stages all --update   # regenerate dvc.lock (then commit it)

It copies the committed tree (``git ls-files``: no results, caches or .snakemake) into a temporary folder,
runs ``dvc repro`` there for the chosen stages (and the stages they depend on), and compares the hash, size
and file count DVC recorded for each of their outputs with the committed dvc.lock — DVC's own hashes, so
exactly what `dvc status` would compare. Every output is deterministic (run.json holds no host or time;
run.meta.json is in .dvcignore; figures carry fixed metadata), so any difference means the lock was
written by other code or on a machine whose results differ (PPO: see docs/reliability.md). Exit 1 with
one line per differing output and the fix: run `dvc repro` and commit dvc.lock.

``--stages all --update`` is the one command that regenerates the lock: a clean rebuild of the whole demo
pipeline whose dvc.lock replaces the repository's (a plain `dvc repro` in a workspace that already holds
runs keeps them when only code changed: Snakemake retrains on changed configs, not on changed code).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
# The CI subset must rebuild in a few minutes: the demo stand-in data stages (CIFAR-100 and ImageNet32
# stand-ins, generated and prepared: 36 s of CPU). No training stage is that cheap at demo scale
# (train_cl_split_mnist: 447 s of CPU over 38 jobs; one of train_ppo_ant's 5 jobs ~14 min on a loaded
# 2-core machine); check those with --stages train_<experiment> (docs/reliability.md).
STAGES = ("standin",)
FIX = "run `dvc repro` and commit dvc.lock"
KEYS = ("md5", "size", "nfiles")


def lock_outputs(lock: Mapping[str, Any], stages: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """``{out path: {md5, size, nfiles}}`` of the given stages (all when None) of a parsed dvc.lock; a
    ``foreach`` stage ``standin@cifar100`` is selected by its full name or by ``standin``."""
    wanted = None if stages is None else set(stages)
    out: dict[str, dict[str, Any]] = {}
    for name, stage in (lock.get("stages") or {}).items():
        if wanted is not None and name not in wanted and name.split("@")[0] not in wanted:
            continue
        for o in stage.get("outs") or []:
            out[str(o["path"])] = {k: o.get(k) for k in KEYS}
    return out


def differences(
    committed: Mapping[str, Any], rebuilt: Mapping[str, Any], stages: Iterable[str] | None
) -> list[str]:
    """One line per output of ``stages`` whose rebuilt hash/size/file count differs from the committed
    lock's (or that one of the two lacks); empty when the rebuild reproduces the lock."""
    want = lock_outputs(committed, stages)
    got = lock_outputs(rebuilt, stages)
    lines = []
    for path in sorted(set(want) | set(got)):
        if path not in want:
            lines.append(f"{path}: not in the committed dvc.lock; {FIX}")
        elif path not in got:
            lines.append(f"{path}: recorded in dvc.lock but not rebuilt; {FIX}")
        elif want[path] != got[path]:
            diff = ", ".join(
                f"{k} {want[path][k]} -> {got[path][k]}" for k in KEYS if want[path][k] != got[path][k]
            )
            lines.append(f"{path}: a clean rebuild differs from dvc.lock ({diff}); {FIX}")
    return lines


def changed_dependencies(committed: Mapping[str, Any], rebuilt: Mapping[str, Any]) -> dict[str, list[str]]:
    """``{stage: [dependency paths whose hash differs]}`` for the stages of both locks: code or params
    changed since the committed lock was written (a note, not an error: the outputs decide)."""
    out = {}
    for name, stage in (rebuilt.get("stages") or {}).items():
        old = {
            d["path"]: d.get("md5")
            for d in ((committed.get("stages") or {}).get(name) or {}).get("deps") or []
        }
        new = {d["path"]: d.get("md5") for d in stage.get("deps") or []}
        changed = sorted(k for k in new.keys() | old.keys() if old.get(k) != new.get(k))
        if changed and old:
            out[name] = changed
    return out


def _copy_tree(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout.split(
        b"\0"
    )
    for raw in filter(None, files):
        src = ROOT / raw.decode()
        if src.is_file():
            (dest / raw.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / raw.decode())
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "clean copy", "--no-verify"],
    ):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True,
                       env={**os.environ, "GIT_AUTHOR_NAME": "lop", "GIT_AUTHOR_EMAIL": "lop@localhost",
                            "GIT_COMMITTER_NAME": "lop", "GIT_COMMITTER_EMAIL": "lop@localhost"})  # fmt: skip


def rebuild(stages: list[str] | None, workdir: Path) -> dict[str, Any]:
    """`dvc repro` of ``stages`` (everything when None) in a clean copy of the committed tree; returns
    the dvc.lock it wrote."""
    _copy_tree(workdir)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(workdir), os.environ.get("PYTHONPATH")])),
    }
    cmd = ["dvc", "repro", *(stages or [])]
    print(f"[check_lock] {' '.join(cmd)} in {workdir}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise SystemExit(f"error: `dvc repro` failed in the clean copy {workdir}:\n{tail}")
    return yaml.safe_load((workdir / "dvc.lock").read_text()) or {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", nargs="+", default=list(STAGES), help="stages to rebuild, or `all`")
    ap.add_argument("--keep", type=Path, help="rebuild in this (new) folder and keep it")
    ap.add_argument(
        "--lock", type=Path, default=ROOT / "dvc.lock", help="the lock to compare with (default: ./dvc.lock)"
    )
    ap.add_argument(
        "--update", action="store_true", help="write the rebuilt lock to ./dvc.lock (needs --stages all)"
    )
    args = ap.parse_args(argv)
    if args.update and args.stages != ["all"]:
        ap.error("--update rewrites the whole lock: use it with --stages all")
    stages = None if args.stages == ["all"] else list(args.stages)
    committed = yaml.safe_load(args.lock.read_text()) or {}
    unknown = [s for s in stages or [] if not lock_outputs(committed, [s])]
    if unknown:
        print(f"error: dvc.lock: no stage {', '.join(unknown)} recorded; {FIX}", file=sys.stderr)
        return 1
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=False)
        rebuilt = rebuild(stages, args.keep)
        text = (args.keep / "dvc.lock").read_text()
    else:
        with tempfile.TemporaryDirectory(prefix="lop-lock-") as tmp:
            rebuilt = rebuild(stages, Path(tmp))
            text = (Path(tmp) / "dvc.lock").read_text()
    lines = differences(committed, rebuilt, stages)
    for name, deps in changed_dependencies(committed, rebuilt).items():
        print(
            f"note: {args.lock.name}: stage {name}: dependencies changed since it was written: {', '.join(deps)}"
        )
    if args.update:
        (ROOT / "dvc.lock").write_text(text)
        print(f"dvc.lock rewritten from a clean rebuild ({len(lines)} outputs changed); commit it")
        return 0
    for line in lines:
        print(f"error: {args.lock.name}: {line}", file=sys.stderr)
    if not lines:
        n = len(lock_outputs(committed, stages))
        print(
            f"ok: a clean rebuild reproduces dvc.lock for {n} outputs of {', '.join(stages or ['every stage'])}"
        )
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
