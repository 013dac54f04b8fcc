"""Class-incremental CIFAR-100 (lop.experiments.incremental_cifar) on a tiny stand-in at 8×8 pixels: loss over
seen classes, step-size schedule, early-stopping reload, head reset / retraining, CBP with BatchNorm reset
inside ResNet-18, resume after SIGKILL, bad inputs, params file."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, run_lop

from lop.config import CBPConfig, MethodConfig, from_dict
from lop.data.cifar100 import prepare_cifar100
from lop.data.standins import write_standin
from lop.errors import ConfigError, DataError
from lop.experiments.base import RunSpec
from lop.experiments.incremental_cifar import IncrementalCifarProblem, IncrementalCifarTrainer
from lop.nets.resnet import ResNet18
from lop.params import load_params
from lop.rng import RunStreams

CPU = torch.device("cpu")
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The small CIFAR-100 stand-in (18 train + 2 validation + 5 test images per class), prepared."""
    root = tmp_path_factory.mktemp("cifar100")
    write_standin("cifar100", root / "raw", size="small")
    return prepare_cifar100(root / "raw", root / "prepared")


def _problem(data_dir: Path, **kw) -> IncrementalCifarProblem:
    base = dict(
        data_dir=str(data_dir),
        n_classes=10,
        classes_start=2,
        classes_per_increment=2,
        n_increments=2,
        epochs_per_increment=3,
        lr_milestones=(1, 2),
        lr_factors=(0.2, 0.04),
        batch_size=6,
        train_per_class=3,
        val_per_class=2,
        test_per_class=5,
        image_size=8,
        probe_images=20,
        eval_batch=100,
    )
    return IncrementalCifarProblem(**{**base, **kw})


def _trainer(data_dir: Path, cfg: MethodConfig, seeds=SEEDS, **kw) -> IncrementalCifarTrainer:
    runs = [RunSpec("m", "default", {}, cfg, s) for s in seeds]
    return IncrementalCifarTrainer(_problem(data_dir, **kw), runs, CPU)


BASE = MethodConfig(lr=0.1, momentum=0.9, weight_decay=5e-4)


def test_loss_only_over_seen_classes_and_step_size_schedule(data_dir):
    trainer = _trainer(data_dir, MethodConfig(lr=0.1, momentum=0.9))
    assert trainer.stand_in is True  # the prepared stand-in's manifest says so; run.json copies it
    fc_w = trainer.net.params["fc.weight"]
    w0 = fc_w.detach().clone()
    lrs = []
    for unit in range(3):
        trainer.train_unit(unit)
        lrs.append(trainer.learner.optimizer.lr.tolist())
    w1 = fc_w.detach()
    assert not torch.equal(w0[:, :2], w1[:, :2])
    assert torch.equal(w0[:, 2:], w1[:, 2:])  # output units of unseen classes never get a gradient
    assert [x for pair in lrs for x in pair] == pytest.approx([0.1, 0.1, 0.02, 0.02, 0.004, 0.004])
    assert [trainer.lr_factor(e) for e in range(3)] == [1.0, 0.2, 0.04]


def test_early_stopping_reloads_the_best_validation_epoch(data_dir):
    trainer = _trainer(
        data_dir, BASE, n_increments=1, epochs_per_increment=4, lr_milestones=(2,), lr_factors=(0.2,)
    )
    states, vals = [], []
    track = trainer._track

    def spy(val, test, epoch):
        states.append({k: v.detach().clone() for k, v in trainer.net.state_dict().items()})
        vals.append(val.clone())
        track(val, test, epoch)

    trainer._track = spy
    blocks = [b for u in range(4) for b in trainer.train_unit(u)]
    tests = torch.cat([b.values for b in blocks if b.name == "test_accuracy"], 1)
    val = torch.stack(vals, 1)  # [S, epochs]
    after = trainer.net.state_dict()
    for s in range(2):
        best = int(torch.argmax(val[s]))  # the first epoch with the highest validation accuracy
        for k, t in after.items():
            assert torch.equal(t[s], states[best][k][s]), (s, k)
    by_name = {b.name: b for b in blocks}
    assert by_name["test_accuracy/final"].steps.tolist() == [4]
    best = torch.argmax(val, 1)
    assert torch.equal(by_name["test_accuracy/final"].values[:, 0], tests[torch.arange(2), best])
    assert torch.equal(by_name["test_accuracy/max"].values[:, 0], tests.max(1).values)


