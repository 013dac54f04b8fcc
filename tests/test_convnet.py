"""Continual ImageNet ConvNet and linear baseline (docs/protocols/continual_imagenet.md), seed-batched."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lop.errors import CheckpointError
from lop.nets.batched_conv import from_grouped, grouped_conv2d, to_grouped
from lop.nets.convnet import ConvNet, LinearClassifier, build_imagenet_net
from lop.rng import RunStreams

ATOL = 1e-5


def _images(s: int, b: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(s, b, 3, 32, 32, generator=g)


def _labels(s: int, b: int, n_out: int = 2) -> torch.Tensor:
    return (torch.arange(s * b).view(s, b) * 7 + 3) % n_out


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over runs of each run's mean cross-entropy (runs stay independent)."""
    s, b, n = logits.shape
    return F.cross_entropy(logits.reshape(s * b, n), y.reshape(-1), reduction="sum") / b


def _reference_forward(net: ConvNet, x: torch.Tensor, k: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run k alone through plain per-run torch ops (conv → ReLU → pool, flatten, linear)."""
    p = {name: t[k] for name, t in net.params.items()}
    h, acts = x[k], []
    for name in ("conv1", "conv2", "conv3"):
        h = F.max_pool2d(torch.relu(F.conv2d(h, p[f"{name}.weight"], p[f"{name}.bias"])), 2)
        acts.append(h)
    h = h.flatten(1)
    for name in ("fc1", "fc2"):
        h = torch.relu(F.linear(h, p[f"{name}.weight"], p[f"{name}.bias"]))
        acts.append(h)
    return F.linear(h, p["fc3.weight"], p["fc3.bias"]), acts


def test_parameter_counts() -> None:
    net = ConvNet(RunStreams([0, 1]))
    assert net.n_params_per_run() == 177_218
    shapes = {k: tuple(v.shape) for k, v in net.params.items()}
    assert shapes["conv1.weight"] == (2, 32, 3, 5, 5)
    assert shapes["conv3.weight"] == (2, 128, 64, 3, 3)
    assert shapes["fc1.weight"] == (2, 128, 512)
    assert shapes["fc3.bias"] == (2, 2)
    assert all(p.requires_grad and p.is_leaf for p in net.parameters())
    assert LinearClassifier(RunStreams([0])).n_params_per_run() == 3072 * 2 + 2


def test_pytorch_default_init_bounds() -> None:
    net = ConvNet(RunStreams([3, 4]))
    for name, (_, fan_in) in net.shapes.items():
        bound = 1.0 / math.sqrt(fan_in)
        for kind in ("weight", "bias"):
            t = net.params[f"{name}.{kind}"].detach()
            assert float(t.abs().max()) <= bound
        w = net.params[f"{name}.weight"].detach()
        assert float(w.abs().max()) > 0.9 * bound  # spans the interval
        assert abs(float(w.mean())) < 0.1 * bound
    # distinct layers and runs get distinct draws
    assert not torch.equal(net.params["fc2.weight"][0], net.params["fc2.weight"][1])


def test_forward_shapes_and_activations() -> None:
    net = ConvNet(RunStreams([0, 1, 2]), n_out=5)
    logits, acts = net(_images(3, 4), return_activations=True)
    assert logits.shape == (3, 4, 5)
    assert list(acts) == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    assert acts["conv1"].shape == (3, 4, 32, 14, 14)
    assert acts["conv2"].shape == (3, 4, 64, 6, 6)
    assert acts["conv3"].shape == (3, 4, 128, 2, 2)
    assert acts["fc1"].shape == (3, 4, 128) and acts["fc2"].shape == (3, 4, 128)
    assert all(bool((a >= 0).all()) for a in acts.values())
    for layer in net.unit_layers():
        assert acts[layer.name].shape[2] == layer.n_units
    with pytest.raises(ValueError, match="expected images"):
        net(torch.zeros(2, 4, 3, 32, 32))


@pytest.mark.parametrize("channels_last", [True, False])
def test_grouped_matches_per_run_reference(channels_last: bool) -> None:
    net = ConvNet(RunStreams([10, 11, 12]), channels_last=channels_last)
    x = _images(3, 6, seed=1)
    logits, acts = net(x, return_activations=True)
    for k in range(3):
        ref_logits, ref_acts = _reference_forward(net, x, k)
        torch.testing.assert_close(logits[k], ref_logits, atol=ATOL, rtol=1e-4)
        for a, r in zip(acts.values(), ref_acts):
            torch.testing.assert_close(a[k], r, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("n_runs", [1, 3])
def test_to_grouped_layout(n_runs: int) -> None:
    x = torch.arange(n_runs * 2 * 4 * 5 * 6, dtype=torch.float32).view(n_runs, 2, 4, 5, 6)
    for cl in (True, False):
        g = to_grouped(x, cl)
        assert g.shape == (2, n_runs * 4, 5, 6)
        fmt = torch.channels_last if cl else torch.contiguous_format
        assert g.is_contiguous(memory_format=fmt)
        assert torch.equal(g[1, 4 * (n_runs - 1) + 2], x[-1, 1, 2])
        assert torch.equal(from_grouped(g, n_runs), x)


def test_grouped_conv_helper_matches_loop() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 9, 9, generator=g)
    w = torch.randn(3, 5, 4, 3, 3, generator=g)
    b = torch.randn(3, 5, generator=g)
    for cl in (True, False):
        out = from_grouped(grouped_conv2d(to_grouped(x, cl), w, b, stride=2, padding=1), 3)
        for k in range(3):
            ref = F.conv2d(x[k], w[k], b[k], stride=2, padding=1)
            torch.testing.assert_close(out[k], ref, atol=1e-5, rtol=1e-5)


def test_batch_independence() -> None:
    """Run k gives the same init (bitwise), logits and gradients alone as inside a batch of 3."""
    seeds = [21, 22, 23]
    x, y = _images(3, 8, seed=2), _labels(3, 8)
    batch = ConvNet(RunStreams(seeds))
    _loss(batch(x), y).backward()
    for k, seed in enumerate(seeds):
        alone = ConvNet(RunStreams([seed]))
        for name in batch.params:
            assert torch.equal(alone.params[name][0], batch.params[name][k].detach()), name
        logits = alone(x[k : k + 1])
        torch.testing.assert_close(logits[0], batch(x)[k].detach(), atol=ATOL, rtol=1e-4)
        _loss(logits, y[k : k + 1]).backward()
        for name, p in alone.params.items():
            torch.testing.assert_close(p.grad[0], batch.params[name].grad[k], atol=1e-5, rtol=1e-3)


def test_unit_layers_alias_parameters() -> None:
    net = ConvNet(RunStreams([0, 1]))
    layers = net.unit_layers()
    assert [u.name for u in layers] == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    assert [u.n_units for u in layers] == [32, 64, 128, 128, 128]
    assert layers[0].fan_in_shape == (3, 5, 5)
    assert layers[2].out_weight.shape == (2, 128, 128, 4)
    assert layers[4].out_weight.shape == (2, 2, 128)
    assert layers[0].init == ("uniform", pytest.approx(1 / math.sqrt(75)))
    with torch.no_grad():
        layers[1].in_weight[1, 7].fill_(0.5)
        layers[1].in_bias[0, 3] = 2.0
        layers[1].out_weight[0, :, 9].fill_(-1.0)  # conv3 weights fed by conv2 channel 9
        layers[2].out_weight[1, :, 5].fill_(3.0)  # fc1 columns of conv3 channel 5
    p = net.params
    assert bool((p["conv2.weight"][1, 7] == 0.5).all())
    assert float(p["conv2.bias"][0, 3].detach()) == 2.0
    assert bool((p["conv3.weight"][0, :, 9] == -1.0).all())
    assert bool((p["fc1.weight"][1, :, 20:24] == 3.0).all())
    assert int((p["fc1.weight"][1] == 3.0).sum()) == 128 * 4
    for u in layers:  # views of the parameters themselves (optimiser state lookup relies on this)
        for t in (u.in_weight, u.out_weight):
            base = t if t._base is None else t._base
            assert any(base is q for q in net.parameters())


def test_flatten_order_of_last_conv_channels() -> None:
    """Silencing the fc1 columns of conv3 channel c makes the output independent of that channel."""
    net = ConvNet(RunStreams([5]))
    c = 17
    conv3 = next(u for u in net.unit_layers() if u.name == "conv3")
    with torch.no_grad():
        conv3.out_weight[:, :, c].zero_()
    x = _images(1, 4, seed=3)
    before = net(x).detach()
    with torch.no_grad():
        net.params["conv3.bias"][0, c] += 100.0  # channel c becomes hugely active
        net.params["conv3.bias"][0, c + 1] += 100.0  # a neighbour that still feeds fc1
    after = net(x).detach()
    assert not torch.allclose(before, after)
    with torch.no_grad():
        net.params["conv3.bias"][0, c + 1] -= 100.0
    torch.testing.assert_close(net(x).detach(), before, atol=1e-5, rtol=0)


def test_reset_head_and_reinit() -> None:
    net = ConvNet(RunStreams([0, 1]))
    initial = {k: v.detach().clone() for k, v in net.params.items()}
    w_obj = net.params["fc3.weight"]
    net.reset_head()
    assert net.params["fc3.weight"] is w_obj
    assert bool((net.params["fc3.weight"] == 0).all()) and bool((net.params["fc3.bias"] == 0).all())
    assert torch.equal(net.params["fc2.weight"], initial["fc2.weight"])
    assert bool((net(_images(2, 3)) == 0).all())
    net.reinit(0)
    assert all(torch.equal(net.params[k], initial[k]) for k in initial)
    net.reinit(1)
    assert not torch.equal(net.params["conv1.weight"], initial["conv1.weight"])


def test_state_dict_round_trip_and_mismatch() -> None:
    a, b = ConvNet(RunStreams([0, 1])), ConvNet(RunStreams([2, 3]))
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    with pytest.raises(CheckpointError, match="shape"):
        ConvNet(RunStreams([0])).load_state_dict(a.state_dict())
    with pytest.raises(CheckpointError, match="missing"):
        a.load_state_dict({"conv1.weight": a.params["conv1.weight"]})


def test_linear_classifier() -> None:
    net = build_imagenet_net("linear", RunStreams([0, 1]))
    assert isinstance(net, LinearClassifier) and net.unit_layers() == []
    x = _images(2, 3)
    logits, acts = net(x, return_activations=True)
    assert acts == {}
    ref = F.linear(x[1].reshape(3, -1), net.params["fc.weight"][1], net.params["fc.bias"][1])
    torch.testing.assert_close(logits[1], ref, atol=1e-5, rtol=1e-5)
    net.reset_head()
    assert bool((net(x) == 0).all())
    with pytest.raises(ValueError, match="unknown architecture"):
        build_imagenet_net("mlp", RunStreams([0]))  # type: ignore[arg-type]


def test_cbp_runs_on_convnet_units() -> None:
    """Integration with lop.algos.cbp: replaced conv3 channels get zero fc1 columns."""
    from lop.algos.cbp import ContinualBackprop
    from lop.config import CBPConfig

    streams = RunStreams([0, 1])
    net = ConvNet(streams)
    cbp = ContinualBackprop(net.unit_layers(), [CBPConfig(replacement_rate=0.5, maturity=0)] * 2, streams)
    _, acts = net(_images(2, 4), return_activations=True)
    cbp.step(1, list(acts.values()))
    replaced = cbp.age[2] == 0  # [S, 128] conv3 channels replaced in this step
    kept_rows = cbp.age[3] > 0  # fc1 units not themselves redrawn afterwards
    assert bool((replaced.sum(1) == 64).all())
    fc1 = net.params["fc1.weight"].detach().view(2, 128, 128, 4)
    for k in range(2):
        block = fc1[k][kept_rows[k]][:, replaced[k]]
        assert bool((block == 0).all())
        assert bool((fc1[k][kept_rows[k]][:, ~replaced[k]] != 0).any())
