"""Per-layer initialisation of every network (issue 19; docs/protocols/initialisation.md).

For each network at the paper's sizes, each layer's initial weights are checked against the documented
distribution: a uniform U(−b, b) layer stays inside ±b, reaches close to it and has standard deviation
b/√3; a normal N(0, σ²) layer has sample standard deviation σ; biases are 0 where documented.
"""

from __future__ import annotations

import math

import pytest
import torch

from lop.nets.convnet import ConvNet
from lop.nets.mlp import BatchedMLP
from lop.nets.resnet import ResNet18
from lop.rl.agent import GaussianAgent
from lop.rng import RunStreams

SQ2 = math.sqrt(2.0)


def assert_uniform(w: torch.Tensor, bound: float) -> None:
    """w ~ U(−bound, bound): inside the bound, close to it, std bound/√3 (tolerances from the sample size)."""
    x = w.detach().double().flatten()
    n = x.numel()
    assert x.abs().max() <= bound * (1 + 1e-6)
    assert x.abs().max() >= bound * (1 - 20.0 / n)  # max of n uniforms: within ~1/n of the bound
    std = bound / math.sqrt(3.0)
    assert abs(x.std().item() / std - 1.0) < 5.0 / math.sqrt(n) + 1e-3
    assert abs(x.mean().item()) < 5.0 * std / math.sqrt(n)


def assert_normal(w: torch.Tensor, std: float) -> None:
    """w ~ N(0, std²): sample std within 5 standard errors (√(1/(2n)) relative) of std."""
    x = w.detach().double().flatten()
    n = x.numel()
    assert abs(x.std().item() / std - 1.0) < 5.0 / math.sqrt(2 * n)
    assert abs(x.mean().item()) < 5.0 * std / math.sqrt(n)


def assert_zero(b: torch.Tensor) -> None:
    assert torch.count_nonzero(b) == 0


# ---- SCR nets: 20 -> 5 -> 1, Kaiming-uniform, zero biases ------------------------------------------------
SCR_GAINS = {
    "relu": SQ2,
    "leaky_relu": math.sqrt(2.0 / (1 + 0.01**2)),
    "elu": SQ2,
    "swish": SQ2,
    "tanh": 5.0 / 3.0,
    "sigmoid": 1.0,
    "selu": 0.75,
}


@pytest.mark.parametrize("activation", sorted(SCR_GAINS))
@pytest.mark.parametrize("output_gain", ["activation", "linear"])
def test_scr_net_layers(activation: str, output_gain: str) -> None:
    # 400 runs: 40,000 hidden and 2,000 output weights in all, so the sample statistics are tight
    net = BatchedMLP([20, 5, 1], activation, RunStreams(range(400)), output_gain=output_gain)
    g = SCR_GAINS[activation]
    hidden, out = g * math.sqrt(3 / 20), (g if output_gain == "activation" else 1.0) * math.sqrt(3 / 5)
    assert net.bounds == pytest.approx([hidden, out], rel=1e-12)
    assert_uniform(net.weights[0], hidden)
    assert_uniform(net.weights[1], out)
    for b in net.biases:
        assert_zero(b)


def test_scr_relu_bounds_as_documented() -> None:
    net = BatchedMLP([20, 5, 1], "relu", RunStreams([0]))
    ref = BatchedMLP([20, 5, 1], "relu", RunStreams([0]), output_gain="linear")
    assert [round(b, 4) for b in net.bounds] == [0.5477, 1.0954]
    assert [round(b, 4) for b in ref.bounds] == [0.5477, 0.7746]


def test_scr_reference_init_per_activation() -> None:
    """The reference's SCR learner: output gain 1; hidden Kaiming with the activation's gain, except SELU
    units, left at PyTorch's default U(±1/√20) (``selu_hidden_init: torch_default``)."""
    from lop.config import MethodConfig
    from lop.experiments.base import RunSpec
    from lop.experiments.scr import SCRProblem, SCRTrainer

    runs = [RunSpec("m", "d", {}, MethodConfig(), s) for s in range(400)]
    for activation in SCR_GAINS:
        problem = SCRProblem(activation=activation, output_gain="linear", selu_hidden_init="torch_default")
        net = SCRTrainer(problem, runs, torch.device("cpu")).net
        hidden = 1 / math.sqrt(20) if activation == "selu" else SCR_GAINS[activation] * math.sqrt(3 / 20)
        assert net.bounds == pytest.approx([hidden, math.sqrt(3 / 5)], rel=1e-12)
        assert_uniform(net.weights[0], hidden)
        assert_uniform(net.weights[1], math.sqrt(3 / 5))
    default = SCRTrainer(SCRProblem(activation="selu"), runs[:1], torch.device("cpu")).net
    assert default.bounds == pytest.approx([0.75 * math.sqrt(3 / 20), 0.75 * math.sqrt(3 / 5)])


