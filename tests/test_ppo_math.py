"""PPO arithmetic against hand-computed examples and naive per-run references."""

from __future__ import annotations

import math

import pytest
import torch

from lop.rl import gae, gaussian_log_prob, ppo_clip_loss, standardize, value_loss

F64 = torch.float64


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def test_gae_hand_example_with_truncation_and_termination() -> None:
    # one run, gamma = lam = 0.5 (gamma * lam = 0.25); step 1 is truncated (bootstrap from the
    # final observation's value 10), step 2 terminated (no bootstrap), step 3 is the rollout's end.
    rewards = _t([[1, 2, 3, 4]])
    values = _t([[0.5, 1.0, 1.5, 2.0]])
    next_values = _t([[1.0, 10.0, 2.0, 3.0]])
    terminated = _t([[0, 0, 1, 0]])
    ends = _t([[0, 1, 1, 0]])
    # deltas: 1 + .5*1 - .5 = 1.0 | 2 + .5*10 - 1 = 6.0 | 3 + 0 - 1.5 = 1.5 | 4 + .5*3 - 2 = 3.5
    # advantages backwards: A3 = 3.5; A2 = 1.5 (episode ended); A1 = 6.0 (ended); A0 = 1 + .25*6 = 2.5
    adv, ret = gae(rewards, values, next_values, terminated, ends, 0.5, 0.5)
    assert adv.tolist() == [[2.5, 6.0, 1.5, 3.5]]
    assert ret.tolist() == [[3.0, 7.0, 3.0, 5.5]]  # A + V


def test_gae_per_run_gamma_lambda() -> None:
    # run 0: the example above; run 1: gamma = lam = 1, no episode end, rewards 1, V = 0, final bootstrap 2
    # deltas 1, 1, 1, 1 + 2 = 3 -> advantages 6, 5, 4, 3
    rewards = _t([[1, 2, 3, 4], [1, 1, 1, 1]])
    values = _t([[0.5, 1.0, 1.5, 2.0], [0, 0, 0, 0]])
    next_values = _t([[1.0, 10.0, 2.0, 3.0], [0, 0, 0, 2]])
    terminated = _t([[0, 0, 1, 0], [0, 0, 0, 0]])
    ends = _t([[0, 1, 1, 0], [0, 0, 0, 0]])
    gamma = torch.tensor([0.5, 1.0], dtype=F64)
    adv, ret = gae(rewards, values, next_values, terminated.bool(), ends.bool(), gamma, gamma.clone())
    assert adv.tolist() == [[2.5, 6.0, 1.5, 3.5], [6.0, 5.0, 4.0, 3.0]]
    assert ret.tolist() == [[3.0, 7.0, 3.0, 5.5], [6.0, 5.0, 4.0, 3.0]]


def _naive_gae(r, v, nv, term, ends, gamma, lam):  # one run, plain Python
    adv, running = [0.0] * len(r), 0.0
    for t in reversed(range(len(r))):
        delta = r[t] + gamma * (1 - term[t]) * nv[t] - v[t]
        running = delta + gamma * lam * (1 - ends[t]) * running
        adv[t] = running
    return adv


def test_gae_matches_naive_loop_and_rows_are_independent() -> None:
    g = torch.Generator().manual_seed(0)
    S, T = 3, 50
    r, v, nv = (torch.randn(S, T, generator=g, dtype=F64) for _ in range(3))
    ends = torch.rand(S, T, generator=g) < 0.1
    term = ends & (torch.rand(S, T, generator=g) < 0.5)
    adv, ret = gae(r, v, nv, term, ends, 0.99, 0.95)
    for k in range(S):
        ref = _naive_gae(
            r[k].tolist(),
            v[k].tolist(),
            nv[k].tolist(),
            term[k].int().tolist(),
            ends[k].int().tolist(),
            0.99,
            0.95,
        )
        assert torch.allclose(adv[k], torch.tensor(ref, dtype=F64), rtol=0, atol=1e-12)
        alone = gae(r[k : k + 1], v[k : k + 1], nv[k : k + 1], term[k : k + 1], ends[k : k + 1], 0.99, 0.95)
        assert torch.equal(alone[0][0], adv[k]) and torch.equal(alone[1][0], ret[k])
    assert torch.equal(ret, adv + v)


def test_gae_rejects_mismatched_shapes() -> None:
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="shapes"):
        gae(x, x, x, x, torch.zeros(2, 3), 0.99, 0.95)