def test_increment_start_measures_then_resets_head_or_network(data_dir):
    head = _trainer(data_dir, MethodConfig(lr=0.1, momentum=0.9, head_reset=True))
    first = {b.name: b for b in head.train_unit(0)}
    assert first["dormant_units/next"].steps.tolist() == [0] and "dormant_units/previous" not in first
    for name in ("effective_rank/next", "abs_approximate_rank/next", "weight_magnitude"):
        assert name in first
    frac = first["dormant_units/next"].values
    assert bool(((frac >= 0) & (frac <= 1)).all())
    conv_before = head.net.params["stem.conv.weight"].detach().clone()
    blocks = {b.name: b for b in head.start_increment(1, 3)}
    assert {"dormant_units/previous", "abs_approximate_rank/previous"} <= set(blocks)
    assert blocks["dormant_units/previous"].steps.tolist() == [3]
    fresh = ResNet18(RunStreams(list(SEEDS)), n_classes=10)
    fresh.reset_head(1)
    assert torch.equal(head.net.params["fc.weight"], fresh.params["fc.weight"])
    assert torch.equal(head.net.params["stem.conv.weight"], conv_before)  # only the head is reset
    momentum = head.learner.optimizer.state_views(head.net.params["fc.weight"])[0]
    assert bool((momentum == 0).all())

    retrain = _trainer(data_dir, MethodConfig(lr=0.1, momentum=0.9, retrain=True))
    retrain.train_unit(0)
    retrain.start_increment(1, 3)
    fresh = ResNet18(RunStreams(list(SEEDS)), n_classes=10)
    fresh.reinit(1)
    for k, t in fresh.state_dict().items():
        assert torch.equal(retrain.net.state_dict()[k], t), k
    assert all(bool((st == 0).all()) for group in retrain.learner.optimizer.state for st in group.values())


def test_cbp_replaces_channels_and_resets_their_batchnorm(data_dir):
    cfg = MethodConfig(
        lr=0.1, momentum=0.9, cbp=CBPConfig(replacement_rate=0.05, maturity=0, utility="contribution")
    )
    trainer = _trainer(data_dir, cfg)
    learner, cbp = trainer.learner, trainer.learner.cbp
    assert cbp is not None and len(cbp.layers) == 17 and all(layer.bn for layer in cbp.layers)
    x = torch.randn(2, 6, 3, 8, 8)
    y = torch.randint(0, 2, (2, 6))
    learner.step(0, x, y, n_logits=2)
    for i, layer in enumerate(cbp.layers):
        replaced = cbp.age[i] == 0
        assert int(replaced.sum()) > 0
        s_idx, u_idx = torch.nonzero(replaced, as_tuple=True)
        for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            assert bool((layer.bn[name].detach()[s_idx, u_idx] == value).all()), (layer.name, name)
        assert bool((layer.in_bias.detach()[s_idx, u_idx] == 0).all())
        out = layer.out_weight.detach()[s_idx, :, u_idx]
        m = layer.out_weight.shape[1]
        kept = cbp.age[i + 1] != 0 if i + 1 < len(cbp.layers) else torch.ones(2, m, dtype=torch.bool)
        kept = kept[s_idx].view(out.shape[0], m, *([1] * (out.dim() - 2)))
        assert bool((out[kept.expand_as(out)] == 0).all()), layer.name


def test_missing_data_and_too_few_images_raise_clear_errors(data_dir, tmp_path):
    with pytest.raises(DataError, match=r"no prepared CIFAR-100.*lop data"):
        _trainer(tmp_path / "absent", BASE)
    with pytest.raises(DataError, match=r"class \d+ has 18 train images but problem.train_per_class = 40"):
        _trainer(data_dir, BASE, train_per_class=40)


