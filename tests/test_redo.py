"""ReDo (lop.algos.redo): resets exactly the ReDo-dormant units, generic over UnitLayer."""

from __future__ import annotations

import torch

from lop.algos.redo import ReDo
from lop.config import MethodConfig, ReDoConfig
from lop.nets.mlp import BatchedMLP
from lop.nets.units import UnitLayer
from lop.optim import make_optimizer
from lop.rng import RunStreams

# per-unit mean |h| of a 6-unit layer; the layer mean is 1, so these are the ReDo scores
MEANS = torch.tensor([0.0, 0.2, 1.0, 1.0, 1.4, 2.4])


def _net_and_optimizer(seeds: list[int]):
    streams = RunStreams(seeds)
    net = BatchedMLP([4, 6, 6, 3], "relu", streams, init="lecun_uniform")
    opt = make_optimizer(net.parameters(), [MethodConfig(optimizer="adam", lr=0.1)] * len(seeds), "cpu")
    # per-run test data (row k depends on seeds[k] only)
    opt.step([streams.normal(f"test/g{i}", 0, p.shape[1:]) for i, p in enumerate(net.parameters())])
    for i, b in enumerate(net.biases):
        b.copy_(streams.uniform(f"test/b{i}", 0, b.shape[1:], 0.5, 1.0))  # non-zero, to see the reset
    return streams, net, opt


def _activations(s: int, b: int = 10) -> list[torch.Tensor]:
    h1 = MEANS.view(1, 1, 6).expand(s, b, 6).clone()
    h2 = MEANS.flip(0).view(1, 1, 6).expand(s, b, 6).clone()
    h2[:, ::2] *= -1.0  # ReDo uses |h|
    return [h1, h2]


def test_resets_exactly_the_dormant_units_with_per_run_thresholds() -> None:
    streams, net, opt = _net_and_optimizer([0, 1])
    layers = net.unit_layers()
    before = [t.clone() for t in net.parameters()]
    state_before = [{k: v.clone() for k, v in st.items()} for st in opt.state]
    redo = ReDo(
        layers, [ReDoConfig(threshold=0.1, every=1), ReDoConfig(threshold=0.5, every=1)], streams, opt
    )
    masks = redo.step(7, _activations(2))
    expect1 = torch.tensor(
        [[True, False, False, False, False, False], [True, True, False, False, False, False]]
    )
    assert torch.equal(masks[0], expect1)
    assert torch.equal(masks[1], expect1.flip(1))
    assert [n.tolist() for n in redo.n_reset] == [[1, 2], [1, 2]]
    # every weight matrix W [S, out, in]: rows of reset units redrawn (within the init bound),
    # columns of reset units of the layer below zeroed, everything else bitwise unchanged
    n_w = len(net.weights)
    for li in range(n_w):
        w, w_old = net.weights[li], before[2 * li]
        rows = masks[li] if li < len(masks) else torch.zeros(w.shape[:2], dtype=torch.bool)
        cols = masks[li - 1] if li > 0 else torch.zeros(w.shape[0], w.shape[2], dtype=torch.bool)
        row_m = rows.unsqueeze(2).expand_as(w)
        col_m = cols.unsqueeze(1).expand_as(w) & ~row_m
        keep = ~row_m & ~col_m
        assert torch.equal(w[keep], w_old[keep])
        assert bool((w[col_m] == 0).all())
        assert not bool((w[row_m] == w_old[row_m]).any())
        if li < len(layers):
            assert bool((w[row_m].abs() <= layers[li].init[1]).all())
        b, b_old = net.biases[li], before[2 * li + 1]
        assert torch.equal(b[~rows], b_old[~rows]) and bool((b[rows] == 0).all())
        # Adam state of reset weights is zero, the rest untouched
        for name in opt.state_names:
            st, st_old = opt.state[2 * li][name], state_before[2 * li][name]
            assert torch.equal(st[keep], st_old[keep])
            assert bool((st[~keep] == 0).all())
            sb, sb_old = opt.state[2 * li + 1][name], state_before[2 * li + 1][name]
            assert torch.equal(sb[~rows], sb_old[~rows]) and bool((sb[rows] == 0).all())


