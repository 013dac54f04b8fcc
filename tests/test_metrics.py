"""Tests of lop.metrics (docs/protocols/metrics.md) against direct numpy computations and known values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lop import metrics as M

RANK_FNS = {
    "effective_rank": M.effective_rank,
    "approximate_rank": M.approximate_rank,
    "abs_approximate_rank": M.abs_approximate_rank,
    "stable_rank": M.stable_rank,
}


# ---- numpy references (written straight from the docs/protocols/metrics.md definitions) ------------------------------
def np_sv(a: np.ndarray) -> np.ndarray:
    return np.linalg.svd(a.astype(np.float64), compute_uv=False)


def np_effective_rank(a: np.ndarray) -> float:
    s = np_sv(a)
    if s.sum() == 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def np_threshold_rank(v: np.ndarray, threshold: float) -> float:
    total = v.sum()
    if total == 0:
        return 0.0
    c = np.cumsum(v)
    for k in range(len(v)):
        if c[k] >= threshold * c[-1]:
            return float(k + 1)
    raise AssertionError("unreachable")


def np_approximate_rank(a: np.ndarray, threshold: float = 0.99) -> float:
    return np_threshold_rank(np_sv(a) ** 2, threshold)


def np_abs_approximate_rank(a: np.ndarray, threshold: float = 0.99) -> float:
    return np_threshold_rank(np_sv(a), threshold)


def np_stable_rank(a: np.ndarray) -> float:
    a = a.astype(np.float64)
    top = np.linalg.norm(a, 2)
    return 0.0 if top == 0 else float(np.linalg.norm(a, "fro") ** 2 / top**2)


NP_FNS = {
    "effective_rank": np_effective_rank,
    "approximate_rank": np_approximate_rank,
    "abs_approximate_rank": np_abs_approximate_rank,
    "stable_rank": np_stable_rank,
}


def orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def with_singular_values(rng: np.random.Generator, n: int, d: int, s: np.ndarray) -> np.ndarray:
    """An n×d matrix U diag(s) Vᵀ with prescribed singular values s (len min(n, d))."""
    k = min(n, d)
    return orthogonal(rng, n)[:, :k] @ np.diag(s) @ orthogonal(rng, d)[:, :k].T


def matrices() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    rank_deficient = with_singular_values(rng, 30, 12, np.array([5.0, 3, 2, 1, 0.5] + [0.0] * 7))
    decaying = with_singular_values(rng, 40, 16, 0.7 ** np.arange(16))
    wide = with_singular_values(rng, 8, 20, np.linspace(4.0, 0.1, 8))
    return [
        rank_deficient,
        decaying,
        np.zeros((10, 6)),
        np.eye(10),
        rng.standard_normal((50, 20)),
        np.maximum(rng.standard_normal((64, 24)), 0.0),  # ReLU-like features
        np.outer(np.ones(12), np.arange(8.0)),  # rank 1
        wide,
    ]


# ---- rank metrics ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(RANK_FNS))
@pytest.mark.parametrize("idx", range(8))
def test_rank_metrics_match_numpy(name: str, idx: int) -> None:
    a = matrices()[idx]
    got = RANK_FNS[name](torch.tensor(a, dtype=torch.float32)[None])
    assert got.shape == (1,) and got.dtype == torch.float64
    want = NP_FNS[name](a.astype(np.float32))
    assert got.item() == pytest.approx(want, rel=1e-6, abs=1e-9)


def test_known_values() -> None:
    rng = np.random.default_rng(1)
    eye = torch.eye(10, dtype=torch.float64)[None]
    for fn in RANK_FNS.values():
        assert fn(eye).item() == pytest.approx(10.0)
    # σ = (4, 3, 0): p = (4/7, 3/7); stable = 25/16; approx: 16/25 < .99 -> 2; abs: 4/7 < .99 -> 2
    a = torch.tensor(with_singular_values(rng, 5, 3, np.array([4.0, 3.0, 0.0])))[None]
    p = np.array([4 / 7, 3 / 7])
    assert M.effective_rank(a).item() == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-12)
    assert M.stable_rank(a).item() == pytest.approx(25 / 16, rel=1e-12)
    assert M.approximate_rank(a).item() == 2.0
    assert M.abs_approximate_rank(a).item() == 2.0
    # σ = (10, 1, 1, 1): σ² cumsum 100/103 = .971, 101/103 = .981, 102/103 = .990 -> 3;
    # σ cumsum 10/13, 11/13, 12/13 = .923 -> 4
    b = torch.tensor(with_singular_values(rng, 6, 4, np.array([10.0, 1, 1, 1])))[None]
    assert M.approximate_rank(b).item() == 3.0
    assert M.abs_approximate_rank(b).item() == 4.0
    assert M.approximate_rank(b, threshold=0.9).item() == 1.0
    assert M.abs_approximate_rank(b, threshold=0.9).item() == 3.0
    # a rank-r matrix with equal singular values has effective rank exactly r
    c = torch.tensor(with_singular_values(rng, 20, 10, np.array([2.0] * 4 + [0.0] * 6)))[None]
    assert M.effective_rank(c).item() == pytest.approx(4.0, rel=1e-9)
    assert M.approximate_rank(c, threshold=1.0).item() == 4.0


def test_zero_matrix_and_single_unit() -> None:
    z = torch.zeros(2, 7, 5)
    for fn in RANK_FNS.values():
        assert torch.equal(fn(z), torch.zeros(2, dtype=torch.float64))
    one = torch.tensor([[[0.0], [2.0], [-1.0]]])  # one unit: rank 1 unless all zero
    for fn in RANK_FNS.values():
        assert fn(one).item() == pytest.approx(1.0)


def test_singular_values_and_rank_metrics_dict() -> None:
    rng = np.random.default_rng(2)
    s = np.array([3.0, 2.0, 1.0, 0.25])
    a = torch.tensor(with_singular_values(rng, 9, 4, s), dtype=torch.float32)[None]
    sv = M.singular_values(a)
    assert sv.shape == (1, 4) and sv.dtype == torch.float64
    np.testing.assert_allclose(sv[0].numpy(), s, rtol=1e-6)
    assert M.singular_values(a, dtype=None).dtype == torch.float32
    all4 = M.rank_metrics(a)
    assert set(all4) == set(RANK_FNS)
    for name, fn in RANK_FNS.items():
        assert torch.equal(all4[name], fn(a))


def test_rank_batch_independence_and_nan_isolation() -> None:
    mats = [m[:6, :6] for m in matrices()]
    batch = torch.tensor(np.stack(mats), dtype=torch.float32)
    batch_nan = batch.clone()
    batch_nan[2, 0, 0] = float("nan")
    for fn in RANK_FNS.values():
        full = fn(batch)
        with_nan = fn(batch_nan)
        for k in range(batch.shape[0]):
            alone = fn(batch[k : k + 1])
            assert torch.equal(full[k : k + 1], alone)
            if k != 2:
                assert torch.equal(with_nan[k : k + 1], alone)
        assert torch.isnan(with_nan[2])


def test_rank_argument_errors() -> None:
    with pytest.raises(ValueError, match=r"\[S, n, d\]"):
        M.effective_rank(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="threshold"):
        M.approximate_rank(torch.eye(3)[None], threshold=1.5)


# ---- unit activity ---------------------------------------------------------------------------
def relu_features(seed: int, s: int, n: int, units: int, dead: list[int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h = torch.relu(torch.randn(s, n, units, generator=g))
    h[:, :, dead] = 0.0
    return h


def test_dead_units_fc_and_conv() -> None:
    h = relu_features(0, 2, 50, 8, dead=[1, 5])
    h[1, :, 6] = 0.0  # run 1 has one more dead unit
    h[0, 3, 1] = -0.5  # negative is not "zero": unit 1 of run 0 is not dead
    mask = M.dead_unit_mask(h)
    np_mask = np.all(h.numpy() == 0, axis=1)
    assert torch.equal(mask, torch.tensor(np_mask))
    assert torch.equal(M.dead_units(h), torch.tensor([1 / 8, 3 / 8], dtype=torch.float64))

    conv = torch.relu(torch.randn(2, 4, 3, 5, 5, generator=torch.Generator().manual_seed(1)))
    conv[:, :, 0] = 0.0
    conv[0, :, 2] = 0.0
    conv[0, 3, 2, 4, 4] = 1.0  # one example, one position: channel 2 of run 0 alive
    np_mask = np.all(conv.numpy() == 0, axis=(1, 3, 4))
    assert torch.equal(M.dead_unit_mask(conv, positions=2), torch.tensor(np_mask))
    assert torch.equal(M.dead_units(conv, positions=2), torch.tensor([1 / 3, 1 / 3], dtype=torch.float64))
    with pytest.raises(ValueError, match="positions=2"):
        M.dead_units(conv)


def test_dormant_units_known_counts() -> None:
    n, active = 100, [0, 1, 2, 50]
    h = torch.zeros(1, n, len(active))
    for j, a in enumerate(active):
        h[0, :a, j] = 1.0
    h[0, 90:, 0] = -1.0  # negative values are not active
    assert torch.equal(M.dormant_unit_mask(h), torch.tensor([[True, False, False, False]]))
    assert M.dormant_units(h).item() == 0.25  # < 1%
    assert M.dormant_units(h, strict=False).item() == 0.5  # <= 1%
    assert M.dormant_units(h, threshold=0.03).item() == 0.75
    assert M.dormant_units(h, threshold=0.0).item() == 0.0
    # against numpy on random data with several runs
    g = torch.Generator().manual_seed(3)
    r = torch.randn(3, 200, 16, generator=g) - torch.linspace(0, 4, 16)
    frac = (r.numpy() > 0).mean(axis=1)
    for thr in (0.01, 0.05, 0.2):
        assert torch.equal(M.dormant_unit_mask(r, thr), torch.tensor(frac < thr))
        np.testing.assert_allclose(M.dormant_units(r, thr).numpy(), (frac < thr).mean(axis=1))


def test_dormant_conv_any_vs_mean() -> None:
    h = torch.zeros(1, 10, 2, 1, 2)
    h[0, :, 0, 0, 0] = 1.0
    h[0, :, 0, 0, 1] = -2.0  # channel 0: positive somewhere, mean < 0
    assert M.dormant_units(h, positions=2, conv_active="any").item() == 0.5  # channel 1 only
    assert M.dormant_units(h, positions=2, conv_active="mean").item() == 1.0
    relu = torch.relu(torch.randn(2, 30, 4, 3, 3, generator=torch.Generator().manual_seed(4)))
    relu[:, 5:, 1] = 0
    for thr in (0.1, 0.2, 0.5):
        assert torch.equal(
            M.dormant_unit_mask(relu, thr, positions=2, conv_active="any"),
            M.dormant_unit_mask(relu, thr, positions=2, conv_active="mean"),
        )
    with pytest.raises(ValueError, match="conv_active"):
        M.dormant_units(h, positions=2, conv_active="max")  # type: ignore[arg-type]


def test_redo_known_scores() -> None:
    h = torch.zeros(1, 4, 4)
    h[0, :, 1] = torch.tensor([1.0, -1.0, 1.0, -1.0])  # mean|h| = 1
    h[0, :, 2] = torch.tensor([4.0, 0.0, 4.0, 0.0])  # 2
    h[0, :, 3] = 5.0  # 5 -> layer mean = 2
    np.testing.assert_allclose(M.redo_scores(h)[0].numpy(), [0.0, 0.5, 1.0, 2.5])
    assert torch.equal(M.redo_dormant_mask(h, 0.5), torch.tensor([[True, True, False, False]]))
    assert M.redo_dormant_fraction(h, 0.5).item() == 0.5
    assert M.redo_dormant_fraction(h, 0.1).item() == 0.25
    # an all-zero layer: every unit dormant
    assert torch.equal(M.redo_dormant_fraction(torch.zeros(2, 3, 5), 0.1), torch.ones(2, dtype=torch.float64))


def test_redo_matches_numpy_and_tau0_is_dead() -> None:
    h = relu_features(5, 3, 40, 12, dead=[0, 7])
    conv = torch.randn(2, 6, 5, 4, 4, generator=torch.Generator().manual_seed(6))
    conv[1, :, 3] = 0
    for x, pos in ((h, 0), (conv, 2)):
        a = np.abs(x.numpy().astype(np.float64))
        m = a.reshape(*a.shape[:3], -1).mean(axis=(1, 3))
        want = m / m.mean(axis=1, keepdims=True)
        np.testing.assert_allclose(M.redo_scores(x, positions=pos).numpy(), want, rtol=1e-12)
        assert torch.equal(M.redo_dormant_mask(x, 0.0, positions=pos), M.dead_unit_mask(x, positions=pos))
        np.testing.assert_allclose(M.redo_dormant_fraction(x, 0.3, pos).numpy(), (want <= 0.3).mean(axis=1))


def test_unit_metrics_single_unit_batch_independence_and_nan() -> None:
    one = torch.tensor([[[0.0], [0.0]], [[0.0], [3.0]]])  # S=2, n=2, one unit
    assert torch.equal(M.dead_units(one), torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert torch.equal(M.dormant_units(one, 0.6), torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert torch.equal(M.dormant_units(one, 0.5), torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert torch.equal(M.redo_dormant_fraction(one, 0.5), torch.tensor([1.0, 0.0], dtype=torch.float64))

    h = relu_features(7, 4, 30, 10, dead=[2])
    h[1, :20, 4] = 0
    h_nan = h.clone()
    h_nan[3, 0, 0] = float("nan")
    fns = [
        M.dead_units,
        lambda x: M.dormant_units(x, 0.5),
        lambda x: M.redo_dormant_fraction(x, 0.2),
    ]
    for fn in fns:
        full, with_nan = fn(h), fn(h_nan)
        for k in range(4):
            assert torch.equal(full[k : k + 1], fn(h[k : k + 1]))
        assert torch.equal(with_nan[:3], full[:3])
        assert torch.isnan(with_nan[3])
    with pytest.raises(ValueError, match="no examples"):
        M.dead_units(torch.zeros(1, 0, 3))


# ---- weights ---------------------------------------------------------------------------------
def test_weight_magnitude_and_change() -> None:
    g = torch.Generator().manual_seed(8)
    ws = [
        torch.randn(3, 4, 5, generator=g),
        torch.randn(3, 7, generator=g),
        torch.randn(3, 2, 2, 3, 3, generator=g),
    ]
    flat = np.concatenate([w.numpy().reshape(3, -1) for w in ws], axis=1).astype(np.float64)
    np.testing.assert_allclose(M.weight_magnitude(ws).numpy(), np.abs(flat).mean(axis=1), rtol=1e-12)
    new = [w + 0.1 * torch.randn(w.shape, generator=g) for w in ws]
    new[0][1] = ws[0][1]  # run 1's first tensor unchanged
    diff = np.concatenate([(b - a).numpy().reshape(3, -1) for a, b in zip(ws, new)], axis=1).astype(
        np.float64
    )
    got = M.weight_change(ws, new)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), np.abs(diff).mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(M.weight_change(ws, new, "sum").numpy(), np.abs(diff).sum(axis=1), rtol=1e-12)
    assert torch.equal(M.weight_change(ws, ws), torch.zeros(3, dtype=torch.float64))
    for k in range(3):
        assert torch.equal(M.weight_magnitude([w[k : k + 1] for w in ws]), M.weight_magnitude(ws)[k : k + 1])
    assert M.weight_magnitude([torch.full((1, 10), -0.5)]).item() == 0.5
    with pytest.raises(ValueError, match="leading run axis"):
        M.weight_magnitude([torch.zeros(3, 2), torch.zeros(2, 2)])
    with pytest.raises(ValueError, match="identical shapes"):
        M.weight_change(ws, new[:2])
