"""Continual backpropagation invariants (docs/protocols/cbp.md)."""

import math

import pytest
import torch

from lop.algos.cbp import ContinualBackprop
from lop.config import CBPConfig, MethodConfig
from lop.nets.mlp import BatchedMLP
from lop.nets.units import UnitLayer
from lop.optim import make_optimizer
from lop.rng import RunStreams


def _setup(
    rates,
    maturity=20,
    mode="accumulate",
    utility="contribution",
    sizes=(6, 12, 12, 3),
    momentum=0.9,
    **options,
):
    streams = RunStreams(list(range(len(rates))))
    net = BatchedMLP(list(sizes), "relu", streams)
    opt = make_optimizer(net.parameters(), [MethodConfig(lr=0.01, momentum=momentum)] * len(rates), "cpu")
    cfgs = [
        CBPConfig(replacement_rate=r, maturity=maturity, mode=mode, utility=utility, **options) for r in rates
    ]
    return streams, net, opt, ContinualBackprop(net.unit_layers(), cfgs, streams, opt)


def _train_step(t, net, opt, cbp, x):
    out, cache = net.forward(x)
    opt.step(net.backward(cache, out - 1.0))
    cbp.step(t, cache.post)
    return cache


def test_no_replacement_before_maturity():
    _, net, opt, cbp = _setup([0.5, 1.0], maturity=30)
    x = torch.rand(2, 4, 6, generator=torch.Generator().manual_seed(0))
    for t in range(30):
        _train_step(t, net, opt, cbp, x)
    assert all(int(n.sum()) == 0 for n in cbp.n_replaced)
    assert all(bool((a == 30).all()) for a in cbp.age)
    _train_step(30, net, opt, cbp, x)
    assert sum(int(n.sum()) for n in cbp.n_replaced) > 0


@pytest.mark.parametrize("utility", ["contribution", "adaptable_contribution"])
def test_replaced_units_are_reinitialised(utility):
    _, net, opt, cbp = _setup([0.05, 0.2], maturity=5, utility=utility)
    x = torch.rand(2, 4, 6, generator=torch.Generator().manual_seed(1))
    seen = 0
    for t in range(200):
        before = [w.clone() for w in net.weights]
        _train_step(t, net, opt, cbp, x)
        for i, layer in enumerate(net.unit_layers()):
            replaced = cbp.age[i] == 0  # ages grow by one each step; replaced units restart at 0
            if not replaced.any():
                continue
            seen += int(replaced.sum())
            s_idx, u_idx = replaced.nonzero(as_tuple=True)
            out_w = layer.out_weight[s_idx, :, u_idx]  # [K, m]
            if i + 1 < len(cbp.age):  # a next-layer unit replaced in the same step has a fresh incoming row
                fresh_rows = (cbp.age[i + 1] == 0)[s_idx]
                out_w = out_w[~fresh_rows]
            assert torch.all(out_w == 0)  # exactly zero after the step
            assert torch.all(layer.in_bias[s_idx, u_idx] == 0)
            new_w = layer.in_weight[s_idx, u_idx]
            assert torch.all(new_w.abs() <= layer.init[1])
            assert not torch.equal(new_w, before[i][s_idx, u_idx])
            assert torch.all(cbp.util[i][s_idx, u_idx] == 0)
            mom_in, mom_out = opt.state_views(layer.in_weight)[0], opt.state_views(layer.out_weight)[0]
            assert torch.all(mom_in[s_idx, u_idx] == 0) and torch.all(mom_out[s_idx, :, u_idx] == 0)
    assert seen > 10


def test_replaces_lowest_utility_eligible_unit():
    _streams, net, _opt, cbp = _setup([1.0], maturity=0, sizes=(3, 5, 2))
    cbp.acc[0].fill_(0.0)
    cbp.rate.fill_(1.0 / 5)  # exactly one replacement per step with 5 eligible units
    cbp.util[0].copy_(torch.tensor([[5.0, 1.0, 3.0, 0.5, 4.0]]) * 1e6)
    cbp.age[0].fill_(1000)
    cbp.decay.fill_(0.999999)
    x = torch.rand(1, 1, 3, generator=torch.Generator().manual_seed(2))
    _out, cache = net.forward(x)
    cbp.step(0, cache.post)
    assert int(cbp.age[0][0, 3]) == 0 and int((cbp.age[0] == 0).sum()) == 1


