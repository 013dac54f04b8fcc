"""Slowly-changing regression: target network, input stream, learning and batch independence."""

import torch

from lop.config import CBPConfig, MethodConfig
from lop.experiments.base import RunSpec
from lop.experiments.scr import SCRProblem, SCRTrainer
from lop.problems.scr import LTUTarget, SlowlyChangingInputs
from lop.rng import RunStreams


def test_ltu_target_properties():
    streams = RunStreams([0, 1])
    t = LTUTarget(streams, n_inputs=20, n_hidden=100, beta=0.7)
    for tensor in (t.w, t.b, t.v, t.c):
        assert set(tensor.unique().tolist()) <= {-1.0, 1.0}
    s_i = (20 - t.w.sum(-1) + t.b) / 2
    torch.testing.assert_close(t.theta, 0.7 * 21 - s_i)
    x = (torch.rand(2, 500, 20, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    y = t(x)
    ltu = ((torch.einsum("sch,sjh->scj", x, t.w) + t.b[:, None]) > t.theta[:, None]).float()
    torch.testing.assert_close(y, (ltu * t.v[:, None]).sum(-1) + t.c[:, None])
    assert torch.all(y == y.round()) and y.abs().max() <= 101
    assert y.std() > 0.5  # the target actually varies with the input


def test_one_bit_flip_every_T_and_resample_variant():
    streams = RunStreams([3, 4])
    gen = SlowlyChangingInputs(streams, n_slow=15, n_fast=5, flip_every=100, variant="one_bit")
    x = torch.cat([gen.chunk(0, 250, 0)[0], gen.chunk(250, 250, 1)[0]], dim=1)
    slow = x[..., :15]
    changes = (slow[:, 1:] != slow[:, :-1]).sum(-1)  # [S, 499]: bits changed between step t and t+1
    for t in range(499):
        expected = 1 if (t + 1) % 100 == 0 else 0
        assert torch.all(changes[:, t] == expected)
    fast = x[..., 15:]
    assert 0.4 < fast.mean() < 0.6 and (fast[:, 1:] != fast[:, :-1]).float().mean() > 0.4
    again = SlowlyChangingInputs(streams, 15, 5, 100, "one_bit")
    one_chunk = again.chunk(0, 500, 0)[0]
    assert torch.equal(one_chunk[..., :15], slow)  # slow bits do not depend on the chunking
    res = SlowlyChangingInputs(streams, 15, 5, 100, "resample_all").chunk(0, 1000, 0)[0][..., :15]
    changed = (res[:, 1:] != res[:, :-1]).sum(-1)
    assert changed.max() > 1 and torch.all(changed[:, torch.arange(999) % 100 != 99] == 0)


def _trainer(cfg, seeds, **problem):
    p = SCRProblem(**{"n_examples": 4000, "bin_size": 1000, "chunk": 1000, "flip_every": 500, **problem})
    return SCRTrainer(p, [RunSpec("m", "s", {}, cfg, s) for s in seeds], torch.device("cpu"))


def test_batch_independence_and_determinism():
    cfg = MethodConfig(
        lr=0.01, weight_decay=1e-3, noise_std=1e-3, cbp=CBPConfig(replacement_rate=1e-2, maturity=50)
    )
    alone = _trainer(cfg, [7])
    batch = _trainer(cfg, [3, 7, 9])
    for pa, pb in zip(alone.net.parameters(), batch.net.parameters()):
        assert torch.equal(pa[0], pb[1])
    assert torch.equal(alone.target.w[0], batch.target.w[1])
    ra = [alone.train_unit(u)[0].values[0, 0] for u in range(4)]
    rb = [batch.train_unit(u)[0].values[1, 0] for u in range(4)]
    assert torch.equal(torch.stack(ra), torch.stack(rb))  # bit-identical alone and in a batch
    again = _trainer(cfg, [7])
    rc = [again.train_unit(u)[0].values[0, 0] for u in range(4)]
    assert torch.equal(torch.stack(ra), torch.stack(rc))  # bit-identical on CPU


def test_learning_reduces_error_and_linear_baseline_runs():
    net = _trainer(
        MethodConfig(lr=0.01), [0, 1], n_examples=10000, bin_size=2000, chunk=2000, flip_every=10000
    )
    errs = [net.train_unit(u)[0].values.mean() for u in range(5)]
    assert errs[-1] < errs[0]
    lin = _trainer(MethodConfig(lr=0.01, arch="linear"), [0])
    assert lin.net.sizes == [20, 1]
    assert torch.isfinite(lin.train_unit(0)[0].values).all()


def test_divergence_is_recorded():
    tr = _trainer(MethodConfig(lr=50.0), [0, 1])
    tr.train_unit(0)
    d = tr.diverged_at()
    assert torch.all(d >= 0) and torch.all(d < 1000)


def test_target_lookup_table_equals_direct_evaluation():
    streams = RunStreams([0, 5])
    target = LTUTarget(streams, 20, 100, 0.7)
    gen = SlowlyChangingInputs(streams, 15, 5, 300, "one_bit")
    x, y = gen.chunk(250, 700, 1, target)  # spans changes at 300, 600, 900
    assert torch.equal(y, target(x))
