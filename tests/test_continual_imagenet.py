"""Continual ImageNet (lop.experiments.continual_imagenet) on a tiny stand-in: protocol invariants, CBP inside
the ConvNet, batch independence, resume after SIGKILL, bad inputs, params file."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, run_lop

from lop.config import CBPConfig, MethodConfig
from lop.data.imagenet32 import prepare_imagenet32
from lop.data.standins import write_standin
from lop.errors import ConfigError, DataError
from lop.experiments.base import RunSpec
from lop.experiments.continual_imagenet import ContinualImageNetProblem, ContinualImageNetTrainer
from lop.params import load_params

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The small ImageNet32 stand-in (10 classes, 60 train + 10 test images each), prepared."""
    root = tmp_path_factory.mktemp("imagenet32")
    write_standin("imagenet32", root / "raw", size="small")
    return prepare_imagenet32(root / "raw", root / "prepared")


def _problem(data_dir: Path, **kw) -> ContinualImageNetProblem:
    base = dict(
        data_dir=str(data_dir),
        n_tasks=3,
        epochs_per_task=2,
        train_per_class=20,
        test_per_class=10,
        batch_size=20,
    )
    return ContinualImageNetProblem(**{**base, **kw})


def _runs(cfg: MethodConfig, seeds=(0, 1)) -> list[RunSpec]:
    return [RunSpec("m", "default", {}, cfg, s) for s in seeds]


BP = MethodConfig(lr=0.01, momentum=0.9)


def test_head_zeroed_at_every_task_start_and_metrics_per_task(data_dir):
    trainer = ContinualImageNetTrainer(_problem(data_dir), _runs(BP), CPU)
    head = trainer.net.params["fc3.weight"]
    seen: list[tuple[int, float]] = []
    step = trainer.learner.step

    def spy(t, x, y, n_logits=None):
        if t % trainer.steps_per_task == 0:
            seen.append((t, float(head.detach().abs().max())))
            assert x.shape == (2, 20, 3, 32, 32) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        return step(t, x, y, n_logits)

    trainer.learner.step = spy
    for u in range(3):
        blocks = {b.name: b for b in trainer.train_unit(u)}
        assert blocks["test_accuracy"].steps.tolist() == [u + 1]
        acc = blocks["test_accuracy"].values
        assert acc.shape == (2, 1) and bool(((acc >= 0) & (acc <= 1)).all())
        assert set(blocks) == {"test_accuracy", "train_accuracy", "train_loss", "weight_magnitude"}
        assert float(head.detach().abs().max()) > 0  # the head learns within the task
    assert [t for t, _ in seen] == [0, 4, 8] and all(v == 0.0 for _, v in seen)


def test_cbp_replaces_conv_channels_and_zeroes_their_outgoing_weights(data_dir):
    cfg = MethodConfig(
        lr=0.01,
        momentum=0.9,
        cbp=CBPConfig(replacement_rate=0.2, maturity=0, utility="adaptable_contribution"),
    )
    trainer = ContinualImageNetTrainer(_problem(data_dir), _runs(cfg), CPU)
    learner = trainer.learner
    cbp = learner.cbp
    assert cbp is not None and [layer.name for layer in cbp.layers] == [
        "conv1",
        "conv2",
        "conv3",
        "fc1",
        "fc2",
    ]
    x = torch.rand(2, 20, 3, 32, 32)
    y = torch.randint(0, 2, (2, 20))
    for t in range(3):
        learner.step(t, x, y)
        for i, layer in enumerate(cbp.layers):
            replaced = cbp.age[i] == 0  # [S, n]: replaced in this step
            assert int(replaced.sum()) > 0
            s_idx, u_idx = torch.nonzero(replaced, as_tuple=True)
            out = layer.out_weight[
                s_idx, :, u_idx
            ]  # [k, m, ...] outgoing weights (kernel taps / fc1 columns)
            # rows of next-layer units replaced in the same step were redrawn whole (incoming weights)
            m = layer.out_weight.shape[1]
            kept = cbp.age[i + 1] != 0 if i + 1 < len(cbp.layers) else torch.ones(2, m, dtype=torch.bool)
            kept = kept[s_idx].view(out.shape[0], m, *([1] * (out.dim() - 2)))
            assert bool((out[kept.expand_as(out)] == 0).all()), layer.name
            assert bool((layer.in_bias[s_idx, u_idx] == 0).all())
            new = layer.in_weight.detach()[s_idx, u_idx].abs()
            assert 0 < float(new.max()) <= layer.init[1]
            momentum = learner.optimizer.state_views(layer.out_weight)[0]
            assert bool((momentum[s_idx, :, u_idx] == 0).all())
    blocks = {b.name for b in trainer.train_unit(0)}
    assert "replaced_units" in blocks


def test_linear_baseline_is_trained(data_dir):
    cfg = MethodConfig(lr=0.01, momentum=0.9, arch="linear")
    trainer = ContinualImageNetTrainer(
        _problem(data_dir, epochs_per_task=5, train_per_class=60), _runs(cfg), CPU
    )
    assert trainer.learner.cbp is None and trainer.net.n_params_per_run() == 3072 * 2 + 2
    accs = [b.values for u in range(2) for b in trainer.train_unit(u) if b.name == "test_accuracy"]
    assert float(torch.cat(accs, 1).mean()) > 0.7  # the stand-in's classes are nearly linearly separable


