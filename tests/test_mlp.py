"""Seed-batched MLP: manual backward equals autograd; initialisation is per run."""

import pytest
import torch

from lop.nets.mlp import BatchedMLP
from lop.rng import RunStreams


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid", "leaky_relu", "elu", "swish", "selu"])
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("sizes", [[7, 5, 4, 3], [20, 5, 1], [30, 200, 10]])
def test_manual_backward_matches_autograd(act, batch, sizes):
    net = BatchedMLP(sizes, act, RunStreams([0, 1]), init="torch_default", zero_bias=False)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, batch, sizes[0], generator=gen)
    go = torch.randn(2, batch, sizes[-1], generator=gen)
    out, cache = net.forward(x)
    grads = net.backward(cache, go)
    params = [p.clone().requires_grad_() for p in net.parameters()]
    net.weights, net.biases = params[0::2], params[1::2]
    out2, _ = net.forward(x)
    torch.testing.assert_close(out, out2.detach())
    (out2 * go).sum().backward()
    for g, p in zip(grads, params):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5)


def test_init_bounds_and_batch_independence():
    a = BatchedMLP([20, 5, 1], "relu", RunStreams([4, 9]))
    b = BatchedMLP([20, 5, 1], "relu", RunStreams([9]))
    for wa, wb in zip(a.parameters(), b.parameters()):
        assert torch.equal(wa[1], wb[0])
    bound = (2.0**0.5) * (3.0 / 20) ** 0.5
    assert a.weights[0].abs().max() <= bound and a.weights[0].abs().max() > 0.8 * bound
    assert torch.count_nonzero(a.biases[0]) == 0
    layers = a.unit_layers()
    assert len(layers) == 1 and layers[0].in_weight is a.weights[0] and layers[0].out_weight is a.weights[1]


@pytest.mark.parametrize("batch", [1, 3])
def test_backward_into_reused_buffers_is_bit_identical(batch):
    """reuse_buffers=True writes the weight gradients into the same per-layer tensors every call, with
    the same numbers as fresh tensors."""
    net = BatchedMLP([30, 200, 40, 5], "relu", RunStreams([0, 1]))
    gen = torch.Generator().manual_seed(2)
    storages = None
    for _ in range(3):
        x = torch.randn(2, batch, 30, generator=gen)
        go = torch.randn(2, batch, 5, generator=gen)
        _, cache = net.forward(x)
        fresh = net.backward(cache, go)
        reused = net.backward(cache, go, reuse_buffers=True)
        for a, b in zip(fresh, reused, strict=True):
            assert torch.equal(a, b)
        ptrs = [g.data_ptr() for g in reused[0::2]]  # weight gradients
        assert storages is None or ptrs == storages
        storages = ptrs
        assert all(p not in ptrs for p in (g.data_ptr() for g in fresh[0::2]))