# ---- permuted-MNIST MLP: 784 -> 2000 -> 2000 -> 2000 -> 10 ReLU ------------------------------------------
@pytest.mark.parametrize("output_gain", ["activation", "linear"])
def test_permuted_mnist_mlp_layers(output_gain: str) -> None:
    net = BatchedMLP([784, 2000, 2000, 2000, 10], "relu", RunStreams([0]), output_gain=output_gain)
    expected = [SQ2 * math.sqrt(3 / 784), SQ2 * math.sqrt(3 / 2000), SQ2 * math.sqrt(3 / 2000)]
    expected.append((SQ2 if output_gain == "activation" else 1.0) * math.sqrt(3 / 2000))
    assert net.bounds == pytest.approx(expected, rel=1e-12)
    # the numbers: output bound 0.0548 with the ReLU gain, 0.0387 with gain 1
    assert round(net.bounds[-1], 4) == (0.0548 if output_gain == "activation" else 0.0387)
    for w, b, bound in zip(net.weights, net.biases, expected, strict=True):
        assert_uniform(w, bound)
        assert_zero(b)


def test_output_gain_is_a_problem_option() -> None:
    from lop.config import from_dict, to_dict
    from lop.experiments.permuted_mnist import PermutedMNISTProblem
    from lop.experiments.scr import SCRProblem

    assert "selu_hidden_init" not in to_dict(SCRProblem())
    for cls in (SCRProblem, PermutedMNISTProblem):
        assert "output_gain" not in to_dict(cls())  # the default leaves resolved configs as they were
        p = from_dict(cls, {"output_gain": "linear"})
        assert to_dict(p)["output_gain"] == "linear"


# ---- Continual ImageNet ConvNet: PyTorch default U(±1/√fan_in) for weights and biases --------------------
def test_convnet_layers() -> None:
    net = ConvNet(RunStreams(range(16)))
    fan_in = {"conv1": 75, "conv2": 288, "conv3": 576, "fc1": 512, "fc2": 128, "fc3": 128}
    for name, n in fan_in.items():
        bound = 1 / math.sqrt(n)
        assert_uniform(net.params[f"{name}.weight"], bound)
        assert_uniform(net.params[f"{name}.bias"], bound)


# ---- ResNet-18: reference (Kaiming-normal fan_in) and torchvision (Kaiming-normal fan_out) ----------------
@pytest.mark.parametrize("scheme", ["reference", "torchvision"])
def test_resnet18_layers(scheme: str) -> None:
    net = ResNet18(RunStreams([0]), init=scheme)
    for spec in net.convs:
        w = net.params[f"{spec.name}.weight"]
        fan = spec.fan_in if scheme == "reference" else spec.fan_out
        assert_normal(w, math.sqrt(2.0 / fan))
        if scheme == "reference":
            assert_zero(net.params[f"{spec.name}.bias"])
        else:
            assert net.params[f"{spec.name}.bias"].abs().max() <= 1 / math.sqrt(spec.fan_in)
        assert torch.all(net.params[f"{spec.bn}.weight"] == 1)
        assert_zero(net.params[f"{spec.bn}.bias"])
    fc_w, fc_b = net.params["fc.weight"], net.params["fc.bias"]
    if scheme == "reference":
        assert_normal(fc_w, math.sqrt(1.0 / 512))
        assert_zero(fc_b)
    else:
        assert_uniform(fc_w, 1 / math.sqrt(512))
    assert net.convs[0].fan_in == 27 and round(math.sqrt(2 / 27), 4) == 0.2722


# ---- PPO policy and value: LeCun uniform U(±√(3/fan_in)), zero biases, log-std 0 ---------------------------
def test_ppo_policy_and_value_layers() -> None:
    agent = GaussianAgent(105, 8, (256, 256), RunStreams(range(8)))
    for net, out in ((agent.policy, 8), (agent.value, 1)):
        assert net.sizes == [105, 256, 256, out]
        for w, b, fan_in in zip(net.weights, net.biases, (105, 256, 256), strict=True):
            assert_uniform(w, math.sqrt(3 / fan_in))
            assert_zero(b)
    assert_zero(agent.log_std)
    assert [round(b, 4) for b in agent.policy.bounds] == [0.169, 0.1083, 0.1083]
