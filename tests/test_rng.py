"""lop.rng: stateless per-run streams."""

import numpy as np
import pytest
import torch

from lop.rng import TORCH_BACKEND_MIN, RunStreams, key_words


def test_batched_keys_match_scalar_definition():
    seeds = [0, 7, 2**40 + 3]
    k1, k2 = RunStreams(seeds)._keys("abc", 2**33 + 5)
    assert [(int(a), int(b)) for a, b in zip(k1[:, 0], k2[:, 0])] == [
        key_words(s, "abc", 2**33 + 5) for s in seeds
    ]


@pytest.mark.parametrize("shape", [(5,), (3, 4), (TORCH_BACKEND_MIN + 1,)])
def test_rows_do_not_depend_on_batch(shape):
    batch = RunStreams([3, 11, 5])
    alone = RunStreams([11])
    assert torch.equal(batch.uniform("u", 4, shape)[1], alone.uniform("u", 4, shape)[0])
    assert torch.equal(batch.normal("n", 4, shape)[1], alone.normal("n", 4, shape)[0])


def test_streams_and_counters_differ_and_repeat():
    r = RunStreams([0])
    a = r.uniform("a", 0, (100,))
    assert torch.equal(a, RunStreams([0]).uniform("a", 0, (100,)))
    assert not torch.equal(a, r.uniform("a", 1, (100,)))
    assert not torch.equal(a, r.uniform("b", 0, (100,)))
    assert not torch.equal(a, RunStreams([1]).uniform("a", 0, (100,)))


@pytest.mark.parametrize("n", [20_000, TORCH_BACKEND_MIN * 2])
def test_distributions(n):
    r = RunStreams([1, 2])
    u = r.uniform("u", 0, (n,)).numpy()
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
    z = r.normal("z", 0, (n,), std=torch.tensor([1.0, 3.0])).numpy()
    assert abs(z[0].mean()) < 0.03 and abs(z[0].std() - 1) < 0.03 and abs(z[1].std() - 3) < 0.1
    lo_hi = r.uniform("v", 0, (n,), low=-2.0, high=torch.tensor([2.0, 4.0])).numpy()
    assert lo_hi[0].min() >= -2 and lo_hi[0].max() < 2 and lo_hi[1].max() > 3.9


def test_permutation_and_randint():
    r = RunStreams([0, 1])
    p = r.permutation("p", 3, 1000)
    for row in p:
        assert sorted(row.tolist()) == list(range(1000))
    assert not torch.equal(p[0], p[1])
    k = r.randint("k", 0, (10_000,), 15)
    assert k.min() == 0 and k.max() == 14
    counts = np.bincount(k[0].numpy(), minlength=15)
    assert counts.min() > 500


def test_negative_seed_rejected():
    with pytest.raises(ValueError):
        RunStreams([-1])
