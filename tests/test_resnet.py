"""Seed-batched ResNet-18 for 32×32 images (docs/protocols/incremental_cifar.md)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lop.nets.resnet import ResNet18, resnet18_specs
from lop.rng import RunStreams

# Small images keep the tests fast; the network is size-agnostic (global average pool).
HW = 8


def _images(s: int, b: int, seed: int = 0, hw: int = HW) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(s, b, 3, hw, hw, generator=g)


def _labels(s: int, b: int, n: int = 100) -> torch.Tensor:
    return ((torch.arange(s * b) * 13 + 1) % n).view(s, b)


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over runs of each run's mean cross-entropy (runs stay independent)."""
    s, b, n = logits.shape
    return F.cross_entropy(logits.reshape(s * b, n), y.reshape(-1), reduction="sum") / b


def _reference_forward(net: ResNet18, x: torch.Tensor, k: int, training: bool) -> torch.Tensor:
    """Run k alone with plain per-run torch ops; BN statistics on clones of run k's buffers."""
    p = {name: t[k] for name, t in net.params.items()}
    buf = {name: t[k].clone() for name, t in net.buffers.items()}

    def conv_bn(h: torch.Tensor, spec) -> torch.Tensor:
        h = F.conv2d(h, p[f"{spec.name}.weight"], p[f"{spec.name}.bias"], spec.stride, spec.padding)
        return F.batch_norm(
            h,
            buf[f"{spec.bn}.running_mean"],
            buf[f"{spec.bn}.running_var"],
            p[f"{spec.bn}.weight"],
            p[f"{spec.bn}.bias"],
            training,
            0.1,
            1e-5,
        )

    stem, blocks = resnet18_specs(net.width)
    h = torch.relu(conv_bn(x[k], stem))
    for blk in blocks:
        out = conv_bn(torch.relu(conv_bn(h, blk.conv1)), blk.conv2)
        h = torch.relu(out + (h if blk.shortcut is None else conv_bn(h, blk.shortcut)))
    return F.linear(h.mean(dim=(2, 3)), p["fc.weight"], p["fc.bias"])


@pytest.fixture(scope="module")
def net3() -> ResNet18:
    return ResNet18(RunStreams([3, 4, 5]))


def test_parameter_count() -> None:
    net = ResNet18(RunStreams([0]))
    # torchvision's CIFAR-style ResNet-18 (100 classes) has 11,220,132; +4,800 conv biases.
    assert net.n_params_per_run() == 11_224_932
    convs = [k for k in net.params if k.endswith(".weight") and net.params[k].dim() == 5]
    assert len(convs) == 20  # 17 main-path convs + 3 projection shortcuts
    assert net.params["layer2.0.shortcut.conv.weight"].shape == (1, 128, 64, 1, 1)
    assert net.params["fc.weight"].shape == (1, 100, 512)
    assert net.buffers["layer4.1.bn2.running_var"].shape == (1, 512)


def _closed_form_params(w: int, n_classes: int) -> int:
    """Parameters per run of the width-w ResNet-18, counted by hand (not with the code under test).

    A k×k conv c_in→c_out with bias + its BN has c_out·c_in·k² + c_out + 2·c_out parameters.
    stem 3→w: 27w + 3w = 30w. layer1 (two blocks w→w, no shortcut): 4·(9w² + 3w) = 36w² + 12w.
    layers 2-4 go m→2m (m = w, 2w, 4w): conv1 18m² + 6m, conv2 36m² + 6m, 1×1 shortcut 2m² + 6m,
    second block 2·(36m² + 6m) → 128m² + 30m each, i.e. 128·21w² + 30·7w = 2688w² + 210w together.
    Convs + BN: 2724w² + 252w; fc 8w→n_classes: 8w·n_classes + n_classes.
    """
    return 2724 * w * w + 252 * w + 8 * w * n_classes + n_classes


@pytest.mark.parametrize(("width", "n_classes"), [(64, 100), (8, 100), (16, 15), (1, 10)])
def test_parameter_count_at_other_widths(width: int, n_classes: int) -> None:
    assert _closed_form_params(64, 100) == 11_224_932  # the formula agrees with the paper's network
    net = ResNet18(RunStreams([0, 1]), n_classes=n_classes, width=width)
    assert net.n_params_per_run() == _closed_form_params(width, n_classes)
    assert net.params["stem.conv.weight"].shape == (2, width, 3, 3, 3)
    assert net.params["layer2.0.shortcut.conv.weight"].shape == (2, 2 * width, width, 1, 1)
    assert net.params["layer4.1.conv2.weight"].shape == (2, 8 * width, 8 * width, 3, 3)
    assert net.params["fc.weight"].shape == (2, n_classes, 8 * width)
    assert net.buffers["layer4.1.bn2.running_var"].shape == (2, 8 * width)