@pytest.mark.parametrize("mode", ["accumulate", "probabilistic"])
def test_long_run_count_matches_rate_times_eligible(mode):
    rates = [0.01, 0.003]
    _, net, opt, cbp = _setup(rates, maturity=10, mode=mode, sizes=(6, 40, 3))
    x = torch.rand(2, 4, 6, generator=torch.Generator().manual_seed(3))
    expected = torch.zeros(2, dtype=torch.float64)
    for t in range(3000):
        eligible = (cbp.age[0] + 1 > cbp.maturity.view(-1, 1)).sum(1)
        expected += torch.tensor(rates, dtype=torch.float64) * eligible
        _train_step(t, net, opt, cbp, x)
    got = cbp.n_replaced[0].to(torch.float64)
    if mode == "accumulate":
        assert torch.all((got - expected).abs() <= 1.0)
    else:
        assert torch.all((got - expected).abs() <= 4 * expected.sqrt() + 2)
    assert got[0] > 100


def test_conv_layer_with_batchnorm_and_bias_correction():
    s, n, m = 2, 4, 3
    streams = RunStreams([0, 1])
    in_w = torch.randn(s, n, 2, 3, 3)
    in_b = torch.randn(s, n)
    out_w = torch.randn(s, m, n, 3, 3)
    out_b = torch.zeros(s, m)
    bn = {k: torch.randn(s, n) for k in ("weight", "bias", "running_mean", "running_var")}
    layer = UnitLayer("conv", in_w, in_b, out_w, out_b, ("normal", 0.1), bn)
    cbp = ContinualBackprop(
        [layer], [CBPConfig(replacement_rate=1.0, maturity=0, bias_correction=True)] * 2, streams
    )
    h = torch.rand(s, 5, n, 6, 6) + 1.0  # positive activations, [S, B, C, H, W]
    w_before = out_w.clone()
    cbp.step(0, [h])
    replaced = cbp.age[0] == 0
    assert replaced.sum() == 2 * n  # rate 1 with all units eligible replaces every unit
    assert torch.all(out_w == 0) and torch.all(in_b == 0)
    assert torch.all(bn["weight"] == 1) and torch.all(bn["bias"] == 0)
    assert torch.all(bn["running_mean"] == 0) and torch.all(bn["running_var"] == 1)
    f_hat = h.mean(dim=(1, 3, 4))  # bias-corrected running mean after one step with decay 0.99
    expected_bias = torch.einsum("smn,sn->sm", w_before.sum(dim=(3, 4)), f_hat)
    torch.testing.assert_close(out_b, expected_bias, rtol=1e-4, atol=1e-5)


def test_batch_with_different_rates_matches_runs_alone():
    x = torch.rand(1, 4, 6, generator=torch.Generator().manual_seed(5))
    _, net_b, opt_b, cbp_b = _setup([0.0, 0.05], maturity=5)
    _, net_a, opt_a, cbp_a = _setup([0.0], maturity=5)
    # run 0 alone (rate 0) vs inside the batch
    for t in range(100):
        _train_step(t, net_b, opt_b, cbp_b, x.expand(2, -1, -1))
        _train_step(t, net_a, opt_a, cbp_a, x)
    for wb, wa in zip(net_b.weights, net_a.weights):
        torch.testing.assert_close(wb[0], wa[0], rtol=1e-5, atol=1e-6)
    assert int(cbp_b.n_replaced[0][1]) > 0 and int(cbp_b.n_replaced[0][0]) == 0


def test_k_max_bounds_replacements_per_step():
    _, _, _, cbp = _setup([0.3], sizes=(6, 10, 3))
    assert cbp.k_max == [min(10, math.floor(0.3 * 10) + 1)]


