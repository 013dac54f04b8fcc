"""The unit reset shared by CBP and ReDo (`lop.algos.unit_reset`)."""

import torch

from lop.algos.unit_reset import UnitIndex, reset_units, write_units
from lop.config import MethodConfig
from lop.nets.units import UnitLayer
from lop.optim import make_optimizer

S, N, M, C = 2, 5, 3, 2


def _layer(seed: int = 0):
    """A conv layer with BatchNorm whose tensors are views of optimiser-managed parameters."""
    g = torch.Generator().manual_seed(seed)
    params = [
        torch.randn(S, N, C, 3, 3, generator=g),  # in_weight
        torch.randn(S, N, generator=g),  # in_bias
        torch.randn(S, M, N, 3, 3, generator=g),  # out_weight (next conv)
        torch.randn(S, N, generator=g),  # bn weight
        torch.randn(S, N, generator=g),  # bn bias
    ]
    stats = {"running_mean": torch.randn(S, N, generator=g), "running_var": torch.rand(S, N, generator=g) + 1}
    opt = make_optimizer(params, [MethodConfig(lr=0.1, momentum=0.9)] * S, "cpu")
    opt.step([torch.randn(p.shape, generator=g) for p in params])  # non-zero momentum everywhere
    bn = {"weight": params[3], "bias": params[4], **stats}
    layer = UnitLayer("conv", params[0], params[1], params[2], None, ("normal", 0.1), bn)
    return layer, opt, params


def _snapshot(layer, opt, params):
    tensors = [layer.in_weight, layer.in_bias, layer.out_weight, *layer.bn.values()]
    return [t.clone() for t in tensors] + [st.clone() for p in params for st in opt.state_views(p)]


def test_reset_writes_selected_units_and_leaves_others_untouched():
    layer, opt, _ = _layer()
    before = [t.clone() for t in (layer.in_weight, layer.out_weight, layer.bn["running_var"])]
    mom_before = opt.state_views(layer.in_weight)[0].clone()
    mask = torch.tensor([[True, False, False, True, False], [False, False, True, False, False]])
    new = torch.full((S, N, C, 3, 3), 7.0)
    reset_units(layer, new, mask, opt)
    s, i = mask.nonzero(as_tuple=True)
    assert torch.all(layer.in_weight[s, i] == 7.0)
    assert torch.all(layer.in_bias[s, i] == 0)
    assert torch.all(layer.out_weight[s, :, i] == 0)
    for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
        assert torch.all(layer.bn[name][s, i] == value)
    for view, dim in (
        (layer.in_weight, 1),
        (layer.in_bias, 1),
        (layer.out_weight, 2),
        (layer.bn["weight"], 1),
    ):
        mom = opt.state_views(view)[0].movedim(dim, 1)  # [S, n, ...]
        assert torch.all(mom[s, i] == 0) and torch.all(mom[~mask] != 0)
    keep = ~mask
    ks, ki = keep.nonzero(as_tuple=True)
    assert torch.equal(layer.in_weight[ks, ki], before[0][ks, ki])
    assert torch.equal(layer.out_weight[ks, :, ki], before[1][ks, :, ki])
    assert torch.equal(layer.bn["running_var"][ks, ki], before[2][ks, ki])
    assert torch.equal(opt.state_views(layer.in_weight)[0][ks, ki], mom_before[ks, ki])


def test_index_and_mask_selections_give_the_same_result():
    mask = torch.tensor([[True, False, False, True, False], [False, False, True, False, False]])
    new_full = torch.randn(S, N, C, 3, 3, generator=torch.Generator().manual_seed(3))
    a = _layer()
    reset_units(a[0], new_full, mask, a[1])
    # the same units as indices [S, k=2] with one invalid entry in run 1 (pointing at unit 0)
    idx = torch.tensor([[0, 3], [2, 0]])
    valid = torch.tensor([[True, True], [True, False]])
    b = _layer()
    new_k = new_full[torch.arange(S).unsqueeze(1), idx]  # [S, k, C, 3, 3]
    reset_units(b[0], new_k, UnitIndex(idx, valid), b[1])
    for x, y in zip(_snapshot(*a), _snapshot(*b), strict=True):
        assert torch.equal(x, y)


def test_without_optimizer_the_optimizer_state_is_kept():
    layer, opt, params = _layer()
    states = [st.clone() for p in params for st in opt.state_views(p)]
    reset_units(layer, torch.zeros(S, N, C, 3, 3), torch.ones(S, N, dtype=torch.bool), None)
    assert torch.all(layer.out_weight == 0)
    for st, old in zip([st for p in params for st in opt.state_views(p)], states, strict=True):
        assert torch.equal(st, old)


def test_write_units_on_integer_state():
    age = torch.arange(10).view(2, 5)
    write_units(age, 1, UnitIndex(torch.tensor([[4], [1]]), torch.tensor([[True], [False]])), 0)
    assert age.tolist() == [[0, 1, 2, 3, 0], [5, 6, 7, 8, 9]]
