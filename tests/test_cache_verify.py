"""`lop cache verify` (issue #10): a `dvc pull` that brought nothing must not look like success."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lop.cache import CacheError, locked_outputs, missing_outputs, verify

LOCK = {
    "schema": "2.0",
    "stages": {
        "train_scr": {
            "outs": [
                {"path": "results/agg/scr-demo.parquet", "md5": "x", "size": 1},
                {"path": "results/runs/scr/demo", "md5": "y.dir", "size": 10, "nfiles": 3},
            ]
        },
        "train_gone": {"outs": [{"path": "results/runs/gone/demo", "md5": "z.dir", "nfiles": 1}]},
        "standin@mnist": {"outs": [{"path": "data/prepared/mnist-standin", "md5": "w.dir", "nfiles": 2}]},
    },
}
PIPELINE = {"stages": {"train_scr": {"cmd": "x"}, "standin": {"foreach": ["mnist"], "do": {"cmd": "y"}}}}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(LOCK))
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(PIPELINE))
    return tmp_path


def _runs(repo: Path, n: int) -> None:
    for i in range(n):
        f = repo / "results/runs/scr/demo/bp/s" / f"seed-{i}" / "run.json"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("{}")


def test_only_run_folders_of_current_stages_are_required(repo):
    outs = locked_outputs(repo / "dvc.lock")
    assert [(o.path, o.nfiles) for o in outs] == [("results/runs/scr/demo", 3)]


def test_nothing_pulled_fails_naming_the_folder_and_the_fix(repo):
    with pytest.raises(CacheError) as e:
        verify(repo / "dvc.lock", repo)
    msg = str(e.value)
    assert "1 of 1 run folder(s)" in msg and "results/runs/scr/demo" in msg
    assert "dvc remote modify --local results url" in msg and "\n" not in msg


def test_a_partial_pull_fails_with_the_file_count(repo):
    _runs(repo, 2)
    assert missing_outputs(locked_outputs(repo / "dvc.lock"), repo) == [
        "results/runs/scr/demo (2 of 3 files)"
    ]
    with pytest.raises(CacheError, match="2 of 3 files"):
        verify(repo / "dvc.lock", repo)


def test_ignored_files_do_not_count(repo):
    _runs(repo, 2)
    ckpt = repo / "results/runs/scr/demo/.checkpoints/job.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_text("x")
    with pytest.raises(CacheError):
        verify(repo / "dvc.lock", repo)


def test_complete_pull_passes(repo, lop_main):
    _runs(repo, 3)
    assert [o.path for o in verify(repo / "dvc.lock", repo)] == ["results/runs/scr/demo"]
    res = lop_main("cache", "verify", "--root", str(repo))
    assert res.returncode == 0 and res.stdout.startswith("ok: 1 run folder(s), 3 file(s)")


def test_cli_reports_one_error_line(repo, lop_main):
    res = lop_main("cache", "verify", "--root", str(repo))
    assert res.returncode == 2
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("error: cached results missing")


def test_a_lock_without_runs_or_no_lock_is_an_error(tmp_path, lop_main):
    res = lop_main("cache", "verify", "--root", str(tmp_path))
    assert res.returncode == 2 and "no such lock file" in res.stderr
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {}}))
    res = lop_main("cache", "verify", "--root", str(tmp_path))
    assert res.returncode == 2 and "records no training runs" in res.stderr


def test_experiments_filter(repo, lop_main):
    res = lop_main("cache", "verify", "--root", str(repo), "--experiments", "other")
    assert res.returncode == 2 and "records no training runs of other" in res.stderr
