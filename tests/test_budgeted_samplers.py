"""Samplers, distillation terms, FC corrections and the budget arithmetic of `budgeted_cl` (unit level)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lop.algos import samplers as smp
from lop.algos.distillation import distill_loss
from lop.algos.fc_correction import bic_apply, fit_bic, weight_align
from lop.config import SamplerConfig, from_dict
from lop.errors import ConfigError
from lop.problems.budgeted_stream import batch_sizes, linear_decay, step_budget
from lop.rng import RunStreams


def _labels(counts: list[int], s: int = 2) -> torch.Tensor:
    lab = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return lab.repeat(s, 1)


def test_uniform_is_flat():
    p = smp.static_probs(SamplerConfig(kind="uniform"), _labels([3, 5]), 2, 2, 4)
    assert torch.allclose(p, torch.full_like(p, 1 / 8))


def test_class_balanced_is_inverse_class_frequency():
    """p_i ∝ 1/n_{y_i}: each class gets the same total mass, a rare class's examples weigh more."""
    lab = _labels([1, 3, 6])
    p = smp.static_probs(SamplerConfig(kind="class_balanced"), lab, 3, 0, 10)
    per_class = torch.stack([p[:, lab[0] == c].sum(1) for c in range(3)], 1)
    assert torch.allclose(per_class, torch.full_like(per_class, 1 / 3))
    assert p[0, 0] == pytest.approx(1 / 3) and p[0, 1] == pytest.approx(1 / 9)  # not ∝ n_c
    # and the draws follow it
    streams = RunStreams([0, 1])
    idx = torch.cat([smp.draw(streams, c, p, 1000) for c in range(6)], 1)
    frac0 = (lab.gather(1, idx) == 0).to(torch.float64).mean(1)
    assert torch.all((frac0 - 1 / 3).abs() < 0.03)


def test_fifo_returns_the_last_k():
    lab = _labels([10, 10])
    p = smp.static_probs(SamplerConfig(kind="fifo", window=5), lab, 2, 4, 99)
    assert torch.all(p[:, :15] == 0) and torch.allclose(p[:, 15:], torch.full((2, 5), 0.2, dtype=torch.float64))
    # window 0: as many as the step trains on
    p = smp.static_probs(SamplerConfig(kind="fifo"), lab, 2, 4, 7)
    assert (p[0] > 0).nonzero().flatten().tolist() == list(range(13, 20))
    idx = smp.draw(RunStreams([3]), 0, p[:1], 500)
    assert set(idx.flatten().tolist()) == set(range(13, 20))


def test_recency_weights_grow_geometrically_with_arrival():
    n_new, decay = 4, 2.0
    p = smp.static_probs(SamplerConfig(kind="recency", decay=decay), _labels([12]), 1, n_new, 5)
    ratio = p[0, 1:] / p[0, :-1]
    assert torch.allclose(ratio, torch.full_like(ratio, math.exp(decay / n_new)))
    # the newest step (last n_new) weighs e^decay times the one before, in total
    assert p[0, -4:].sum() / p[0, -8:-4].sum() == pytest.approx(math.exp(decay))


def test_draw_from_inverts_the_cdf():
    p = torch.tensor([[0.25, 0.0, 0.75]], dtype=torch.float64)
    u = torch.tensor([[0.0, 0.2, 0.25, 0.3, 0.99]])
    assert smp.draw_from(p, u).tolist() == [[0, 0, 2, 2, 2]]


def test_herding_picks_the_examples_nearest_the_class_mean_first():
    # class 0: three unit vectors around the x-axis and one far away; class 1: two examples
    ang = torch.tensor([0.0, 0.1, -0.1, 1.5, 3.0, 3.1])
    f = torch.stack([torch.cos(ang), torch.sin(ang)], -1).unsqueeze(0)
    lab = torch.tensor([[0, 0, 0, 0, 1, 1]])
    keep = smp.herding_keep(f, lab, 2, 0.25)  # ⌈0.25·4⌉ = 1 of class 0, ⌈0.5⌉ = 1 of class 1
    mean0 = f[0, :4].mean(0)
    best0 = int(torch.argmax(f[0, :4] @ mean0))
    assert keep[0, :4].nonzero().flatten().tolist() == [best0]
    assert int(keep[0, 4:].sum()) == 1
    keep = smp.herding_keep(f, lab, 2, 0.5)
    assert int(keep[0, :4].sum()) == 2 and not keep[0, 3]  # the outlier is never among the first picks


def test_kmeans_keeps_the_quota_of_each_class_nearest_its_centres():
    torch.manual_seed(0)
    lab = torch.tensor([[0] * 10 + [1] * 6, [1] * 8 + [0] * 8])
    f = torch.randn(2, 16, 4)
    keep = smp.kmeans_keep(f, lab, 2, 0.5, 2)
    for s in range(2):
        for c in range(2):
            n = int((lab[s] == c).sum())
            assert int(keep[s][lab[s] == c].sum()) == math.ceil(0.5 * n)
    assert smp.kmeans_keep(f, lab, 2, 1.0, 3).all()