def test_standardize_hand_example() -> None:
    # [1, 2, 3, 4]: mean 2.5, unbiased std sqrt(5/3); a constant row is only centred
    out = standardize(_t([[1, 2, 3, 4], [5, 5, 5, 5]]))
    s = math.sqrt(5 / 3)
    expected = _t([[-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s], [0, 0, 0, 0]])
    assert torch.allclose(out, expected, rtol=0, atol=1e-15)
    # per run: a row's result does not depend on the other rows
    assert torch.equal(standardize(_t([[1, 2, 3, 4]]))[0], out[0])
    # works on [S, B, ...] (standardises over everything but the run axis)
    y = standardize(_t([[1, 2, 3, 4]]).reshape(1, 2, 2))
    assert torch.equal(y.reshape(1, 4), out[:1])


def test_gaussian_log_prob_hand_values_and_torch_equivalence() -> None:
    half_log_2pi = 0.5 * math.log(2 * math.pi)  # 0.9189385332...
    # 2 action dims, mean 0, log std 0, action 0: -2 * 0.5 log 2pi = -1.8378770664
    lp = gaussian_log_prob(
        torch.zeros(1, 1, 2, dtype=F64), torch.zeros(1, 2, dtype=F64), torch.zeros(1, 1, 2, dtype=F64)
    )
    assert lp.shape == (1, 1) and lp.item() == pytest.approx(-1.8378770664093453, abs=1e-15)
    # 1 dim, mean 1, sigma 2, action 3: z = 1 -> -0.5 - log 2 - 0.5 log 2pi = -2.1120857137
    lp = gaussian_log_prob(_t([[[1.0]]]), _t([[math.log(2.0)]]), _t([[[3.0]]]))
    assert lp.item() == pytest.approx(-0.5 - math.log(2.0) - half_log_2pi, abs=1e-14)
    # batched: S = 2 runs with their own log-std, B = 5, A = 3
    g = torch.Generator().manual_seed(1)
    mean, act = torch.randn(2, 5, 3, generator=g, dtype=F64), torch.randn(2, 5, 3, generator=g, dtype=F64)
    log_std = torch.randn(2, 3, generator=g, dtype=F64)
    ref = torch.distributions.Normal(mean, log_std.exp()[:, None, :]).log_prob(act).sum(-1)
    assert torch.allclose(gaussian_log_prob(mean, log_std, act), ref, rtol=0, atol=1e-12)


def test_ppo_clip_loss_hand_example_and_gradient() -> None:
    # eps 0.2; ratios 1.5, 0.5, 1.1, 0.7; advantages 1, 1, -2, -1
    # min(r A, clip(r) A): min(1.5, 1.2) = 1.2 | min(0.5, 0.8) = 0.5 | -2.2 | min(-0.7, -0.8) = -0.8
    # loss = -(1.2 + 0.5 - 2.2 - 0.8) / 4 = 0.325
    logp_old = torch.zeros(1, 4, dtype=F64)
    logp_new = torch.log(_t([[1.5, 0.5, 1.1, 0.7]])).requires_grad_(True)
    adv = _t([[1, 1, -2, -1]])
    loss = ppo_clip_loss(logp_new, logp_old, adv, 0.2)
    assert loss.shape == (1,) and loss.item() == pytest.approx(0.325, abs=1e-15)
    loss.sum().backward()
    # clipped terms (0 and 3) carry no gradient; others: d/dlogp of -r A / 4 = -r A / 4
    assert torch.allclose(logp_new.grad, _t([[0.0, -0.125, 0.55, 0.0]]), rtol=0, atol=1e-15)


def test_ppo_clip_loss_per_run_clip() -> None:
    # run 0: eps 0.2 as above (0.325); run 1: eps 0.6 clips nothing: -(1.5 + 0.5 - 2.2 - 0.7) / 4 = 0.225
    logp_new = torch.log(_t([[1.5, 0.5, 1.1, 0.7]] * 2))
    adv = _t([[1, 1, -2, -1]] * 2)
    loss = ppo_clip_loss(logp_new, torch.zeros(2, 4, dtype=F64), adv, torch.tensor([0.2, 0.6], dtype=F64))
    assert torch.allclose(loss, _t([[0.325, 0.225]])[0], rtol=0, atol=1e-15)


def test_value_loss_hand_example() -> None:
    # run 0: ((1 - 0)^2 + (2 - 4)^2) / 2 = 2.5; run 1: (0 + 1) / 2 = 0.5
    loss = value_loss(_t([[1, 2], [3, 3]]), _t([[0, 4], [3, 4]]))
    assert loss.tolist() == [2.5, 0.5]