@pytest.mark.parametrize(
    "shape",
    [(3, 2000, 2000), (2, 10, 2000), (2, 7, 300), (2, 64, 128, 3, 3), (3, 50, 200, 16), (1, 2000, 784)],
)
def test_sliced_magnitudes_are_bit_identical_to_full_formulas(shape, monkeypatch):
    """Row means on cache-sized unit slices and column sums through a scratch buffer: same numbers."""
    import lop.algos.cbp as cbp_mod

    w = torch.randn(*shape, generator=torch.Generator().manual_seed(7))
    full_out = w.abs().sum(dim=[1, *range(3, w.dim())])
    full_in = w.abs().flatten(2).mean(-1)
    for budget in (1, 2**14, 2**20, 2**30):  # from one 64-unit group per slice to a single slice
        monkeypatch.setattr(cbp_mod, "CHUNK_BYTES", budget)
        assert torch.equal(cbp_mod.out_magnitude(w, torch.empty(w.numel() + 3)), full_out)
        assert torch.equal(cbp_mod.in_magnitude(w), full_in)
    monkeypatch.setattr(cbp_mod, "CHUNK_BYTES", 1)
    assert len(cbp_mod._unit_slices(w, 2)) == -(-shape[2] // cbp_mod.UNIT_GROUP)


@pytest.fixture
def one_thread():
    """One torch thread (the order check of `abs_stats` is per thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "shape", [(2, 2000, 2000), (1, 2000, 784), (3, 10, 2000), (2, 257, 3100), (2, 4100, 40), (1, 300, 7)]
)
def test_single_read_stats_are_bit_identical_to_full_formulas(shape, one_thread, monkeypatch):
    """Column sums and row means of |w| from one chunked read equal torch's plain reductions, for row
    counts with and without open blocks/groups (4100: a third summation level) and ragged columns."""
    import lop.algos.cbp as cbp_mod

    monkeypatch.setattr(cbp_mod, "CHUNK_BYTES", 1)  # every shape takes the single-read path
    monkeypatch.setattr(cbp_mod, "_ORDER_CHECKED", {})
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    assert cbp_mod.single_read(w)
    full_out, full_in = w.abs().sum(1), w.abs().mean(-1)
    for chunk_bytes in (1, 2**21, 2**30):  # 16 to 256 rows per chunk
        monkeypatch.setattr(cbp_mod, "CHUNK_ROWS_BYTES", chunk_bytes)
        out_mag, in_mag = cbp_mod.abs_stats(w, rows=True)
        assert torch.equal(out_mag, full_out) and in_mag is not None and torch.equal(in_mag, full_in)
        assert cbp_mod.abs_stats(w, rows=False)[1] is None
        assert torch.equal(cbp_mod.in_magnitude(w), full_in)


def test_single_read_falls_back_when_the_order_does_not_match(one_thread, monkeypatch):
    """A summation order that does not reproduce torch's is detected per shape and thread count: plain
    reductions."""
    import lop.algos.cbp as cbp_mod

    monkeypatch.setattr(cbp_mod, "CHUNK_BYTES", 1)
    monkeypatch.setattr(cbp_mod, "_ORDER_CHECKED", {})
    monkeypatch.setattr(cbp_mod, "CASCADE", 8)  # a wrong model of torch's order
    w = torch.randn(2, 600, 96, generator=torch.Generator().manual_seed(4))
    assert not cbp_mod.single_read(w)
    out_mag, in_mag = cbp_mod.abs_stats(w, rows=True)
    assert (
        torch.equal(out_mag, w.abs().sum(1)) and in_mag is not None and torch.equal(in_mag, w.abs().mean(-1))
    )
    monkeypatch.setattr(cbp_mod, "CASCADE", 16)
    monkeypatch.setattr(cbp_mod, "_ORDER_CHECKED", {})
    assert cbp_mod.single_read(w)  # the right model: single read
    torch.set_num_threads(2)  # threads split reductions: checked once more for this thread count
    assert (2, 600, 96, w.dtype, 2) not in cbp_mod._ORDER_CHECKED
    out_mag, in_mag = cbp_mod.abs_stats(w, rows=True)
    assert (2, 600, 96, w.dtype, 2) in cbp_mod._ORDER_CHECKED
    assert (
        torch.equal(out_mag, w.abs().sum(1)) and in_mag is not None and torch.equal(in_mag, w.abs().mean(-1))
    )


@pytest.mark.parametrize("threads", [1, 2])
def test_sliced_cbp_run_matches_unsliced_run(threads, monkeypatch):
    """A whole CBP run with forced slicing, scratch buffers or single reads equals the plain run
    (single reads, whose row means the next layer reuses unless units were replaced)."""
    import lop.algos.cbp as cbp_mod

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    calls = []
    chunked = cbp_mod._abs_stats_chunked
    monkeypatch.setattr(cbp_mod, "_abs_stats_chunked", lambda *a, **k: calls.append(a[1]) or chunked(*a, **k))
    x = torch.rand(2, 1, 6, generator=torch.Generator().manual_seed(8))
    runs = []
    try:
        for budget in (2**30, 1):
            monkeypatch.setattr(cbp_mod, "CHUNK_BYTES", budget)
            _, net, opt, cbp = _setup(
                [0.02, 0.05], maturity=5, utility="adaptable_contribution", sizes=(6, 200, 150, 3)
            )
            for t in range(60):
                _train_step(t, net, opt, cbp, x)
            runs.append((net.weights, cbp.util))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*[w + u for w, u in runs]):
        assert torch.equal(a, b)
    assert int(cbp.n_replaced[0].sum()) > 0  # layer 0 replaced units: the reused row means were dropped
    if threads == 1:  # (with more threads, if this machine's split reproduces torch's order)
        assert True in calls  # row means from the column-sum read


# ---- options reproducing the reference code of each experiment ---------------------------------------------
@pytest.mark.parametrize("reset", [True, False])
def test_reset_optimizer_state_option(reset):
    """False keeps the momentum of a replaced unit's weights (reference code), True zeroes it."""
    _, net, opt, cbp = _setup([0.2], maturity=2, reset_optimizer_state=reset)
    x = torch.rand(1, 4, 6, generator=torch.Generator().manual_seed(9))
    checked = kept = 0
    for t in range(40):
        out, cache = net.forward(x)
        opt.step(net.backward(cache, out - 1.0))
        mom = [opt.state_views(w)[0].clone() for w in net.weights]
        cbp.step(t, cache.post)
        for i, layer in enumerate(net.unit_layers()):
            s_idx, u_idx = (cbp.age[i] == 0).nonzero(as_tuple=True)
            if len(s_idx) == 0:
                continue
            now_in = opt.state_views(layer.in_weight)[0][s_idx, u_idx]
            now_out = opt.state_views(layer.out_weight)[0][s_idx, :, u_idx]
            if reset:
                assert torch.all(now_in == 0) and torch.all(now_out == 0)
            else:
                assert torch.equal(now_in, mom[i][s_idx, u_idx])
                kept += int((now_in != 0).sum())
                assert torch.equal(now_out, mom[i + 1][s_idx, :, u_idx])
            checked += len(s_idx)
    assert checked > 5 and (reset or kept > 0)


@pytest.mark.parametrize("count", ["eligible", "all"])
def test_count_option(count):
    """One eligible unit of 5: "eligible" accumulates ρ·1 per step, "all" ρ·5 (reference ConvGnT)."""
    _, net, _, cbp = _setup([0.1], maturity=10, sizes=(3, 5, 2), count=count)
    cbp.age[0].copy_(torch.tensor([[20, 0, 0, 0, 0]]))  # unit 0 mature, the others young
    x = torch.rand(1, 1, 3, generator=torch.Generator().manual_seed(10))
    _, cache = net.forward(x)
    cbp.step(0, cache.post)
    assert float(cbp.acc[0][0]) == pytest.approx(0.1 if count == "eligible" else 0.5)
    cbp.age[0].zero_()  # nobody eligible: nothing accumulates in either mode
    before = float(cbp.acc[0][0])
    cbp.step(1, cache.post)
    assert float(cbp.acc[0][0]) == before


def test_reference_sum_utility():
    """u_i = mean|w_out[:, i]| · Σ_t mean|h_i(t)|; the sum survives replacement; ranking by u (no correction)."""
    _, net, opt, cbp = _setup([1e-9], maturity=3, sizes=(6, 8, 4, 3), utility="reference_sum")
    gen = torch.Generator().manual_seed(11)
    total = [torch.zeros(1, 8), torch.zeros(1, 4)]
    for t in range(5):
        x = torch.rand(1, 4, 6, generator=gen)
        cache = _train_step(t, net, opt, cbp, x)
        for i, h in enumerate(cache.post):
            total[i] += h.abs().mean(1)
    for i, layer in enumerate(net.unit_layers()):
        torch.testing.assert_close(cbp.act_sum[i], total[i])
        expected = layer.out_weight.abs().mean(1) * total[i]
        torch.testing.assert_close(cbp.util[i], expected)
    # force one replacement in layer 0: the lowest u goes, its running sum stays
    cbp.rate.fill_(1.0 / 8)
    cbp.acc[0].fill_(0.0)
    layer0 = net.unit_layers()[0]
    target = torch.tensor([[5.0, 1.0, 3.0, 0.5, 4.0, 6.0, 7.0, 8.0]]) * 1e6  # u_i after this step ≈ target
    cbp.act_sum[0].copy_(target / layer0.out_weight.abs().mean(1))
    lowest = 3
    kept = cbp.act_sum[0].clone()
    _, cache = net.forward(torch.rand(1, 4, 6, generator=gen))
    cbp.step(5, cache.post)
    assert int(cbp.age[0][0, lowest]) == 0 and int((cbp.age[0] == 0).sum()) == 1
    assert float(cbp.act_sum[0][0, lowest]) >= float(kept[0, lowest]) > 0
    assert "act_sum" in cbp.state_dict()


def test_new_options_stay_out_of_serialised_config_at_default():
    """Fingerprints of existing runs must not move: `count` is omitted from to_dict at its default."""
    from lop.config import from_dict, to_dict

    assert "count" not in to_dict(CBPConfig())
    assert to_dict(CBPConfig(count="all"))["count"] == "all"
    assert from_dict(CBPConfig, to_dict(CBPConfig(count="all"))) == CBPConfig(count="all")
    assert from_dict(CBPConfig, to_dict(CBPConfig())) == CBPConfig()