def _params_file(tmp_path: Path, data_dir: Path) -> Path:
    problem = {
        "data_dir": str(data_dir),
        "n_classes": 10,
        "classes_start": 2,
        "classes_per_increment": 2,
        "n_increments": 2,
        "epochs_per_increment": 2,
        "lr_milestones": [1],
        "lr_factors": [0.2],
        "batch_size": 6,
        "train_per_class": 3,
        "val_per_class": 2,
        "test_per_class": 3,
        "image_size": 8,
        "probe_images": 12,
    }
    method = {
        "momentum": 0.9,
        "lr": 0.1,
        "weight_decay": 5e-4,
        "cbp": {"replacement_rate": 0.002, "maturity": 1},
    }
    spec = {
        "experiment": "incremental_cifar",
        "scales": {
            "smoke": {
                "problem": problem,
                "seeds": [0, 1],
                "seeds_per_job": 2,
                "device": "cpu",
            }
        },
        "methods": {"cbp": {"base": method}},
    }
    path = tmp_path / "incremental_cifar.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(data_dir, tmp_path):
    """Kill -9 mid-increment (after epoch 1), rerun: metrics bit-identical (≈30 CPU-s: ResNet-18 steps)."""
    params = _params_file(tmp_path, data_dir)
    args = ["run", "--params", str(params), "--scale", "smoke", "--method", "cbp", "--checkpoint-every", "1"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    r = run_lop(*args, "--out", str(full), cwd=REPO)
    assert r.returncode == 0, r.stderr
    r = run_lop(*args, "--out", str(killed), cwd=REPO, env={"LOP_CRASH_AFTER_UNIT": "1"})  # mid-increment
    assert r.returncode == -signal.SIGKILL, r.stderr
    env = {k: v for k, v in os.environ.items() if k != "LOP_CRASH_AFTER_UNIT"}
    r = run_lop(*args, "--out", str(killed), cwd=REPO, env=env)
    assert r.returncode == 0 and "resumed" in r.stderr, r.stderr
    frames = [
        {str(p.relative_to(root)): pd.read_parquet(p) for p in sorted(root.rglob("metrics.parquet"))}
        for root in (full, killed)
    ]
    assert len(frames[0]) == 2 and frames[0].keys() == frames[1].keys()
    for k, a in frames[0].items():
        pd.testing.assert_frame_equal(a, frames[1][k], check_exact=True)
        acc = a[a.metric == "test_accuracy"]
        assert acc["step"].tolist() == [1, 2, 3, 4]
        assert a[a.metric == "test_accuracy/max"]["step"].tolist() == [2, 4]


def test_params_file_encodes_the_paper_protocol():
    p = load_params(REPO / "params" / "incremental_cifar.yaml")
    settings = {
        m: p.method_settings("paper", m)[0] for m in ("base", "head_reset", "retrained", "snp", "cbp")
    }
    prob = settings["base"].problem
    assert (prob.classes_start, prob.classes_per_increment, prob.n_increments, prob.epochs_per_increment) == (
        5,
        5,
        20,
        200,
    )
    assert prob.n_epochs == 4000 and prob.batch_size == 90 and prob.image_size == 32 and prob.width == 64
    assert (prob.train_per_class, prob.val_per_class, prob.test_per_class) == (450, 50, 100)
    assert (
        prob.lr_milestones == (60, 120, 160) and prob.early_stopping and prob.rotation_degrees == (0.0, 15.0)
    )
    for s in settings.values():
        assert (s.config.lr, s.config.momentum, s.config.weight_decay) == (0.1, 0.9, 5e-4)
    assert settings["head_reset"].config.head_reset and settings["retrained"].config.retrain
    assert settings["snp"].config.noise_std == 1e-5
    cbp = settings["cbp"].config.cbp
    # the paper scale ranks units as the reference code did (docs/protocols/reference-differences.md)
    assert (cbp.replacement_rate, cbp.maturity, cbp.decay, cbp.utility) == (1e-5, 1000, 0.99, "reference_sum")
    assert p.resources("paper").gpu == 1 and len(p.seeds("paper")) == 30


def test_narrow_resnet_width_8_smoke_run(data_dir):
    """A short run at width 8 (stages 8/16/32/64): the head, probes and rank metrics follow 8·width."""
    trainer = _trainer(data_dir, BASE, width=8, image_size=32)
    assert trainer.net.params["fc.weight"].shape == (2, 10, 64)
    assert trainer.net.params["layer1.0.conv1.weight"].shape == (2, 8, 8, 3, 3)
    blocks = [b for u in range(trainer.n_units) for b in trainer.train_unit(u)]
    by_name: dict[str, list] = {}
    for b in blocks:
        by_name.setdefault(b.name, []).append(b)
    assert [b.steps.tolist() for b in by_name["test_accuracy"]] == [[u] for u in range(1, 7)]
    assert all(bool(torch.isfinite(b.values).all()) for b in blocks)
    for b in by_name["abs_approximate_rank/next"] + by_name["effective_rank/previous"]:
        assert bool(((b.values >= 1) & (b.values <= 64)).all())
    # the fraction (what Fig. 2's stable-rank panel plots) is the rank over the 64 features
    for rank, frac in zip(
        by_name["abs_approximate_rank/next"], by_name["abs_approximate_rank_fraction/next"]
    ):
        assert torch.equal(frac.values, rank.values.to(torch.float64) / 64)
    _, feats = trainer.probe(trainer.data.train.flatten(0, 1), torch.zeros(2, 3, dtype=torch.int64))
    assert feats.shape == (2, 3, 64)


def test_width_is_validated_and_named(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="width: must be >= 1"):
        from_dict(IncrementalCifarProblem, {"width": 0}, "problem")
    path = _params_file(tmp_path, data_dir)
    spec = yaml.safe_load(path.read_text())
    spec["scales"]["smoke"]["problem"]["width"] = 0
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"scales\.smoke\.problem\.width: must be >= 1"):
        load_params(path)
    demo = load_params(REPO / "params" / "incremental_cifar.yaml").problems["demo"]
    assert (demo.width, demo.image_size) == (8, 32)
