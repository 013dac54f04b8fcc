"""Batched optimisers equal torch.optim run per seed."""

import pytest
import torch

from lop.config import MethodConfig
from lop.optim import make_optimizer


def _adam_reference(cfg, params, grads_seq, k, **kw):
    """torch.optim.Adam on run k's rows of `params`/`grads_seq` with `cfg`'s hyperparameters."""
    return _reference(
        torch.optim.Adam,
        [p[k] for p in params],
        [[g[k] for g in gs] for gs in grads_seq],
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        **kw,
    )


def _reference(opt_cls, params, grads_seq, **kw):
    p = [t.clone().requires_grad_() for t in params]
    opt = opt_cls(p, **kw)
    for grads in grads_seq:
        for t, g in zip(p, grads):
            t.grad = g.clone()
        opt.step()
    return [t.detach() for t in p]


@pytest.mark.parametrize(
    "cfgs",
    [
        [MethodConfig(lr=0.1, momentum=0.9, weight_decay=0.01), MethodConfig(lr=0.01, momentum=0.5)],
        [
            MethodConfig(optimizer="adam", lr=1e-3, weight_decay=1e-3),
            MethodConfig(optimizer="adam", lr=3e-3, betas=(0.99, 0.99)),
        ],
    ],
)
def test_batched_equals_torch_per_run(cfgs):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(2, 3, 4, generator=gen), torch.randn(2, 3, generator=gen)]
    grads_seq = [[torch.randn(2, 3, 4, generator=gen), torch.randn(2, 3, generator=gen)] for _ in range(5)]
    batched = [p.clone() for p in params]
    opt = make_optimizer(batched, cfgs, "cpu")
    for grads in grads_seq:
        opt.step(grads)
    for k, cfg in enumerate(cfgs):
        if cfg.optimizer == "sgd":
            ref = _reference(
                torch.optim.SGD,
                [p[k] for p in params],
                [[g[k] for g in gs] for gs in grads_seq],
                lr=cfg.lr,
                momentum=cfg.momentum,
                weight_decay=cfg.weight_decay,
            )
        else:
            ref = _adam_reference(cfg, params, grads_seq, k)
        for b, r in zip(batched, ref):
            torch.testing.assert_close(b[k], r, rtol=1e-5, atol=1e-6)


def test_state_views_mirror_a_view_of_a_parameter():
    w = torch.zeros(2, 3, 8)
    opt = make_optimizer([w], [MethodConfig(optimizer="adam")] * 2, "cpu")
    opt.step([torch.ones_like(w)])
    view = w.view(2, 3, 4, 2)
    states = opt.state_views(view)
    assert len(states) == 4
    states[0][1, 2, 3, 1] = 42.0
    assert opt.state[0]["exp_avg"][1, 2, 7] == 42.0


def test_mixed_optimisers_rejected():
    with pytest.raises(ValueError):
        make_optimizer([torch.zeros(2, 1)], [MethodConfig(), MethodConfig(optimizer="adam")], "cpu")


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_fused_adam_equals_torch_per_run_and_ignores_its_batch(weight_decay):
    """per_element_steps=False: each run = torch.optim.Adam on its own rows, whatever shares the batch."""
    cfgs = [
        MethodConfig(optimizer="adam", lr=1e-3, weight_decay=weight_decay),
        MethodConfig(optimizer="adam", lr=3e-3, betas=(0.99, 0.99), weight_decay=weight_decay),
        MethodConfig(optimizer="adam", lr=1e-3, weight_decay=weight_decay),
    ]
    gen = torch.Generator().manual_seed(1)
    params = [torch.randn(3, 5, 4, generator=gen), torch.randn(3, 5, generator=gen)]
    grads_seq = [[torch.randn(3, 5, 4, generator=gen), torch.randn(3, 5, generator=gen)] for _ in range(7)]
    batched = [p.clone() for p in params]
    opt = make_optimizer(batched, cfgs, "cpu", resettable=False)
    for grads in grads_seq:
        opt.step(grads)
    for k, cfg in enumerate(cfgs):
        ref = _adam_reference(cfg, params, grads_seq, k, fused=True)
        for b, r in zip(batched, ref):
            assert torch.equal(b[k], r)
        alone = [p[k : k + 1].clone() for p in params]
        solo = make_optimizer(alone, [cfg], "cpu", resettable=False)
        for grads in grads_seq:
            solo.step([g[k : k + 1] for g in grads])
        for b, a in zip(batched, alone):
            assert torch.equal(b[k], a[0])