def test_reset_keeps_the_network_function_when_only_the_outgoing_side_matters() -> None:
    """Zeroed outgoing weights: the output no longer depends on a reset unit's new incoming weights."""
    streams, net, opt = _net_and_optimizer([0])
    x = torch.randn(1, 5, 4, generator=torch.Generator().manual_seed(1))
    redo = ReDo(net.unit_layers()[1:], [ReDoConfig(threshold=0.5)], streams, opt)
    mask = redo.step(0, _activations(1)[1:])[0]
    assert int(mask.sum()) == 2
    out, _ = net.forward(x)
    with torch.no_grad():
        net.weights[1][:, mask[0]] += 5.0  # perturb the reset units' incoming weights and biases
        net.biases[1][:, mask[0]] += 5.0
    out2, _ = net.forward(x)
    assert torch.equal(out, out2)


def test_period_is_per_run() -> None:
    streams, net, opt = _net_and_optimizer([0, 1])
    redo = ReDo(
        net.unit_layers(),
        [ReDoConfig(threshold=0.5, every=2), ReDoConfig(threshold=0.5, every=3)],
        streams,
        opt,
    )
    assert redo.due(2) and redo.due(3) and not redo.due(5)
    assert [m.any(1).tolist() for m in redo.step(2, _activations(2))] == [[True, False]] * 2
    assert [m.any(1).tolist() for m in redo.step(3, _activations(2))] == [[False, True]] * 2
    assert [m.any(1).tolist() for m in redo.step(5, _activations(2))] == [[False, False]] * 2


def test_new_weights_depend_only_on_the_run_seed() -> None:
    out = []
    for seeds, k in (([5], 0), ([2, 5], 1)):
        streams, net, opt = _net_and_optimizer(seeds)
        redo = ReDo(net.unit_layers(), [ReDoConfig(threshold=0.5)] * len(seeds), streams, opt)
        redo.step(4, _activations(len(seeds)))
        out.append(net.weights[0][k])
    assert torch.equal(out[0], out[1])


def test_conv_layer_channels() -> None:
    """Generic over UnitLayer: a conv layer's channels, scores over batch and positions."""
    streams = RunStreams([0, 1])
    s, n, c, m = 2, 6, 3, 4
    w_in = streams.uniform("w_in", 0, (n, c, 3, 3), -0.5, 0.5)
    b_in = torch.ones(s, n)
    w_next = streams.uniform("w_next", 0, (m, n, 3, 3), -0.5, 0.5)
    bn = {
        "weight": torch.full((s, n), 2.0),
        "bias": torch.ones(s, n),
        "running_mean": torch.ones(s, n),
        "running_var": torch.full((s, n), 3.0),
    }
    layer = UnitLayer("conv1", w_in, b_in, w_next, None, ("uniform", 0.5), bn)
    h = MEANS.view(1, 1, 6, 1, 1).expand(s, 4, n, 5, 5).clone()
    redo = ReDo([layer], [ReDoConfig(threshold=0.1), ReDoConfig(threshold=0.5)], streams)
    (mask,) = redo.step(0, [h])
    assert mask.tolist() == [[True] + [False] * 5, [True, True] + [False] * 4]
    assert bool((w_next.transpose(1, 2)[mask] == 0).all())
    assert bool((w_next.transpose(1, 2)[~mask] != 0).all())
    assert bool((b_in[mask] == 0).all()) and bool((b_in[~mask] == 1).all())
    assert bool((bn["weight"][mask] == 1).all()) and bool((bn["running_var"][mask] == 1).all())
    assert bool((bn["bias"][mask] == 0).all()) and bool((bn["running_mean"][mask] == 0).all())
    assert bool((bn["weight"][~mask] == 2).all())
