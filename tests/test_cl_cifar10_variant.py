"""Zenke et al.'s CIFAR-10 -> CIFAR-100 variant of cl_split_cifar100 (task construction, heads, settings
errors, a smoke run through `lop run`), their convnet with dropout, and the zero-initialised output layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, run_lop

from lop import cl_metrics
from lop.config import MethodConfig, from_dict
from lop.data.cifar10 import load_cifar10, prepare_cifar10
from lop.data.cifar100 import load_cifar100, prepare_cifar100
from lop.data.standins import write_standin
from lop.errors import ConfigError
from lop.experiments.base import RunSpec, get_experiment
from lop.nets.convnet import ConvNet
from lop.nets.mlp_classifier import MLPClassifier
from lop.nets.zenke_convnet import DROPOUT_CALLS, ZenkeConvNet
from lop.rng import RunStreams

CPU = torch.device("cpu")
ADAM = {"optimizer": "adam", "lr": 1e-3}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A folder with data/prepared/{cifar10,cifar100}-standin (the small stand-ins), as the smoke scale reads."""
    root = tmp_path_factory.mktemp("c10root")
    for name, prepare in (("cifar10", prepare_cifar10), ("cifar100", prepare_cifar100)):
        raw = root / "data" / "raw" / f"{name}-standin"
        write_standin(name, raw, size="small")
        prepare(raw, root / "data" / "prepared" / f"{name}-standin")
    return root


def _problem(root: Path, **kw: Any) -> dict[str, Any]:
    base = {
        "data_dir": str(root / "data/prepared/cifar100-standin"),
        "first_task": "cifar10",
        "cifar10_dir": str(root / "data/prepared/cifar10-standin"),
        "n_tasks": 3,
        "train_per_class": 6,
        "test_per_class": 4,
        "epochs_per_task": 2,
        "batch_size": 20,
        "probe_examples": 20,
        "net": "zenke",
        "output_init": "zero",
    }
    return {**base, **kw}


def _trainer(problem: dict[str, Any], method: dict[str, Any] = ADAM, seeds=(0, 1)):
    spec = get_experiment("cl_split_cifar100")
    config = from_dict(MethodConfig, method, "method")
    runs = [RunSpec("m", "default", {}, config, s) for s in seeds]
    return spec.build(from_dict(spec.problem_cls, problem, "problem"), runs, CPU)


def test_task_one_is_cifar10_and_later_tasks_are_cifar100_classes(data_root):
    tr = _trainer(_problem(data_root))
    c10 = load_cifar10(data_root / "data/prepared/cifar10-standin")
    c100 = load_cifar100(data_root / "data/prepared/cifar100-standin")
    train, test = tr.data.train, tr.data.test
    assert tr.data.k == 10 and tr.data.n_tasks == 3 and tr.stand_in
    assert [len(r) for r in train.rows] == [60, 60, 60] and [len(r) for r in test.rows] == [40, 40, 40]
    # task 1: the first 6 images of each CIFAR-10 class, labels = CIFAR-10 labels
    want = np.concatenate([np.flatnonzero(c10["train_labels"] == c)[:6] for c in range(10)])
    got = train.x[train.rows[0]].numpy()
    assert sorted(map(bytes, got)) == sorted(map(bytes, c10["train_images"][want]))
    assert torch.equal(torch.sort(train.local[train.rows[0]]).values, torch.arange(10).repeat_interleave(6))
    # task 2: CIFAR-100 classes 0..9, task 3: classes 10..19 (local label = class - 10 (t - 2))
    for t, first in ((1, 0), (2, 10)):
        x = test.x[test.rows[t]].numpy()
        cls = test.local[test.rows[t]].numpy() + first
        for img, c in zip(x[:8], cls[:8], strict=True):
            rows = np.flatnonzero(c100["test_labels"] == c)[:4]
            assert any(np.array_equal(img, c100["test_images"][r]) for r in rows)
    # task-incremental heads: 30 outputs, task t's examples use outputs 10(t-1) .. 10t-1 only
    assert tr.net.n_out == 30
    rows = test.rows[2][:5].expand(2, -1)
    _, y = tr.gather(test, rows, torch.full_like(rows, 2))
    assert y.min() >= 20 and y.max() <= 29
    mask = tr.learner.label_mask
    assert mask.shape == (30, 30) and mask[25, 20:30].all() and not mask[25, :20].any()


def test_plain_split_is_unchanged_by_the_new_options(data_root):
    plain = {
        k: v
        for k, v in _problem(data_root, classes_per_task=4).items()
        if k not in ("first_task", "cifar10_dir")
    }
    tr = _trainer({**plain, "net": "convnet", "output_init": "default"})
    c100 = load_cifar100(data_root / "data/prepared/cifar100-standin")
    assert tr.data.k == 4 and tr.net.n_out == 12 and isinstance(tr.net, ConvNet)
    first = tr.data.train.x[tr.data.train.rows[0][0]].numpy()
    assert any(
        np.array_equal(first, c100["train_images"][r]) for r in np.flatnonzero(c100["train_labels"] < 4)
    )


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"cifar10_dir": ""}, "cifar10_dir"),
        ({"classes_per_task": 5}, "classes_per_task"),
        ({"n_tasks": 12}, "n_tasks"),
        ({"first_task": "cifar100"}, "cifar10_dir"),  # cifar10_dir would be ignored
    ],
)
def test_bad_variant_settings_stop_with_the_key(data_root, change, key):
    spec = get_experiment("cl_split_cifar100")
    with pytest.raises(ConfigError, match=key):
        from_dict(spec.problem_cls, _problem(data_root, **change), "problem")


