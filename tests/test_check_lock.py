"""workflow/scripts/check_lock.py (the CI step behind "a clean `dvc repro` reproduces the committed
dvc.lock"): how it compares a rebuilt lock with the committed one. The rebuild itself runs in CI
(.ci/run) and, at smoke scale, in tests/test_pipeline_dvc.py."""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

SPEC = importlib.util.spec_from_file_location("check_lock", REPO / "workflow/scripts/check_lock.py")
check_lock = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(check_lock)
LOCK = yaml.safe_load((REPO / "dvc.lock").read_text())


def test_the_committed_lock_reproduces_itself_and_covers_the_ci_subset():
    assert check_lock.differences(LOCK, copy.deepcopy(LOCK), None) == []
    outs = check_lock.lock_outputs(LOCK, check_lock.STAGES)  # the cheap CI subset: the stand-in data
    assert sorted(outs) == [
        "data/prepared/cifar10-standin",
        "data/prepared/cifar100-standin",
        "data/prepared/imagenet32-standin",
    ]
    assert all(o["md5"] and o["nfiles"] for o in outs.values())


def test_a_changed_hash_size_or_file_count_fails_with_the_fix():
    for key, value in (("md5", "0" * 32 + ".dir"), ("size", 1), ("nfiles", 999)):
        rebuilt = copy.deepcopy(LOCK)
        (out,) = [
            o for o in rebuilt["stages"]["train_ppo_ant"]["outs"] if o["path"].startswith("results/runs/")
        ]
        out[key] = value
        lines = check_lock.differences(LOCK, rebuilt, ["train_ppo_ant"])
        assert len(lines) == 1, lines
        assert out["path"] in lines[0] and key in lines[0]
        assert "run `dvc repro` and commit dvc.lock" in lines[0]
        assert check_lock.differences(LOCK, rebuilt, ["train_scr"]) == []  # other stages are not compared


def test_an_output_missing_from_either_lock_fails():
    rebuilt = copy.deepcopy(LOCK)
    rebuilt["stages"]["train_scr"]["outs"].append({"path": "results/agg/new.parquet", "md5": "x", "size": 1})
    (line,) = check_lock.differences(LOCK, rebuilt, ["train_scr"])
    assert "results/agg/new.parquet: not in the committed dvc.lock" in line
    (line,) = check_lock.differences(rebuilt, LOCK, ["train_scr"])
    assert "recorded in dvc.lock but not rebuilt" in line


def test_changed_dependencies_are_named_per_stage():
    rebuilt = copy.deepcopy(LOCK)
    (dep,) = [d for d in rebuilt["stages"]["train_scr"]["deps"] if d["path"] == "lop"]
    dep["md5"] = "1" * 32 + ".dir"
    assert check_lock.changed_dependencies(LOCK, rebuilt) == {"train_scr": ["lop"]}
    assert check_lock.changed_dependencies(LOCK, LOCK) == {}


def test_foreach_stages_are_selected_by_their_base_name():
    names = [n for n in LOCK["stages"] if n.startswith("standin@")]
    assert names
    assert set(check_lock.lock_outputs(LOCK, ["standin"])) == {
        o["path"] for n in names for o in LOCK["stages"][n]["outs"]
    }


@pytest.mark.pipeline
@pytest.mark.slow
@pytest.mark.timeout(3600)  # about a minute on idle cores; a shared machine can stretch it far
def test_a_clean_rebuild_is_compared_with_the_lock(tmp_path):
    """End to end on the cheapest stages (the two data stand-ins): the script rebuilds them in a clean
    copy and compares with a lock whose cifar100 entry was altered: that output, and only it, fails."""
    lock = copy.deepcopy(LOCK)
    (out,) = lock["stages"]["standin@cifar100"]["outs"]
    out["md5"] = "0" * 32 + ".dir"
    altered = tmp_path / "dvc.lock"
    altered.write_text(yaml.safe_dump(lock))
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "workflow/scripts/check_lock.py"),
            "--stages",
            "standin",
            "--lock",
            str(altered),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=3500,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert len(errors) == 1, proc.stderr
    assert "data/prepared/cifar100-standin: a clean rebuild differs" in errors[0]
    assert errors[0].endswith("run `dvc repro` and commit dvc.lock")
