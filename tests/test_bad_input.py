"""Bad input stops before training: one line naming the key/file and the fix, exit code 2, no results."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, run_lop


def _params(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load((REPO / "params" / "scr.yaml").read_text())
    mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _check_error(r, *needles, out: Path | None = None):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    for n in needles:
        assert n in last, (n, last)
    if out is not None:
        assert not list(out.rglob("run.json")) and not list(out.rglob("metrics.parquet"))


def _smoke_method(data, method="bp"):
    """The smoke scale's patch of `method` (created empty), with `base` and `grid` mappings."""
    patch = data["scales"]["smoke"].setdefault("patch", {}).setdefault(method, {})
    patch.setdefault("base", {})
    patch.setdefault("grid", {})
    return patch


BAD_PARAMS = [
    (lambda d: d.update(experiment="nope"), ["experiment", "unknown experiment 'nope'"]),
    (lambda d: _smoke_method(d)["base"].update(lrr=0.1), ["scales.smoke.patch.bp", "lrr", "unknown key"]),
    (lambda d: _smoke_method(d)["base"].update(momentum="fast"), ["momentum", "expected a number"]),
    (lambda d: _smoke_method(d)["grid"].update(lr=[0.0]), ["lr", "step size must be > 0"]),
    (lambda d: _smoke_method(d)["grid"].update(lr=[-0.01]), ["lr", "step size must be > 0"]),
    (
        lambda d: _smoke_method(d, "cbp")["grid"].update({"cbp.replacement_rate": [1.5]}),
        ["replacement_rate", "[0, 1]"],
    ),
    (lambda d: d["scales"]["smoke"].update(seeds=[]), ["seeds", "empty seed list"]),
    (lambda d: d["scales"]["smoke"]["problem"].update(bin_size=7), ["problem.bin_size", "must divide"]),
    (lambda d: d["scales"]["smoke"]["problem"].update(hidden="five"), ["problem.hidden", "integer"]),
    (lambda d: d["scales"].update(huge={}), ["scales.huge", "unknown scale"]),
    (lambda d: d["scales"]["smoke"]["resources"].update(gpu=-1), ["resources.gpu"]),
]


@pytest.mark.parametrize(("mutate", "needles"), BAD_PARAMS)
def test_bad_params_file(tmp_path, mutate, needles, lop_main):
    path = _params(tmp_path, mutate)
    out = tmp_path / "out"
    r = lop_main("run", "--params", str(path), "--scale", "smoke", "--method", "bp", "--out", str(out))
    _check_error(r, str(path), *needles, out=out)
    _check_error(lop_main("params", "validate", str(path)), str(path), *needles)


def test_bad_params_file_in_a_real_process(tmp_path):
    path = _params(tmp_path, BAD_PARAMS[1][0])
    r = run_lop("params", "validate", str(path))
    _check_error(r, str(path), "lrr")


def test_unknown_method_setting_and_seeds(tmp_path, lop_main):
    run_lop = lop_main
    out = tmp_path / "out"
    base = ["run", "--params", "params/scr.yaml", "--scale", "smoke", "--out", str(out)]
    _check_error(run_lop(*base, "--method", "nope"), "no method 'nope'", out=out)
    _check_error(run_lop(*base, "--method", "bp", "--setting-id", "lr=9"), "no setting 'lr=9'", out=out)
    _check_error(run_lop(*base, "--method", "bp", "--seeds", ","), "--seeds", "empty seed list", out=out)
    _check_error(run_lop(*base, "--method", "bp", "--seeds", "x"), "--seeds", out=out)
    _check_error(
        run_lop("run", "--params", "params/scr.yaml", "--scale", "big", "--method", "bp", "--out", str(out)),
        "no scale 'big'",
        out=out,
    )
    _check_error(
        run_lop("run", "--params", str(tmp_path / "missing.yaml"), "--method", "bp", "--out", str(out)),
        "params file not found",
        out=out,
    )


def test_bad_run_file(tmp_path, lop_main):
    run_lop = lop_main
    rf = tmp_path / "run.yaml"
    rf.write_text("experiment: scr\nconfig: {lr: 0.01, cbp: {replacement_rate: -1}}\n")
    _check_error(run_lop("run", "--run-file", str(rf), "--out", str(tmp_path / "o")), "cbp.replacement_rate")
    rf.write_text("experiment: scr\nproblem: {n_exampels: 5}\n")
    _check_error(
        run_lop("run", "--run-file", str(rf), "--out", str(tmp_path / "o")),
        "problem.n_exampels",
        "unknown key",
    )


def _mnist_params(tmp_path: Path, data_dir: Path) -> Path:
    data = yaml.safe_load((REPO / "params" / "permuted_mnist.yaml").read_text())
    data["scales"]["smoke"]["problem"].update(dataset="mnist", data_dir=str(data_dir), n_examples=100)
    path = tmp_path / "pm.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_missing_mnist_says_where_to_put_files(tmp_path, lop_main):
    run_lop = lop_main
    path = _mnist_params(tmp_path, tmp_path / "nowhere")
    out = tmp_path / "out"
    r = run_lop("run", "--params", str(path), "--scale", "smoke", "--method", "bp", "--out", str(out))
    _check_error(r, str(tmp_path / "nowhere"), "lop data", out=out)


def test_corrupt_prepared_mnist_is_detected(tmp_path):
    from lop.data.mnist import prepare_mnist
    from lop.data.standins import write_mnist_standin

    raw, prepared = tmp_path / "raw", tmp_path / "prepared"
    write_mnist_standin(raw, n_train=300, n_test=50, seed=0)
    prepare_mnist(raw, prepared)
    path = _mnist_params(tmp_path, prepared)
    out = tmp_path / "out"
    ok = run_lop(
        "run", "--params", str(path), "--scale", "smoke", "--method", "bp", "--seeds", "0", "--out", str(out)
    )
    assert ok.returncode == 0, ok.stderr
    arr = np.load(prepared / "train_images.npy")
    arr[0, 0, 0] ^= 1
    np.save(prepared / "train_images.npy", arr)
    out2 = tmp_path / "out2"
    r = run_lop("run", "--params", str(path), "--scale", "smoke", "--method", "bp", "--out", str(out2))
    _check_error(r, "train_images.npy", out=out2)
