"""Paper-scale definitions start and checkpoint (the full runs need hours; here: first units only)."""

import dataclasses
import json

import pytest
import torch
from conftest import run_lop

from lop.experiments.base import get_experiment
from lop.params import expand_jobs, load_params, n_runs, select_runs


def test_paper_grids_match_the_protocol(repo):
    scr = load_params(repo / "params" / "scr.yaml")
    assert n_runs(scr, "paper") == 30 * 100  # bp×3, bp_adam×3, linear×3, l2×6, snp×6, cbp×5, l2_init×4; 100 seeds
    assert {len(v) for v in scr.settings["paper"].values()} == {3, 4, 6, 5}
    pm = load_params(repo / "params" / "permuted_mnist.yaml")
    assert n_runs(pm, "paper") == 24 * 30  # 7 families × 3 settings + l2_init × 3, 30 runs each
    assert pm.problems["paper"].width == 2000 and pm.problems["paper"].n_tasks == 800
    jobs = expand_jobs(pm, "paper")
    assert all(j.resources["gpu"] == 1 for j in jobs)
    widths = {s.problem.width for s in pm.settings["paper"]["bp_width"]}
    assert widths == {100, 1000, 10000}


@pytest.mark.slow
def test_scr_paper_scale_starts_checkpoints_and_resumes(tmp_path):
    args = [
        "run",
        "--params",
        "params/scr.yaml",
        "--scale",
        "paper",
        "--method",
        "cbp",
        "--seeds",
        "0",
        "--out",
        str(tmp_path),
        "--checkpoint-every",
        "1",
    ]
    r = run_lop(*args, env={"LOP_CRASH_AFTER_UNIT": "1"}, timeout=900)
    assert r.returncode == -9, r.stderr
    (ckpt,) = (tmp_path / ".checkpoints").glob("*.pt")
    state = torch.load(ckpt, weights_only=True)
    assert state["unit"] == 1 and state["metrics"]["squared_error"]["values"].shape == (5, 1)
    assert not list(tmp_path.rglob("run.json"))


@pytest.mark.slow
def test_permuted_mnist_paper_scale_starts_and_checkpoints(tmp_path, repo):
    from lop.data.mnist import prepare_mnist
    from lop.data.standins import write_mnist_standin

    write_mnist_standin(tmp_path / "raw", n_train=600, n_test=100, seed=0)
    prepare_mnist(tmp_path / "raw", tmp_path / "mnist")
    params = load_params(repo / "params" / "permuted_mnist.yaml")
    problem, runs = select_runs(params, "paper", "cbp", None, [0])
    assert problem.width == 2000 and len(runs) == 3
    problem = dataclasses.replace(problem, data_dir=str(tmp_path / "mnist"))
    spec = get_experiment("permuted_mnist")
    trainer = spec.build(problem, runs, torch.device("cpu"))
    assert [w.shape[1:] for w in trainer.net.weights] == [(2000, 784), (2000, 2000), (2000, 2000), (10, 2000)]
    probe = {b.name: b.values for b in trainer.probe(0)}
    assert probe["dead_units/layer1"].shape == (3, 1)
    x, y = trainer.examples(0, 0, 5)
    for j in range(5):
        trainer.learner.step(j, x[:, j : j + 1], y[:, j : j + 1])
    path = tmp_path / "ckpt.pt"
    torch.save(trainer.state_dict(), path)
    other = spec.build(problem, runs, torch.device("cpu"))
    other.load_state_dict(torch.load(path, weights_only=True))
    for a, b in zip(trainer.net.parameters(), other.net.parameters()):
        assert torch.equal(a, b)
    assert json.dumps(dataclasses.asdict(problem))  # the resolved problem is plain data
