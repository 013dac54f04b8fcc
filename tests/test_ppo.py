"""PPO agent and learner (docs/protocols/ppo.md): initialisation, batch independence, hand-written gradients,
CBP invariants on the policy/value nets, divergence handling."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("gymnasium.envs.mujoco", reason="needs gymnasium[mujoco] (the rl extra)")

from lop.config import CBPConfig, MethodConfig
from lop.envs import BatchedEnvs
from lop.rl import gaussian_log_prob, ppo_clip_loss, value_loss
from lop.rl.agent import GaussianAgent
from lop.rl.ppo import PPOLearner, PPOSettings, collect_rollout, ppo_loss_grads
from lop.rng import RunStreams

ADAM = MethodConfig(optimizer="adam", lr=1e-4, betas=(0.9, 0.999))
SMALL = PPOSettings(rollout=128, epochs=2, minibatch=32)


def _setup(seeds, method=ADAM, env="hopper", hidden=(32, 32), settings=SMALL):
    envs = BatchedEnvs(env, seeds)
    envs.reset()
    streams = RunStreams(seeds)
    agent = GaussianAgent(envs.obs_dim, envs.act_dim, hidden, streams)
    learner = PPOLearner(agent, [method] * len(seeds), streams, settings)
    return envs, streams, agent, learner


def test_agent_initialisation_follows_the_protocol() -> None:
    streams = RunStreams([0, 1])
    agent = GaussianAgent(27, 8, (256, 256), streams)
    for net, out in ((agent.policy, 8), (agent.value, 1)):
        assert net.sizes == [27, 256, 256, out] and net.activation == "relu"
        for w, b in zip(net.weights, net.biases):
            bound = math.sqrt(3.0 / w.shape[2])  # LeCun uniform
            assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
            assert torch.count_nonzero(b) == 0
    assert torch.equal(agent.log_std, torch.zeros(2, 8))
    # policy and value nets never share a draw; runs differ
    assert not torch.equal(agent.policy.weights[0], agent.value.weights[0])
    assert not torch.equal(agent.policy.weights[1][0], agent.policy.weights[1][1])
    # every parameter is a view of the flat buffer the optimiser updates
    n = sum(p[0].numel() for p in agent.parameters())
    assert agent.flat.shape == (2, n)
    agent.flat.add_(1.0)
    assert torch.equal(agent.log_std, torch.ones(2, 8))
    assert torch.equal(agent.flatten(agent.parameters()), agent.flat)


def test_batch_member_equals_the_same_seed_alone() -> None:
    """Seed k alone vs in a batch: bitwise the same initial parameters and first rollout; the first
    update agrees to float rounding (BLAS kernels for a batch of one differ in the last bits)."""
    envs_a, streams_a, agent_a, learner_a = _setup([7])
    envs_b, streams_b, agent_b, learner_b = _setup([3, 7, 11])
    assert torch.equal(agent_a.flat[0], agent_b.flat[1])
    ro_a = collect_rollout(agent_a, envs_a, streams_a, 0, 128)
    ro_b = collect_rollout(agent_b, envs_b, streams_b, 0, 128)
    for x, y in zip(ro_a, ro_b):
        assert torch.equal(x[0], y[1])
    assert not torch.equal(ro_b.obs[0], ro_b.obs[1])
    learner_a.update(ro_a, 0)
    learner_b.update(ro_b, 0)
    torch.testing.assert_close(agent_a.flat[0], agent_b.flat[1], rtol=1e-5, atol=1e-6)
    assert not torch.equal(agent_b.flat[0], agent_b.flat[1])


def test_rollout_buffers_are_consistent() -> None:
    envs, streams, agent, _ = _setup([0, 1])
    ro = collect_rollout(agent, envs, streams, 0, 128)
    s, t, d = ro.obs.shape
    assert (s, t, d) == (2, 128, envs.obs_dim) and ro.actions.shape == (2, 128, envs.act_dim)
    # where no episode ended, the step's result is the next observation acted on
    cont = ro.ends[:, :-1] == 0
    assert torch.equal(ro.final_obs[:, :-1][cont], ro.obs[:, 1:][cont])
    assert bool((ro.terminated <= ro.ends).all())
    # the actions are μ(s) + σ ε with the stream's noise (σ = 1 at initialisation)
    mean, _ = agent.policy.forward(ro.obs)
    noise = streams.normal("ppo/action", 0, (128, envs.act_dim))
    torch.testing.assert_close(ro.actions, mean + noise, rtol=0, atol=1e-5)
    # a fresh call continues from where the last one stopped
    nxt = envs.obs
    ro2 = collect_rollout(agent, envs, streams, 1, 8)
    assert torch.equal(ro2.obs[:, 0], nxt)
    assert envs.total_steps.tolist() == [136, 136]


@pytest.mark.parametrize("clip", [0.2, 0.05])
def test_hand_written_gradients_equal_autograd(clip: float) -> None:
    torch.manual_seed(0)  # test data only; the library never uses the global RNG
    s, b, a = 3, 16, 4
    streams = RunStreams([0, 1, 2])
    agent = GaussianAgent(5, a, (8, 8), streams, log_std_init=-0.3)
    obs = torch.randn(s, b, 5)
    act = torch.randn(s, b, a)
    adv = torch.randn(s, b)
    ret = torch.randn(s, b)
    with torch.no_grad():
        logp_now = gaussian_log_prob(agent.policy.forward(obs)[0], agent.log_std, act)
    logp_old = logp_now + 0.3 * torch.randn(s, b)  # ratios on both sides of the clip range
    # hand-written
    mean, pcache = agent.policy.forward(obs)
    v, vcache = agent.values(obs)
    lp, lv, g_mean, g_ls, g_v = ppo_loss_grads(mean, agent.log_std, act, logp_old, adv, v, ret, clip, 0.5)
    manual = [*agent.policy.backward(pcache, g_mean), g_ls, *agent.value.backward(vcache, g_v)]
    # autograd on leaf copies of the same parameters
    leaves = [p.detach().clone().requires_grad_() for p in agent.parameters()]
    n = 2 * len(agent.policy.weights)
    agent.policy.weights[:], agent.policy.biases[:] = leaves[0:n:2], leaves[1:n:2]
    agent.value.weights[:], agent.value.biases[:] = leaves[n + 1 :: 2], leaves[n + 2 :: 2]
    mean2, _ = agent.policy.forward(obs)
    v2, _ = agent.value.forward(obs)
    logp = gaussian_log_prob(mean2, leaves[n], act)
    lp2 = ppo_clip_loss(logp, logp_old, adv, clip)
    lv2 = value_loss(v2[..., 0], ret)
    (lp2 + 0.5 * lv2).sum().backward()
    ratio = torch.exp(logp.detach() - logp_old)
    assert bool(((ratio > 1 + clip) | (ratio < 1 - clip)).any())  # the clipped branch is exercised
    torch.testing.assert_close(lp, lp2.detach())
    torch.testing.assert_close(lv, lv2.detach())
    for g_hand, leaf in zip(manual, leaves):
        torch.testing.assert_close(g_hand, leaf.grad, rtol=1e-4, atol=1e-6)


def test_update_changes_parameters_and_reports_finite_losses() -> None:
    envs, streams, agent, learner = _setup([0, 1])
    before = agent.flat.clone()
    ro = collect_rollout(agent, envs, streams, 0, 128)
    res = learner.update(ro, 0)
    assert res.policy_loss.shape == (2,) and bool(torch.isfinite(res.value_loss).all())
    assert not bool(res.nonfinite.any())
    assert not torch.equal(before, agent.flat)
    # without CBP/ReDo: fused Adam over the views of the flat buffer, one step count per run;
    # 2 epochs x 4 minibatches = 8 Adam steps per update
    opt = learner.optimizer
    assert len(opt.params) == len(agent.parameters()) and all(p._base is agent.flat for p in opt.params)
    assert opt.steps.tolist() == [8.0, 8.0]
    assert learner.steps_per_update == 8
    assert [h.shape for h in res.policy_hidden] == [(2, 128, 32), (2, 128, 32)]


def test_cbp_on_policy_and_value_nets_keeps_its_invariants() -> None:
    method = MethodConfig(
        optimizer="adam", lr=1e-3, weight_decay=1e-4, cbp=CBPConfig(replacement_rate=0.05, maturity=3)
    )
    envs, streams, agent, learner = _setup([0, 1], method)
    cbp = learner.cbp
    assert cbp is not None and [u.name for u in cbp.layers] == [
        "policy/layer1",
        "policy/layer2",
        "value/layer1",
        "value/layer2",
    ]
    ro = collect_rollout(agent, envs, streams, 0, 128)
    obs, act = ro.obs[:, :32], ro.actions[:, :32]
    zeros = torch.zeros(2, 32)
    for step in range(12):
        adv = streams.normal("test/adv", step, (32,))
        learner._minibatch_step(step, obs, act, zeros, adv, zeros)
        for i, layer in enumerate(cbp.layers):
            fresh = cbp.age[i] == 0  # replaced in this very step
            if step < 3:  # ages 1..3 are not mature (age > maturity is required)
                assert not bool(fresh.any())
            # outgoing weights of a fresh unit are 0, except into next-layer units that were
            # themselves replaced in this step (their incoming rows are redrawn afterwards)
            out = layer.out_weight  # [S, m, n]
            nxt = i + 1 if i % 2 == 0 else None
            keep = ~(cbp.age[nxt] == 0) if nxt is not None else torch.ones(out.shape[:2], dtype=torch.bool)
            mask = keep.unsqueeze(2) & fresh.unsqueeze(1)  # [S, m, n]
            assert bool((out[mask] == 0).all())
            st = learner.optimizer.state_views(layer.in_weight)
            assert all(bool((x[fresh] == 0).all()) for x in st)
            st_out = learner.optimizer.state_views(layer.out_weight)
            assert all(bool((x[mask] == 0).all()) for x in st_out)
            assert bool((layer.in_bias[fresh] == 0).all())
            bound = layer.init[1]
            assert bool((layer.in_weight[fresh].abs() <= bound).all())
    assert sum(int(n.sum()) for n in cbp.n_replaced) > 0


def test_no_cbp_replacement_before_maturity() -> None:
    method = MethodConfig(optimizer="adam", lr=1e-4, cbp=CBPConfig(replacement_rate=0.5, maturity=1000))
    envs, streams, agent, learner = _setup([0], method)
    for u in range(2):
        learner.update(collect_rollout(agent, envs, streams, u, 128), u)
    assert learner.cbp is not None
    assert all(int(n.sum()) == 0 for n in learner.cbp.n_replaced)
    assert all(bool((a == 16).all()) for a in learner.cbp.age)  # 2 updates x 8 minibatch steps


def test_instantaneous_cbp_utility_is_the_last_steps_utility() -> None:
    method = MethodConfig(optimizer="adam", lr=1e-4, cbp=CBPConfig(replacement_rate=0.0, decay=0.0))
    envs, streams, agent, learner = _setup([0], method)
    ro = collect_rollout(agent, envs, streams, 0, 128)
    obs, act, zeros = ro.obs[:, :32], ro.actions[:, :32], torch.zeros(1, 32)
    for step in range(3):
        h = agent.policy.forward(obs)[1].post[0]  # the step's activations (before its Adam update)
        learner._minibatch_step(step, obs, act, zeros, torch.full((1, 32), float(step + 1)), zeros)
        expected = h.abs().mean(1) * agent.policy.weights[1].abs().sum(1)  # outgoing weights after it
        assert learner.cbp is not None
        torch.testing.assert_close(learner.cbp.util[0], expected, rtol=1e-6, atol=0.0)


def test_nonfinite_loss_is_flagged_and_actions_stay_finite() -> None:
    envs, streams, agent, learner = _setup([0, 1])
    with torch.no_grad():
        agent.flat[1] = float("nan")  # run 1 diverged
    ro = collect_rollout(agent, envs, streams, 0, 64)
    assert bool(torch.isfinite(ro.actions).all()) and bool((ro.actions[1] == 0).all())
    res = learner.update(ro, 0)
    assert res.nonfinite.tolist() == [False, True]
    assert bool(torch.isfinite(agent.flat[0]).all())


def test_minibatch_must_divide_the_rollout() -> None:
    from lop.errors import ConfigError

    with pytest.raises(ConfigError, match="minibatch"):
        PPOSettings(rollout=100, minibatch=32)


def test_numpy_acting_matches_torch_acting_and_ignores_its_batch() -> None:
    """`act_numpy` (the CPU rollout's path) = `act` up to float rounding, tracks parameter updates in
    place, and a run's action is bit-identical alone or in a batch."""
    streams = RunStreams([3, 4, 5])
    agent = GaussianAgent(11, 3, (16, 16), streams, log_std_init=-0.5)
    gen = torch.Generator().manual_seed(0)
    obs, noise = torch.randn(3, 11, generator=gen), torch.randn(3, 3, generator=gen)
    std = agent.log_std.exp()
    for _ in range(2):  # second round: after an in-place parameter change
        a_np = agent.act_numpy(obs.numpy(), noise.numpy(), std.numpy())
        torch.testing.assert_close(torch.from_numpy(a_np), agent.act(obs, noise, std), rtol=1e-5, atol=1e-6)
        agent.flat.mul_(1.5)
    alone = GaussianAgent(11, 3, (16, 16), RunStreams([4]), log_std_init=-0.5)
    alone.flat.mul_(1.5).mul_(1.5)
    a1 = alone.act_numpy(obs[1:2].numpy(), noise[1:2].numpy(), std[1:2].numpy())
    a3 = agent.act_numpy(obs.numpy(), noise.numpy(), std.numpy())
    assert (a1[0] == a3[1]).all()
    agent.flat[0].fill_(float("nan"))
    assert (agent.act_numpy(obs.numpy(), noise.numpy(), std.numpy())[0] == 0).all()  # non-finite -> 0