def test_scoring_samplers_take_the_highest_scores():
    logp = torch.log_softmax(torch.tensor([[[2.0, 0.0], [0.0, 0.0], [0.0, 3.0]]]), -1)
    y = torch.tensor([[0, 0, 0]])
    assert smp.top_scoring(smp.scores("max_loss", logp, y), 1).tolist() == [[2]]
    assert smp.top_scoring(smp.scores("uncertainty", logp, y), 1).tolist() == [[1]]


def test_extra_forward_passes_per_sampler():
    assert smp.extra_forward_per_example(SamplerConfig(kind="uniform", candidates=5)) == 0
    for kind in ("herding", "kmeans", "max_loss", "uncertainty"):
        assert smp.extra_forward_per_example(SamplerConfig(kind=kind, candidates=3)) == 3


@pytest.mark.parametrize("fixed", [0, 1, 7, 100])
@pytest.mark.parametrize("extra", [0, 1, 2, 5])
@pytest.mark.parametrize("factor", [0.25, 1.0, 4.0])
def test_every_account_charges_exactly_the_budget(fixed, extra, factor):
    b = step_budget(10, 16, factor, fixed, extra)
    assert b.budget == round(3 * 10 * 16 * factor)
    assert b.spent == b.budget
    assert 0 <= b.forfeited < b.per_example == 3 + extra
    assert sum(batch_sizes(b.n_train, 16)) == b.n_train


def test_a_budget_that_cannot_train_is_an_error():
    with pytest.raises(ConfigError, match="iterations"):
        step_budget(1, 4, 0.25, 10, 0)
    with pytest.raises(ConfigError, match="budget"):
        step_budget(10, 16, 0.0, 0, 0)


def test_linear_decay_reaches_zero_within_the_step():
    n = 8
    f = [linear_decay(i, n) for i in range(n)]
    assert f[0] == 1.0 and all(a > b for a, b in itertools.pairwise(f))
    assert f[-1] == pytest.approx(1 / n) and linear_decay(n, n) == 0.0
    assert batch_sizes(35, 16) == [16, 16, 3] and batch_sizes(32, 16) == [16, 16]


@pytest.mark.parametrize("kind", ["bce", "kl", "cosine", "mse"])
def test_distillation_is_zero_at_the_stored_logits_and_positive_away(kind):
    torch.manual_seed(1)
    z_old = torch.randn(2, 5, 6)
    n_old = torch.tensor([[3, 3, 4, 6, 2]] * 2)
    here = distill_loss(kind, z_old.clone(), z_old, n_old, 2.0)
    away = distill_loss(kind, z_old + torch.randn(2, 5, 6), z_old, n_old, 2.0)
    if kind != "bce":  # BCE against soft targets has its entropy as the minimum
        assert torch.allclose(here, torch.zeros(2), atol=1e-6)
    assert torch.all(away > here)
    # columns beyond an example's n_old do not count
    moved = z_old.clone()
    moved[..., 5] += 10.0  # column 5 is old only for the example with n_old = 6
    n_small = torch.tensor([[3, 3, 4, 5, 2]] * 2)
    assert torch.allclose(distill_loss(kind, moved, z_old, n_small, 2.0), distill_loss(kind, z_old, z_old, n_small, 2.0))


def test_weight_aligning_equalises_mean_norms():
    w = torch.cat([torch.ones(1, 3, 4), 3 * torch.ones(1, 2, 4)], 1)
    gamma = weight_align(w, 3, 5)
    assert gamma.item() == pytest.approx(1 / 3)
    assert torch.allclose(w[:, 3:].norm(dim=-1).mean(), w[:, :3].norm(dim=-1).mean())


def test_bic_fit_lowers_the_held_out_loss_and_touches_only_new_classes():
    torch.manual_seed(2)
    y = torch.randint(0, 4, (2, 64))
    logits = torch.nn.functional.one_hot(y, 4).float() * 2 + torch.randn(2, 64, 4)
    logits[..., 2:] += 3.0  # new classes 2, 3 dominate
    a, b = fit_bic(logits, y, 2, 4, 200, 0.1)

    def ce(z):
        return -torch.log_softmax(z, -1).gather(-1, y.unsqueeze(-1)).mean((1, 2))

    assert torch.all(ce(bic_apply(logits, a, b, 2, 4)) < ce(logits))
    out = bic_apply(logits, a, b, 2, 4)
    assert torch.equal(out[..., :2], logits[..., :2])


def test_bad_sampler_settings_are_config_errors():
    from lop.config import MethodConfig

    with pytest.raises(ConfigError, match=r"sampler\.kind"):
        from_dict(MethodConfig, {"sampler": {"kind": "reservoir"}})
    with pytest.raises(ConfigError, match="keep"):
        from_dict(MethodConfig, {"sampler": {"kind": "herding", "keep": 0}})
    with pytest.raises(ConfigError, match=r"distill\.loss"):
        from_dict(MethodConfig, {"distill": {"loss": "l1"}})