def test_missing_cifar10_names_the_prepare_command(data_root, tmp_path):
    with pytest.raises(Exception, match="lop data prepare cifar10"):
        _trainer(_problem(data_root, cifar10_dir=str(tmp_path / "data/prepared/cifar10")))


@pytest.mark.slow
def test_variant_trains_above_chance_with_the_zero_output_layer(data_root):
    prob = _problem(data_root, n_tasks=2, train_per_class=20, epochs_per_task=6, batch_size=20)
    tr = _trainer(prob, {**ADAM, "si": {"c": 0.01, "xi": 1e-3}})
    for u in range(2):
        tr.train_unit(u)
    r = tr.matrix.numpy()
    assert np.allclose(r[:, 0], 0.1)  # zero output layer: every logit 0 -> the first class of each head
    assert (r[:, 1, 0] > 0.2).all() and (r[:, 2, 1] > 0.3).all()  # chance is 0.1
    assert tr.net.params["fc2.weight"].abs().sum() > 0  # the zero output layer trained


def test_variant_runs_are_batch_independent(data_root):
    prob = _problem(
        data_root, n_tasks=2, train_per_class=3, test_per_class=2, epochs_per_task=1, batch_size=10
    )
    method = {**ADAM, "si": {"c": 0.01, "xi": 1e-3}}
    pair, solo = _trainer(prob, method, seeds=(0, 1)), _trainer(prob, method, seeds=(1,))
    for u in range(2):
        pair.train_unit(u)
        solo.train_unit(u)
    assert pair.net.dropout_calls == solo.net.dropout_calls == 2 * 3  # 30 images per task, batch 10
    for a, b in zip(pair.net.parameters(), solo.net.parameters(), strict=True):
        torch.testing.assert_close(a[1:], b, rtol=1e-3, atol=1e-4)  # grouped conv: float noise