def test_narrow_network_forward_and_init() -> None:
    net = ResNet18(RunStreams([3, 4]), width=8)
    x = _images(2, 3, seed=5)
    logits, feats, acts = net(x, return_features=True, return_activations=True)
    assert logits.shape == (2, 3, 100) and feats.shape == (2, 3, 64)
    assert acts["stem.conv"].shape == (2, 3, 8, HW, HW)
    assert acts["layer4.1.conv2"].shape == (2, 3, 64, HW // 8, HW // 8)
    assert [u.n_units for u in net.unit_layers()][::4] == [8, 8, 16, 32, 64]  # stem, layerX.1.conv2
    with torch.no_grad():
        ref = [_reference_forward(net, x, k, training=False) for k in range(2)]
        net.eval()
        out = net(x)
    for k in range(2):
        torch.testing.assert_close(out[k], ref[k], atol=1e-4, rtol=1e-4)
    # the head's init follows the 64 features: N(0, 1/64); draws depend on the shape, not on the width
    fc = ResNet18(RunStreams(list(range(40))), n_classes=100, width=8).params["fc.weight"].detach()
    torch.testing.assert_close(fc.std().item(), 1 / 8, rtol=0.05, atol=0)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="width must be >= 1"):
            ResNet18(RunStreams([0]), width=bad)


@pytest.mark.parametrize("scheme", ["reference", "torchvision"])
def test_init_schemes(scheme: str) -> None:
    net = ResNet18(RunStreams([1]), init=scheme)
    w = net.params["layer3.1.conv1.weight"].detach()  # 256 → 256, 3×3
    fan = 256 * 9
    torch.testing.assert_close(w.std().item(), math.sqrt(2.0 / fan), rtol=0.02, atol=0)
    assert float(net.params["stem.bn.weight"].detach().min()) == 1.0
    assert float(net.params["stem.bn.bias"].detach().abs().max()) == 0.0
    fc = net.params["fc.weight"].detach()
    b = net.params["layer3.1.conv1.bias"].detach()
    if scheme == "reference":
        assert float(b.abs().max()) == 0.0 and float(net.params["fc.bias"].detach().abs().max()) == 0.0
        torch.testing.assert_close(fc.std().item(), 1 / math.sqrt(512), rtol=0.05, atol=0)
    else:
        assert 0 < float(b.abs().max()) <= 1 / math.sqrt(fan)
        assert float(fc.abs().max()) <= 1 / math.sqrt(512)
        # fan_out differs from fan_in for the stem: 64·9 vs 3·9
        stem = net.params["stem.conv.weight"].detach()
        torch.testing.assert_close(stem.std().item(), math.sqrt(2.0 / (64 * 9)), rtol=0.1, atol=0)
    with pytest.raises(ValueError, match="init scheme"):
        ResNet18(RunStreams([1]), init="xavier")  # type: ignore[arg-type]


