"""Seed-batched convolution helpers (lop/nets/batched_conv.py): the strided 1×1 workaround."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from lop.nets.batched_conv import grouped_conv2d, to_grouped


@pytest.mark.parametrize(("runs", "c_in", "c_out"), [(1, 4, 8), (2, 4, 8), (1, 3, 5), (3, 7, 2), (1, 8, 16)])
def test_strided_pointwise_conv_matches_the_float64_reference(runs: int, c_in: int, c_out: int) -> None:
    """Forward and all three gradients of a stride-2 1×1 convolution agree with a float64 reference
    (computed without oneDNN), whether or not the small-channel form is taken."""
    g = torch.Generator().manual_seed(runs * 100 + c_in)
    x = torch.randn(runs, 6, c_in, 9, 9, generator=g)
    w = torch.randn(runs, c_out, c_in, 1, 1, generator=g)
    b = torch.randn(runs, c_out, generator=g)
    up = torch.randn(6, runs * c_out, 5, 5, generator=g)

    def grads(dtype: torch.dtype, fn) -> list[torch.Tensor]:
        xs, ws, bs = (t.to(dtype).requires_grad_() for t in (x, w, b))
        y = fn(xs, ws, bs)
        return [y.detach(), *torch.autograd.grad(y, (xs, ws, bs), up.to(dtype).contiguous())]

    got = grads(torch.float32, lambda xs, ws, bs: grouped_conv2d(to_grouped(xs), ws, bs, stride=2))
    ref = grads(
        torch.float64,
        lambda xs, ws, bs: F.conv2d(
            xs.transpose(0, 1).flatten(1, 2), ws.flatten(0, 1), bs.flatten(), stride=2, groups=runs
        ),
    )
    for a, r in zip(got, ref, strict=True):
        torch.testing.assert_close(a, r.to(torch.float32).reshape(a.shape), rtol=1e-5, atol=1e-5)


def test_small_resnet_trains_single_threaded_without_heap_corruption() -> None:
    """A ResNet-18 at width 4 (budgeted_cl smoke) alone on one thread: oneDNN's strided 1×1
    weight-gradient kernel corrupted the heap here on AVX2 CPUs (exit 134/139) before the workaround."""
    code = textwrap.dedent(
        """
        import torch
        from lop.nets.resnet import ResNet18
        from lop.rng import RunStreams
        net = ResNet18(RunStreams([0], torch.device("cpu")), n_classes=4, width=4)
        net.train()
        params = net.parameters()
        for i in range(100):
            x = torch.randn(1, 8, 3, 8, 8)
            torch.autograd.grad(net(x).square().sum(), params)
        print("ok")
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"
