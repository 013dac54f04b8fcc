"""PPO (Schulman et al. 2017) for a batch of S runs, as docs/protocols/ppo.md specifies it.

One update = `collect_rollout` (``rollout`` env steps per run with the current policy) and
`PPOLearner.update`: GAE(γ, λ) advantages standardised per run, then ``epochs`` passes over the
rollout in minibatches of ``minibatch`` steps (a fresh per-run shuffle per epoch from stream
``"ppo/minibatch"`` at counter ``update·epochs + epoch``), each one Adam step (gradients by the
nets' hand-written backward, `ppo_loss_grads`) on

    L = L_clip(ε) + c_v · mean (V(s) − R)²        (PPO eq. 7 + value loss, no entropy bonus)

over the policy, its log-std and the value net together. No observation/reward normalisation, no
gradient clipping. All S runs share one forward/backward per minibatch (each run's gradient comes from
its own rows only). After every Adam step, continual backprop (if configured) sees the minibatch's
hidden activations of both nets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from lop.algos.cbp import ContinualBackprop
from lop.algos.method_layer import MethodStack
from lop.algos.redo import ReDo
from lop.config import MethodConfig
from lop.envs import BatchedEnvs
from lop.errors import ConfigError
from lop.rl.agent import GaussianAgent
from lop.rl.ppo_math import gae, gaussian_log_prob, ppo_clip_loss, standardize
from lop.rng import RunStreams

ACTION_STREAM = "ppo/action"
MINIBATCH_STREAM = "ppo/minibatch"


@dataclass(frozen=True)
class PPOSettings:
    """PPO hyperparameters shared by the runs of a batch (docs/protocols/ppo.md defaults)."""

    rollout: int = 2048
    epochs: int = 10
    minibatch: int = 128
    gamma: float = 0.99
    lam: float = 0.95
    clip: float = 0.2
    value_coef: float = 1.0
    # GAE at a time-limit truncation: bootstrap from V(final observation) (False, textbook) or treat it
    # as terminal, δ_t = r_t − V(s_t) (True, the reference code's `done` handling)
    truncation_as_terminal: bool = False

    def __post_init__(self) -> None:
        if self.rollout <= 0 or self.epochs <= 0 or self.minibatch <= 0:
            raise ConfigError("ppo", "rollout, epochs and minibatch must be positive")
        if self.rollout % self.minibatch:
            raise ConfigError("minibatch", f"{self.minibatch} does not divide the rollout {self.rollout}")


class Rollout(NamedTuple):
    """``rollout`` steps of S runs, tensors ``[S, T, ...]`` on the learner's device."""

    obs: torch.Tensor  # [S, T, D] observation acted on
    actions: torch.Tensor  # [S, T, A] actions taken (unclipped samples of the policy)
    rewards: torch.Tensor  # [S, T]
    terminated: torch.Tensor  # [S, T] 1.0 where the episode terminated (no bootstrap)
    ends: torch.Tensor  # [S, T] 1.0 where the episode ended (terminated or truncated)
    final_obs: torch.Tensor  # [S, T, D] observation the step produced (before any auto-reset)


@torch.inference_mode()
def collect_rollout(
    agent: GaussianAgent, envs: BatchedEnvs, streams: RunStreams, counter: int, steps: int
) -> Rollout:
    """Run every env ``steps`` steps with a ~ N(μ(s), σ²): ε from stream ``"ppo/action"`` at ``counter``.

    Non-finite actions (a diverged run) are replaced by 0 so the simulator never sees NaN. Buffers
    are filled on the CPU (the simulators' side, through numpy: the envs write straight into them)
    and moved to the agent's device once.
    """
    device = streams.device
    s, d, a = envs.n, envs.obs_dim, envs.act_dim
    noise = streams.normal(ACTION_STREAM, counter, (steps, a)).transpose(0, 1).contiguous()  # [T, S, A]
    obs_buf = np.empty((steps + 1, s, d), dtype=np.float32)  # row t: acted on at t; row T: next rollout's
    fin_buf = np.empty((steps, s, d), dtype=np.float32)
    act_buf = np.empty((steps, s, a), dtype=np.float32)
    rew_buf = np.empty((steps, s), dtype=np.float32)
    term_buf = np.empty((steps, s), dtype=np.float32)
    trunc_buf = np.empty((steps, s), dtype=np.float32)
    std = agent.log_std.exp()
    obs_buf[0] = envs.obs.numpy()
    if device.type == "cpu":  # act in numpy: at batch 1 a torch call costs more than its arithmetic
        noise_np, std_np = noise.numpy(), std.numpy()
        for t in range(steps):
            act_buf[t] = agent.act_numpy(obs_buf[t], noise_np[t], std_np)
            envs.step_into(act_buf[t], fin_buf[t], rew_buf[t], term_buf[t], trunc_buf[t], obs_buf[t + 1])
    else:
        obs_t, act_t = torch.from_numpy(obs_buf), torch.from_numpy(act_buf)
        for t in range(steps):
            action = agent.act(obs_t[t].to(device), noise[t], std)
            act_t[t] = torch.nan_to_num(action, nan=0.0, posinf=0.0, neginf=0.0)  # device -> host
            envs.step_into(act_buf[t], fin_buf[t], rew_buf[t], term_buf[t], trunc_buf[t], obs_buf[t + 1])

    def out(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x.swapaxes(0, 1))).to(device)

    ends = np.maximum(term_buf, trunc_buf)
    return Rollout(out(obs_buf[:steps]), out(act_buf), out(rew_buf), out(term_buf), out(ends), out(fin_buf))