@pytest.mark.slow
def test_smoke_run_through_lop_run(data_root):
    out = data_root / "runs"
    r = run_lop(
        "run", "--params", str(REPO / "params/cl_split_cifar100.yaml"), "--scale", "smoke", "--method", "c10_si",
        "--out", str(out), "--no-progress", cwd=data_root, env={"PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    seed_dirs = sorted((out / "c10_si").glob("*/seed-*"))
    assert [d.name for d in seed_dirs] == ["seed-0", "seed-1"]
    df = pd.read_parquet(seed_dirs[0] / "metrics.parquet")
    r_mat = cl_metrics.accuracy_matrix(df[["step", "metric", "value"]].itertuples(index=False))
    assert r_mat.shape == (4, 3) and not np.isnan(r_mat).any()
    final = df[df.step == 3].set_index("metric")["value"]
    assert final["acc"] == pytest.approx(r_mat[3].mean(), abs=1e-12)
    for probe in ("dead_units/conv1", "dormant_units/conv4", "effective_rank/fc1", "weight_magnitude"):
        assert sorted(df.loc[df.metric == probe, "step"]) == [0, 1, 2, 3]


# ---- networks: zero-initialised output layer, Zenke's convnet ---------------------------------------


def _images(n_runs: int, batch: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n_runs, batch, 3, 32, 32), generator=g)


@pytest.mark.parametrize("make", ["convnet", "zenke", "mlp"])
def test_zero_output_init_gives_zero_logits_and_leaves_the_rest(make):
    streams = RunStreams([3, 4], CPU)

    def build(output_init: str):
        if make == "convnet":
            return ConvNet(streams, 7, output_init=output_init)
        if make == "zenke":
            return ZenkeConvNet(streams, 7, output_init=output_init).eval()
        return MLPClassifier([3072, 16, 16, 7], "relu", streams, output_init=output_init)

    zero, default = build("zero"), build("default")
    x = _images(2) if make != "mlp" else _images(2).flatten(2)
    with torch.no_grad():
        assert torch.equal(zero(x), torch.zeros(2, 4, 7))
        assert default(x).abs().max() > 0
    pz, pd_ = zero.parameters(), default.parameters()
    for a, b in zip(pz[:-2], pd_[:-2], strict=True):  # every hidden layer: the same draw
        assert torch.equal(a, b)
    assert not pz[-2].any() and not pz[-1].any() and pd_[-2].abs().sum() > 0


def test_output_init_rejects_unknown_values():
    streams = RunStreams([0], CPU)
    for build in (
        lambda: ConvNet(streams, 2, output_init="ones"),
        lambda: ZenkeConvNet(streams, 2, output_init="ones"),
        lambda: MLPClassifier([4, 3, 2], "relu", streams, output_init="ones"),
    ):
        with pytest.raises(ValueError, match="output_init"):
            build()
    spec = get_experiment("cl_split_cifar100")
    with pytest.raises(ConfigError, match="output_init"):
        from_dict(spec.problem_cls, {"output_init": "ones"}, "problem")
    with pytest.raises(ConfigError, match="output_init"):  # an experiment without the option rejects it
        from_dict(get_experiment("cl_permuted_mnist").problem_cls, {"output_init": "zero"}, "problem")


def test_zenke_convnet_shapes_init_and_dropout():
    net = ZenkeConvNet(RunStreams([0, 1], CPU), 60)
    assert net.n_params_per_run() == 1_276_508
    assert all(
        not net.params[f"{n}.bias"].any() for n in ("conv1", "conv4", "fc1", "fc2")
    )  # Keras: zero biases
    bound = (6 / (2304 + 512)) ** 0.5
    w = net.params["fc1.weight"]
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound and not torch.equal(w[0], w[1])
    x = _images(2)
    logits, acts = net(x, return_activations=True)
    assert logits.shape == (2, 4, 60)
    assert {k: tuple(v.shape) for k, v in acts.items()} == {
        "conv1": (2, 4, 32, 32, 32), "conv2": (2, 4, 32, 15, 15), "conv3": (2, 4, 64, 15, 15),
        "conv4": (2, 4, 64, 6, 6), "fc1": (2, 4, 512),
    }  # fmt: skip
    assert [layer.name for layer in net.unit_layers()] == ["conv1", "conv2", "conv3", "conv4", "fc1"]
    # training mode: fresh dropout masks at every call; evaluation mode: deterministic and no dropout
    assert net.dropout_calls == 1 and not torch.equal(net(x), logits) and net.dropout_calls == 2
    net.eval()
    with torch.no_grad():
        a, b = net(x), net(x)
    assert torch.equal(a, b) and net.dropout_calls == 2
    # a run's numbers do not depend on the batch it trains in (masks are drawn per run)
    solo = ZenkeConvNet(RunStreams([1], CPU), 60)
    with torch.no_grad():
        torch.testing.assert_close(solo(x[1:]), ZenkeConvNet(RunStreams([0, 1], CPU), 60)(x)[1:])


def test_zenke_convnet_state_restores_the_dropout_counter():
    net = ZenkeConvNet(RunStreams([5], CPU), 10)
    x = _images(1)
    for _ in range(3):
        net(x)
    state = net.state_dict()
    assert int(state[DROPOUT_CALLS]) == 3
    expected = net(x)
    fresh = ZenkeConvNet(RunStreams([5], CPU), 10)
    fresh.load_state_dict(state)
    assert fresh.dropout_calls == 3 and torch.equal(fresh(x), expected)


def test_split_mnist_zero_output_layer_trains_and_den_rejects_it():
    spec = get_experiment("cl_split_mnist")
    problem = {"dataset": "digits", "n_tasks": 2, "width": 32, "epochs_per_task": 5, "batch_size": 32,
               "probe_examples": 20, "output_init": "zero"}  # fmt: skip
    config = from_dict(MethodConfig, ADAM, "method")
    tr = spec.build(from_dict(spec.problem_cls, problem, "problem"), [RunSpec("m", "d", {}, config, 0)], CPU)
    assert not tr.net.parameters()[-2].any() and not tr.net.parameters()[-1].any()
    for u in range(2):
        tr.train_unit(u)
    r = tr.matrix.numpy()[0]
    test = tr.data.test
    first = [float((test.local[rows] == 0).double().mean()) for rows in test.rows]
    assert np.allclose(r[0], first)  # all logits 0: every answer is the first class of its 2-way head
    assert r[1, 0] > 0.8 and r[2, 1] > 0.8  # the zero output layer trained (chance: about 0.5)
    den = from_dict(MethodConfig, {**ADAM, "den": {}}, "method")
    with pytest.raises(ConfigError, match="output_init"):
        spec.build(from_dict(spec.problem_cls, problem, "problem"), [RunSpec("den", "d", {}, den, 0)], CPU)


def test_variant_resumes_after_a_task_bit_identically(data_root):
    """Checkpoint after task 1 (through torch.save / weights_only load), resume in a fresh trainer: the
    dropout counter, SI's state and the optimiser come back, so task 2 trains exactly as without a stop."""
    import io

    prob = _problem(
        data_root, n_tasks=2, train_per_class=3, test_per_class=2, epochs_per_task=2, batch_size=10
    )
    method = {**ADAM, "si": {"c": 0.01, "xi": 1e-3}}
    ref = _trainer(prob, method)
    ref.train_unit(0)
    buf = io.BytesIO()
    torch.save(ref.state_dict(), buf)
    ref.train_unit(1)
    buf.seek(0)
    resumed = _trainer(prob, method)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert resumed.net.dropout_calls == 2 * 3
    resumed.train_unit(1)
    assert torch.equal(resumed.matrix[:, 1:], ref.matrix[:, 1:])
    assert all(torch.equal(a, b) for a, b in zip(resumed.net.parameters(), ref.net.parameters(), strict=True))