def test_a_run_does_not_depend_on_its_batch(data_dir):
    problem = _problem(data_dir, n_tasks=1, epochs_per_task=1)
    cfg = MethodConfig(
        lr=0.01, momentum=0.9, noise_std=1e-4, cbp=CBPConfig(replacement_rate=0.05, maturity=1)
    )
    pair = ContinualImageNetTrainer(problem, _runs(cfg, (4, 9)), CPU)
    alone = ContinualImageNetTrainer(problem, _runs(cfg, (9,)), CPU)
    assert torch.equal(pair.tasks.classes(0)[1], alone.tasks.classes(0)[0])
    mp = {b.name: b.values for b in pair.train_unit(0)}
    ma = {b.name: b.values for b in alone.train_unit(0)}
    for name in ma:
        torch.testing.assert_close(mp[name][1], ma[name][0], rtol=1e-4, atol=1e-5)
    for name, p in alone.net.params.items():
        torch.testing.assert_close(pair.net.params[name][1], p[0], rtol=1e-4, atol=1e-5)


def test_missing_data_and_too_few_images_raise_clear_errors(data_dir, tmp_path):
    with pytest.raises(DataError, match=r"no prepared ImageNet32.*lop data"):
        ContinualImageNetTrainer(_problem(tmp_path / "absent"), _runs(BP), CPU)
    with pytest.raises(DataError, match=r"60 train images but problem.train_per_class = 100"):
        ContinualImageNetTrainer(_problem(data_dir, train_per_class=100), _runs(BP), CPU)
    with pytest.raises(DataError, match="n_classes"):
        ContinualImageNetTrainer(_problem(data_dir, n_classes=50), _runs(BP), CPU)
    from lop.experiments.base import check_supported
    from lop.experiments.continual_imagenet import EXPERIMENT

    with pytest.raises(ConfigError, match="head_reset: not supported by experiment continual_imagenet"):
        check_supported(EXPERIMENT, MethodConfig(head_reset=True), "m")


def _params_file(tmp_path: Path, data_dir: Path) -> Path:
    spec = {
        "experiment": "continual_imagenet",
        "scales": {
            "smoke": {
                "problem": {
                    "data_dir": str(data_dir),
                    "n_tasks": 3,
                    "epochs_per_task": 1,
                    "train_per_class": 10,
                    "test_per_class": 10,
                    "batch_size": 10,
                },
                "seeds": [0, 1],
                "seeds_per_job": 2,
                "device": "cpu",
            }
        },
        "methods": {
            "cbp": {
                "base": {
                    "momentum": 0.9,
                    "lr": 0.01,
                    "noise_std": 1e-5,
                    "cbp": {"replacement_rate": 0.01, "maturity": 2, "utility": "adaptable_contribution"},
                }
            }
        },
    }
    path = tmp_path / "continual_imagenet.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _frames(root: Path) -> dict[str, pd.DataFrame]:
    return {str(p.relative_to(root)): pd.read_parquet(p) for p in sorted(root.rglob("metrics.parquet"))}


def test_resume_after_sigkill_is_bit_identical(data_dir, tmp_path):
    params = _params_file(tmp_path, data_dir)
    args = ["run", "--params", str(params), "--scale", "smoke", "--method", "cbp", "--checkpoint-every", "1"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    r = run_lop(*args, "--out", str(full), cwd=REPO)
    assert r.returncode == 0, r.stderr
    r = run_lop(*args, "--out", str(killed), cwd=REPO, env={"LOP_CRASH_AFTER_UNIT": "1"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert list((killed / ".checkpoints").glob("*.pt")) and not list(killed.rglob("run.json"))
    env = {k: v for k, v in os.environ.items() if k != "LOP_CRASH_AFTER_UNIT"}
    r = run_lop(*args, "--out", str(killed), cwd=REPO, env=env)
    assert r.returncode == 0 and "resumed" in r.stderr, r.stderr
    a, b = _frames(full), _frames(killed)
    assert len(a) == 2 and a.keys() == b.keys()
    for k in a:
        pd.testing.assert_frame_equal(a[k], b[k], check_exact=True)
        assert sorted(a[k]["step"].unique().tolist()) == [1, 2, 3]


def test_runs_on_stand_in_data_say_so_up_to_the_figure_label(data_dir, tmp_path):
    from lop.analysis.aggregate import aggregate_runs
    from lop.analysis.figures import stand_in_label

    params = _params_file(tmp_path, data_dir)
    out = tmp_path / "runs"
    r = run_lop(
        "run", "--params", str(params), "--scale", "smoke", "--method", "cbp", "--out", str(out), cwd=REPO
    )
    assert r.returncode == 0, r.stderr
    infos = [json.loads(p.read_text()) for p in sorted(out.rglob("run.json"))]
    assert len(infos) == 2 and all(i["stand_in"] is True for i in infos)
    table = aggregate_runs(out)
    assert table["stand_in"].dtype == bool and table["stand_in"].all()
    assert stand_in_label(table, "paper") == "paper scale — stand-in data"


def test_params_file_encodes_the_paper_protocol():
    p = load_params(REPO / "params" / "continual_imagenet.yaml")
    paper = {m: p.method_settings("paper", m) for m in ("bp", "linear", "l2", "snp", "cbp")}
    assert sorted(s.config.lr for s in paper["bp"]) == [0.0001, 0.001, 0.01]
    assert {s.problem.n_tasks for s in paper["bp"] + paper["linear"]} == {2000}
    assert {paper[m][0].problem.n_tasks for m in ("l2", "snp", "cbp")} == {5000}
    assert all(s.config.momentum == 0.9 for v in paper.values() for s in v)
    assert paper["linear"][0].config.arch == "linear"
    cbp = paper["cbp"][0].config.cbp
    assert cbp.utility == "adaptable_contribution" and cbp.replacement_rate == 3e-4 and cbp.maturity == 100
    prob = paper["cbp"][0].problem
    assert (prob.epochs_per_task, prob.batch_size, prob.train_per_class, prob.test_per_class) == (
        250,
        100,
        600,
        100,
    )
    assert p.resources("paper").gpu == 1 and len(p.seeds("paper")) == 30