def ppo_loss_grads(
    mean: torch.Tensor,
    log_std: torch.Tensor,
    actions: torch.Tensor,
    logp_old: torch.Tensor,
    adv: torch.Tensor,
    values: torch.Tensor,
    returns: torch.Tensor,
    clip: float,
    value_coef: float,
) -> tuple[torch.Tensor, ...]:
    """Per-run losses and their gradients for one minibatch (hand-derived; equal to autograd's).

    Inputs ``[S, B, A]`` (mean, actions), ``[S, A]`` (log_std), ``[S, B]`` (the rest). With
    r = exp(log π − log π_old), z = (a − μ)/σ and g_t = ∂L_clip/∂log π_t = −A_t r_t [active_t] / B,
    active_t = (A_t ≥ 0 and r_t ≤ 1 + ε) or (A_t < 0 and r_t ≥ 1 − ε) (the unclipped branch of eq. 7):

        ∂L/∂μ = g_t z / σ,   ∂L/∂log σ = Σ_t g_t (z² − 1),   ∂L/∂V = 2 c_v (V − R) / B.

    Returns (L_clip ``[S]``, L_v ``[S]``, ∂L/∂μ ``[S, B, A]``, ∂L/∂log σ ``[S, A]``, ∂L/∂V ``[S, B, 1]``),
    L = L_clip + c_v L_v.
    """
    b = mean.shape[1]
    inv_std = torch.exp(-log_std).unsqueeze(1)  # [S, 1, A]
    z = (actions - mean) * inv_std
    logp = gaussian_log_prob(mean, log_std, actions)
    ratio = torch.exp(logp - logp_old)
    lp = ppo_clip_loss(logp, logp_old, adv, clip)
    active = torch.where(adv >= 0, ratio <= 1.0 + clip, ratio >= 1.0 - clip)
    g = torch.where(active, adv * ratio, torch.zeros_like(ratio)) * (-1.0 / b)  # [S, B]
    g3 = g.unsqueeze(-1)
    g_mean = g3 * z * inv_std
    g_log_std = (g3 * (z.square() - 1.0)).sum(1)
    err = values - returns
    lv = err.square().mean(1)
    g_v = (err * (2.0 * value_coef / b)).unsqueeze(-1)
    return lp, lv, g_mean, g_log_std, g_v


class UpdateResult(NamedTuple):
    """Per-run summaries of one PPO update (``[S]`` tensors) and the rollout's hidden activations."""

    policy_loss: torch.Tensor  # mean clipped-surrogate loss over the update's minibatches
    value_loss: torch.Tensor  # mean value loss over the minibatches
    nonfinite: torch.Tensor  # bool: some minibatch loss was NaN/inf
    policy_hidden: list[torch.Tensor]  # [S, T, units] per hidden layer, policy that collected the rollout
    value_hidden: list[torch.Tensor]  # [S, T, units] per hidden layer, value net before the update