def test_forward_outputs(net3: ResNet18) -> None:
    x = _images(3, 2)
    logits, feats, acts = net3(x, return_features=True, return_activations=True)
    assert logits.shape == (3, 2, 100) and feats.shape == (3, 2, 512)
    assert len(acts) == 17 and list(acts) == [u.name for u in net3.unit_layers()]
    assert acts["stem.conv"].shape == (3, 2, 64, HW, HW)
    assert acts["layer2.0.conv1"].shape == (3, 2, 128, HW // 2, HW // 2)
    assert acts["layer4.1.conv2"].shape == (3, 2, 512, HW // 8, HW // 8)
    assert all(bool((a >= 0).all()) for a in acts.values())
    torch.testing.assert_close(feats, acts["layer4.1.conv2"].mean(dim=(3, 4)))
    only_feats = net3(x, return_features=True)
    assert isinstance(only_feats, tuple) and len(only_feats) == 2
    assert isinstance(net3(x), torch.Tensor)


@pytest.mark.parametrize("training", [True, False])
def test_grouped_matches_per_run_reference(net3: ResNet18, training: bool) -> None:
    x = _images(3, 4, seed=1)
    net3.train(training)
    with torch.no_grad():
        ref = [_reference_forward(net3, x, k, training) for k in range(3)]
        logits = net3(x)
    net3.train()
    for k in range(3):
        torch.testing.assert_close(logits[k], ref[k], atol=1e-4, rtol=1e-4)


def test_batch_norm_running_stats_per_run() -> None:
    net = ResNet18(RunStreams([0, 1]))
    x = _images(2, 4, seed=2)
    x[1] = 3.0 * x[1] + 1.0  # run 1 sees differently scaled images
    with torch.no_grad():
        net(x)
    rm = net.buffers["stem.bn.running_mean"]
    assert not torch.equal(rm[0], rm[1]) and float(rm.abs().sum()) > 0
    # the update is the PyTorch one on each run's own batch statistics
    pre = F.conv2d(x[0], net.params["stem.conv.weight"][0], net.params["stem.conv.bias"][0], padding=1)
    torch.testing.assert_close(rm[0], 0.1 * pre.mean(dim=(0, 2, 3)).detach(), atol=1e-5, rtol=1e-4)
    before = {k: v.clone() for k, v in net.buffers.items()}
    net.eval()
    with torch.no_grad():
        net(x)
    assert all(torch.equal(before[k], net.buffers[k]) for k in before)


def test_batch_independence() -> None:
    seeds = [7, 8, 9]
    x, y = _images(3, 2, seed=4, hw=16), _labels(3, 2)
    batch = ResNet18(RunStreams(seeds))
    out_b, feat_b = batch(x, return_features=True)
    _loss(out_b, y).backward()
    k, seed = 1, seeds[1]
    alone = ResNet18(RunStreams([seed]))
    for name in batch.params:
        assert torch.equal(alone.params[name][0], batch.params[name][k].detach()), name
    out_a, feat_a = alone(x[k : k + 1], return_features=True)
    torch.testing.assert_close(out_a[0], out_b[k].detach(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(feat_a[0], feat_b[k].detach(), atol=1e-4, rtol=1e-4)
    _loss(out_a, y[k : k + 1]).backward()
    # (conv biases before a training-mode BN have zero true gradient: only rounding noise remains)
    for name, p in alone.params.items():
        torch.testing.assert_close(p.grad[0], batch.params[name].grad[k], atol=2e-5, rtol=1e-3)
    for name, buf in alone.buffers.items():
        torch.testing.assert_close(buf[0], batch.buffers[name][k], atol=1e-5, rtol=1e-4)


def test_unit_layers_alias_parameters(net3: ResNet18) -> None:
    chain = net3.unit_layers()
    assert len(chain) == 17
    assert [u.name for u in net3.unit_layers("block_internal")] == [
        f"layer{i}.{j}.conv1" for i in range(1, 5) for j in range(2)
    ]
    first, last = chain[0], chain[-1]
    assert first.name == "stem.conv" and first.out_weight is net3.params["layer1.0.conv1.weight"]
    assert last.out_weight is net3.params["fc.weight"] and last.out_bias is net3.params["fc.bias"]
    assert first.init == ("normal", pytest.approx(math.sqrt(2 / 27)))
    for u in chain:
        assert u.in_weight.shape[1] == u.n_units == u.out_weight.shape[2]
        assert set(u.bn) == {"weight", "bias", "running_mean", "running_var"}
        assert all(t.shape == (3, u.n_units) for t in u.bn.values())
    u = chain[5]  # layer2.0.conv1
    with torch.no_grad():
        u.in_weight[2, 4].fill_(0.25)
        u.out_weight[1, :, 6].zero_()
        u.bn["weight"][0, 3] = 5.0
        u.bn["running_var"][2, 1] = 9.0
    p, buf = net3.params, net3.buffers
    assert bool((p["layer2.0.conv1.weight"][2, 4] == 0.25).all())
    assert bool((p["layer2.0.conv2.weight"][1, :, 6] == 0).all())
    assert float(p["layer2.0.bn1.weight"][0, 3].detach()) == 5.0
    assert float(buf["layer2.0.bn1.running_var"][2, 1]) == 9.0
    with pytest.raises(ValueError, match="unit scope"):
        net3.unit_layers("all")  # type: ignore[arg-type]


def test_reset_head_and_reinit() -> None:
    net = ResNet18(RunStreams([0, 1]))
    initial = {k: v.detach().clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for t in [*net.parameters(), *net.buffers.values()]:
            t.add_(0.01)
    w_obj = net.params["fc.weight"]
    net.reset_head(3)
    assert net.params["fc.weight"] is w_obj
    assert not torch.equal(net.params["fc.weight"], initial["fc.weight"])
    assert not torch.equal(net.params["stem.conv.weight"], initial["stem.conv.weight"])
    net.reset_head(0)
    assert torch.equal(net.params["fc.weight"], initial["fc.weight"])
    assert torch.equal(net.params["fc.bias"], initial["fc.bias"])

    moved = net.buffers["stem.bn.running_mean"].clone()
    net.reinit(0, reset_running_stats=False)
    assert torch.equal(net.buffers["stem.bn.running_mean"], moved)
    assert all(torch.equal(net.params[k], initial[k]) for k in net.params)
    net.reinit(0)
    assert all(torch.equal(v, initial[k]) for k, v in net.state_dict().items())
    net.reinit(2)
    assert not torch.equal(net.params["layer1.0.conv1.weight"], initial["layer1.0.conv1.weight"])
    # a retrained run does not depend on its batch either
    alone = ResNet18(RunStreams([1]))
    alone.reinit(2)
    assert torch.equal(alone.params["layer1.0.conv1.weight"][0], net.params["layer1.0.conv1.weight"][1])