def test_fused_adam_state_round_trips_and_refuses_element_resets():
    w = torch.zeros(2, 6)
    cfgs = [MethodConfig(optimizer="adam")] * 2
    opt = make_optimizer([w], cfgs, "cpu", resettable=False)
    opt.step([torch.ones_like(w)])
    state = {k: [t.clone() for t in v] for k, v in opt.state_dict().items()}
    w2 = w.clone()
    opt2 = make_optimizer([w2], cfgs, "cpu", resettable=False)
    opt2.load_state_dict(state)
    g = torch.arange(12.0).view(2, 6)
    opt.step([g])
    opt2.step([g])
    assert torch.equal(w, w2) and opt2.steps.tolist() == [2.0, 2.0]
    with pytest.raises(RuntimeError, match="per_element_steps"):
        opt.state_views(w)


def _adam_per_element_reference(params, grads_seq, cfgs, reset_at=None):
    """The per-element Adam update written out one parameter at a time (no buffers, no clamping):
    m, v lerp; c1, c2 running products; p ← p − α · m / ((sqrt(v / c2) + ε) · c1)."""
    col = lambda vals, like: torch.tensor(vals, dtype=torch.float32).view(-1, *([1] * (like.dim() - 1)))  # noqa: E731
    params = [p.clone() for p in params]
    state = [{k: torch.zeros_like(p) for k in ("m", "v", "c1", "c2")} for p in params]
    for t, grads in enumerate(grads_seq):
        if reset_at is not None and t == reset_at:
            for st in state[0].values():
                st[:, 1].zero_()  # units 1 of the first weight (as continual backprop resets a unit's row)
        for p, g, st in zip(params, grads, state):
            b1, b2 = col([c.betas[0] for c in cfgs], p), col([c.betas[1] for c in cfgs], p)
            wd = col([c.weight_decay for c in cfgs], p)
            g = torch.addcmul(g, p, wd)  # g + λ·w, as torch.optim.Adam's coupled L2
            st["m"].lerp_(g, 1 - b1)
            st["v"].lerp_(g * g, 1 - b2)
            st["c1"].mul_(b1).add_(1 - b1)
            st["c2"].mul_(b2).add_(1 - b2)
            denom = (st["v"] / st["c2"]).sqrt() + col([c.eps for c in cfgs], p)
            p.addcmul_(st["m"] / (denom * st["c1"]), -col([c.lr for c in cfgs], p))
    return params


@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
@pytest.mark.parametrize("flat", [True, False])
def test_per_element_adam_matches_its_formula_bit_for_bit(weight_decay, flat):
    """Both layouts of the per-element Adam (one [S, N] state buffer, or one per parameter) give the
    formula's bits, with zero and subnormal second moments (the clamped sqrt path) and a state reset."""
    cfgs = [
        MethodConfig(optimizer="adam", lr=1e-3, weight_decay=weight_decay),
        MethodConfig(optimizer="adam", lr=3e-4, betas=(0.8, 0.99), weight_decay=weight_decay),
        MethodConfig(optimizer="adam", lr=1e-2, eps=1e-6, weight_decay=weight_decay),
    ]
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(3, 5, 7, generator=gen), torch.randn(3, 5, generator=gen), torch.randn(3, 2, 5, generator=gen)]
    grads_seq = []
    for t in range(40):
        grads = []
        for p in params:
            g = torch.randn(p.shape, generator=gen)
            g[..., 0] = 0.0  # never a gradient: v stays exactly 0
            if t > 3:
                g[..., -1] = 0.0  # v decays from a tiny value into the subnormal range
            elif p.dim() > 1:
                g[..., -1] = 1e-19
            grads.append(g)
        grads_seq.append(grads)
    batched = [p.clone() for p in params]
    opt = make_optimizer(batched, cfgs, "cpu", flat_state=flat)
    assert opt.flat is flat
    for t, grads in enumerate(grads_seq):
        if t == 20:
            for st in opt.state_views(batched[0][:, 1]):
                st.zero_()
        opt.step(grads)
    ref = _adam_per_element_reference(params, grads_seq, cfgs, reset_at=20)
    for b, r in zip(batched, ref):
        assert torch.equal(b, r)


def test_flat_adam_state_views_address_the_parameters_elements():
    """In the flat layout, the state view of any slice of a parameter holds that slice's elements."""
    w, b = torch.zeros(2, 3, 4), torch.zeros(2, 3)
    opt = make_optimizer([w, b], [MethodConfig(optimizer="adam")] * 2, "cpu", flat_state=True)
    assert opt.flat
    for view, index in [(w[:, 1], (slice(None), 1)), (w[:, :, 2], (slice(None), slice(None), 2)), (b[1], (1,)),
                        (w[1, 2:, 1:3], (1, slice(2, None), slice(1, 3)))]:  # fmt: skip
        for st in opt.state.__iter__().__next__().values():
            st.zero_()
        for name, sv in zip(opt.state_names, opt.state_views(view)):
            sv.fill_(7.0)
            target = opt.state[0 if view._base is w or view is w else 1][name]
            expect = torch.zeros_like(target)
            expect[index] = 7.0
            assert torch.equal(target, expect), (name, index)
            sv.zero_()