class PPOLearner:
    """Adam over the agent, PPO updates, and the method layer (`lop.algos.method_layer`): gradient edits,
    the optimiser step (L2 inside Adam), after-step hooks on the minibatch's hidden activations (Shrink
    & Perturb, CBP), and boundary hooks after each update on probe observations (ReDo)."""

    HOOK_POINTS = frozenset({"edit_grads", "after_step", "at_boundary"})

    def __init__(
        self,
        agent: GaussianAgent,
        methods: Sequence[MethodConfig],
        streams: RunStreams,
        settings: PPOSettings,
    ) -> None:
        if len(methods) != streams.n:
            raise ValueError(f"need one method config per run ({streams.n}), got {len(methods)}")
        self.agent = agent
        self.streams = streams
        self.settings = settings
        policy_layers, value_layers = agent.unit_layers()

        # only methods that reset optimiser state per element need the flat parameter buffer (whose
        # views they map onto the optimiser state); otherwise Adam takes the fused per-tensor kernel
        def params(resettable: bool) -> list[torch.Tensor]:
            return [agent.flat] if resettable else agent.parameters()

        self.methods = MethodStack(
            methods,
            streams,
            params=params,
            unit_layers=policy_layers + value_layers,
            learner_points=self.HOOK_POINTS,
            fuse_if_possible=True,
        )
        self._flat_grads = self.methods.resettable
        self.optimizer = self.methods.optimizer
        cbp, redo = self.methods.get("cbp"), self.methods.get("redo")
        self.cbp: ContinualBackprop | None = cbp.impl if cbp is not None else None  # type: ignore[attr-defined]
        self.redo: ReDo | None = redo.impl if redo is not None else None  # type: ignore[attr-defined]
        self.steps_per_update = settings.epochs * (settings.rollout // settings.minibatch)

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, ro: Rollout, update: int) -> UpdateResult:
        """One PPO update on rollout `ro` (update number `update` keys the shuffles and CBP draws)."""
        st = self.settings
        agent = self.agent
        s, t_len = ro.rewards.shape
        logp_old, pcache = agent.log_prob(ro.obs, ro.actions)
        v_all, vcache = agent.values(torch.cat([ro.obs, ro.final_obs], 1))
        values, next_values = v_all[:, :t_len], v_all[:, t_len:]
        terminal = ro.ends if st.truncation_as_terminal else ro.terminated
        adv, returns = gae(ro.rewards, values, next_values, terminal, ro.ends, st.gamma, st.lam)
        adv = standardize(adv)
        policy_hidden = pcache.post
        value_hidden = [h[:, :t_len] for h in vcache.post]
        dev = ro.rewards.device
        base = (torch.arange(s, device=dev) * t_len).view(-1, 1)
        flat = [x.reshape(s * t_len, *x.shape[2:]) for x in (ro.obs, ro.actions, logp_old, adv, returns)]
        sum_lp = torch.zeros(s, device=dev)
        sum_lv = torch.zeros(s, device=dev)
        bad = torch.zeros(s, dtype=torch.bool, device=dev)
        mb = st.minibatch
        n_mb = t_len // mb
        step = update * self.steps_per_update
        for epoch in range(st.epochs):
            perm = self.streams.permutation(MINIBATCH_STREAM, update * st.epochs + epoch, t_len)
            idx = (perm + base).reshape(-1)
            obs, act, lpo, ad, ret = (x.index_select(0, idx).view(s, t_len, *x.shape[1:]) for x in flat)
            for j in range(n_mb):
                sl = slice(j * mb, (j + 1) * mb)
                lp, lv = self._minibatch_step(step, obs[:, sl], act[:, sl], lpo[:, sl], ad[:, sl], ret[:, sl])
                sum_lp += lp
                sum_lv += lv
                bad |= ~torch.isfinite(lp + lv)
                step += 1
        n = st.epochs * n_mb
        return UpdateResult(sum_lp / n, sum_lv / n, bad, policy_hidden, value_hidden)

    def _minibatch_step(
        self,
        step: int,
        obs: torch.Tensor,
        act: torch.Tensor,
        logp_old: torch.Tensor,
        adv: torch.Tensor,
        ret: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward/backward of all runs on one minibatch, an Adam step, then CBP; returns the losses."""
        agent = self.agent
        mean, pcache = agent.policy.forward(obs)
        v, vcache = agent.values(obs)
        lp, lv, g_mean, g_log_std, g_v = ppo_loss_grads(
            mean, agent.log_std, act, logp_old, adv, v, ret, self.settings.clip, self.settings.value_coef
        )
        grads = [*agent.policy.backward(pcache, g_mean), g_log_std, *agent.value.backward(vcache, g_v)]
        acts = [*pcache.post, *vcache.post] if self.methods.needs_activations else []
        self.methods.step(step, [agent.flatten(grads)] if self._flat_grads else grads, acts)
        return lp, lv

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def redo_step(self, update: int, obs: torch.Tensor) -> list[torch.Tensor] | None:
        """Boundary hooks after update `update` (ReDo resets of the runs due then) with activations on
        probe obs ``[S, B, D]``; returns ReDo's reset masks, or None when no run reset."""
        if not self.methods.has_boundary:
            return None

        def probe() -> list[torch.Tensor]:
            _, pcache = self.agent.policy.forward(obs)
            _, vcache = self.agent.value.forward(obs)
            return [*pcache.post, *vcache.post]

        return self.methods.at_boundary(update, probe).get("redo")

    def state_dict(self) -> dict[str, object]:
        return {"agent": self.agent.state_dict(), "methods": self.methods.state_dict()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, object]) -> None:
        self.agent.load_state_dict(state["agent"])  # type: ignore[arg-type]
        self.methods.load_state_dict(state["methods"])  # type: ignore[arg-type]
