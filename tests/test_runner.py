"""The run contract: outputs, determinism, resume after SIGKILL, completeness, divergence."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_lop

SMOKE = ["run", "--params", "params/scr.yaml", "--scale", "smoke"]


def _metrics(root: Path) -> dict[str, pd.DataFrame]:
    return {
        str(p.parent.relative_to(root)): pd.read_parquet(p) for p in sorted(root.rglob("metrics.parquet"))
    }


def _folder_bytes(root: Path) -> dict[str, bytes]:
    """Every file DVC hashes in a runs folder (no dot-folders, no run.meta.json), with its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "run.meta.json" and not any(x.startswith(".") for x in p.relative_to(root).parts)
    }


def test_outputs_follow_the_contract(tmp_path):
    out = tmp_path / "runs"
    r = run_lop(*SMOKE, "--method", "bp", "--out", str(out))
    assert r.returncode == 0, r.stderr
    for sid in ("lr=0.01", "lr=0.001"):
        for seed in (0, 1):
            d = out / "bp" / sid / f"seed-{seed}"
            df = pd.read_parquet(d / "metrics.parquet")
            assert list(df.columns) == ["step", "metric", "value"]
            assert str(df["step"].dtype) == "int64" and str(df["value"].dtype) == "float64"
            assert df["step"].tolist() == [1000, 2000] and set(df["metric"]) == {"squared_error"}
            info = json.loads((d / "run.json").read_text())
            assert info["status"] == "complete" and info["seed"] == seed and info["setting_id"] == sid
            assert info["config"]["method"]["lr"] == float(sid.split("=")[1])
            assert info["config"]["problem"]["n_examples"] == 2000
            meta = json.loads((d / "run.meta.json").read_text())
            volatile = ("versions", "git_commit", "device", "wall_time_s", "started", "finished", "resumed_from_unit")
            assert set(meta) == set(volatile) and not set(info) & set(volatile)
            assert info["stand_in"] is False  # SCR has no dataset
    assert not list((out / ".checkpoints").glob("*.pt"))


def test_same_seed_same_results_and_rerun_is_a_no_op(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert run_lop(*SMOKE, "--method", "cbp", "--out", str(out)).returncode == 0
    ma, mb = _metrics(a), _metrics(b)
    assert ma.keys() == mb.keys()
    for k in ma:
        pd.testing.assert_frame_equal(ma[k], mb[k], check_exact=True)
    assert _folder_bytes(a) == _folder_bytes(b)  # every DVC-hashed file, byte for byte (run.json too)
    stamp = (a / "cbp").stat().st_mtime_ns
    r = run_lop(*SMOKE, "--method", "cbp", "--out", str(a))
    assert "already complete" in r.stderr and (a / "cbp").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "params",
    [
        ["run", "--params", "params/scr.yaml", "--scale", "smoke", "--method", "snp"],
        ["run", "--params", "params/permuted_mnist.yaml", "--scale", "smoke", "--method", "cbp"],
        ["run", "--params", "params/cl_permuted_mnist.yaml", "--scale", "smoke", "--method", "si"],
        [
            "run", "--params", "params/cl_split_mnist.yaml", "--scale", "smoke", "--method", "joint",
            "--setting-id", "problem.scenario=class",
        ],
    ],
)
def test_resume_after_sigkill_is_bit_identical(tmp_path, params):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert run_lop(*params, "--out", str(full), "--checkpoint-every", "1").returncode == 0
    r = run_lop(*params, "--out", str(killed), "--checkpoint-every", "1", env={"LOP_CRASH_AFTER_UNIT": "1"})
    assert r.returncode == -9, r.stderr  # SIGKILLed right after the first checkpoint
    assert list((killed / ".checkpoints").glob("*.pt"))
    assert not list(killed.rglob("run.json")) and not list(killed.rglob("metrics.parquet"))
    r = run_lop(*params, "--out", str(killed), "--checkpoint-every", "1")
    assert r.returncode == 0 and "resumed" in r.stderr
    ma, mb = _metrics(full), _metrics(killed)
    assert ma.keys() == mb.keys() and ma
    stand_in = "mnist" in params[2]  # their smoke scales train on the embedded 8x8 digits
    run_jsons = [*full.rglob("run.json"), *killed.rglob("run.json")]
    assert {json.loads(p.read_text())["stand_in"] for p in run_jsons} == {stand_in}
    for k in ma:
        pd.testing.assert_frame_equal(ma[k], mb[k], check_exact=True)
    assert _folder_bytes(full) == _folder_bytes(killed)  # run.json too: the resume shows only in run.meta.json
    metas = {json.loads(p.read_text())["resumed_from_unit"] for p in killed.rglob("run.meta.json")}
    assert metas == {1} and {json.loads(p.read_text())["resumed_from_unit"] for p in full.rglob("run.meta.json")} == {None}


def test_corrupt_checkpoint_is_reported(tmp_path):
    out = tmp_path / "runs"
    r = run_lop(
        *SMOKE,
        "--method",
        "bp",
        "--out",
        str(out),
        "--checkpoint-every",
        "1",
        env={"LOP_CRASH_AFTER_UNIT": "1"},
    )
    assert r.returncode == -9
    (ckpt,) = (out / ".checkpoints").glob("*.pt")
    ckpt.write_bytes(b"not a checkpoint")
    r = run_lop(*SMOKE, "--method", "bp", "--out", str(out))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and str(ckpt) in r.stderr
    assert "delete it" in r.stderr and not list(out.rglob("run.json"))


def test_diverging_run_is_recorded_not_crashed(tmp_path):
    run_file = tmp_path / "run.yaml"
    run_file.write_text(
        "experiment: scr\nproblem: {n_examples: 2000, bin_size: 1000, chunk: 1000}\n"
        "method: bp\nconfig: {lr: 50.0}\nseeds: [0]\n"
    )
    r = run_lop("run", "--run-file", str(run_file), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    info = json.loads(next((tmp_path / "out").rglob("run.json")).read_text())
    assert info["status"] == "diverged" and 0 <= info["diverged_at"] < 1000


def test_run_from_another_directory(tmp_path, repo):
    shutil.copy(repo / "params" / "scr.yaml", tmp_path / "scr.yaml")
    r = run_lop(
        "run",
        "--params",
        str(tmp_path / "scr.yaml"),
        "--scale",
        "smoke",
        "--method",
        "linear",
        "--seeds",
        "3",
        "--out",
        str(tmp_path / "o"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "linear" / "lr=0.01" / "seed-3" / "run.json").exists()


def test_model_snapshots_per_run(tmp_path):
    import torch

    out, models = tmp_path / "runs", tmp_path / "models"
    r = run_lop(
        *SMOKE, "--method", "bp", "--out", str(out), "--models-dir", str(models), "--models-every", "1"
    )
    assert r.returncode == 0, r.stderr
    files = sorted((models / "bp" / "lr=0.01" / "seed-1").glob("*.pt"))
    assert [f.name for f in files] == ["bin-00001.pt", "bin-00002.pt"]
    snap = torch.load(files[0], weights_only=True)
    assert snap["weights.0"].shape == (5, 20) and snap["weights.1"].shape == (1, 5)
    last = torch.load(files[1], weights_only=True)
    assert not torch.equal(snap["weights.0"], last["weights.0"])
