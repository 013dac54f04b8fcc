"""Experiments `ppo_slippery_ant` (Fig. 3), `ppo_ant` (Fig. 4), `ppo_mujoco` (Extended Data Fig. 5).

PPO (docs/protocols/ppo.md) on MuJoCo environments, S runs per process. A unit is one PPO update
(``rollout`` env steps per run, then ``epochs`` × ``rollout/minibatch`` Adam steps). Metrics, all at
step = the env steps of each run at the update's end:

* every update: ``episode_return`` (mean undiscounted return of the episodes that ended during the
  update, NaN if none), ``episodes`` (their number), ``loss/policy``, ``loss/value`` (means over the
  update's minibatches), and ``friction`` (slippery Ant: the drawn friction at the update's end);
* every ``internals_every`` updates: ``dormant_units/policy`` and ``dormant_units/value`` (fraction of
  hidden units active, h > 0, on ≤ 1% of the last ``probe_steps`` steps of the rollout, as the nets
  that acted on them), ``abs_approximate_rank/policy`` (the reference's 99% "stable rank" of the
  policy's last hidden layer on those steps), ``weight_magnitude/policy`` / ``/value`` (mean |w| of the
  weights and biases after the update), ``weight_change/policy`` / ``/value`` (mean |Δw| over the
  update), and ``cbp_replaced`` (CBP: units replaced so far, both nets) where used;
* at every ReDo reset point (every ``redo.every`` updates): ``redo_reset`` (units reset then).

A run whose loss becomes non-finite is marked diverged at that update's end step; its actions are
replaced by 0 from then on (so the other runs of the batch carry on) and its later episode metrics
are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lop import metrics
from lop.algos.method_layer import supported_keys
from lop.envs import BatchedEnvs
from lop.experiments.base import ExperimentSpec, MetricBlock, RunSpec, Trainer
from lop.experiments.schemas import AntProblem, MujocoProblem, PPOProblem, SlipperyAntProblem
from lop.rl.agent import GaussianAgent
from lop.rl.ppo import PPOLearner, UpdateResult, collect_rollout
from lop.rng import RunStreams


class PPOTrainer(Trainer):
    """Unit = one PPO update of all S runs (simulators stepped together, one batched learner)."""

    unit_name = "update"
    state_attrs = ("learner", "envs")

    def __init__(self, problem: PPOProblem, runs: Sequence[RunSpec], device: torch.device) -> None:
        self.p = problem
        seeds = [r.seed for r in runs]
        self.streams = RunStreams(seeds, device)
        self.envs = BatchedEnvs(problem.env_config(), seeds)
        self.envs.reset()
        self.agent = GaussianAgent(
            self.envs.obs_dim, self.envs.act_dim, problem.hidden, self.streams, problem.log_std_init
        )
        self.learner = PPOLearner(self.agent, [r.config for r in runs], self.streams, problem.ppo_settings())
        self.n_units = problem.n_updates
        self.init_divergence(len(runs), device)

    # ------------------------------------------------------------------------------------------
    def train_unit(self, unit: int) -> list[MetricBlock]:
        p = self.p
        agent, learner = self.agent, self.learner
        internals = (unit + 1) % p.internals_every == 0
        before: list[torch.Tensor] = []
        if internals:
            before = [t.detach().clone() for t in (*agent.policy.parameters(), *agent.value.parameters())]
        ro = collect_rollout(agent, self.envs, self.streams, unit, p.rollout)
        res = learner.update(ro, unit)
        end = (unit + 1) * p.rollout
        acted_diverged = (self.diverged >= 0).cpu()  # this rollout came from a non-finite policy
        self.mark_diverged(res.nonfinite, end)
        redo_masks = learner.redo_step(unit + 1, ro.obs[:, -p.probe_steps :])
        steps = torch.tensor([end], dtype=torch.int64)
        blocks = self._episode_blocks(steps, acted_diverged)
        blocks += [
            MetricBlock("loss/policy", steps, res.policy_loss.view(-1, 1)),
            MetricBlock("loss/value", steps, res.value_loss.view(-1, 1)),
        ]
        if self.envs.config.slippery:
            blocks.append(MetricBlock("friction", steps, self.envs.frictions.view(-1, 1)))
        if internals:
            blocks += self._internal_blocks(steps, res, before)
        if redo_masks is not None:
            total = sum(m.sum(1) for m in redo_masks)
            blocks.append(MetricBlock("redo_reset", steps, total.view(-1, 1).to(torch.float64)))
        return blocks

    def _episode_blocks(self, steps: torch.Tensor, diverged: torch.Tensor) -> list[MetricBlock]:
        """Mean return and count of the episodes that ended during the update, per run (NaN for runs
        that acted with an already diverged policy)."""
        s = self.envs.n
        episodes = self.envs.pop_episodes()
        total = torch.zeros(s, dtype=torch.float64)
        count = torch.zeros(s, dtype=torch.float64)
        if episodes:
            runs = torch.tensor([e.run for e in episodes], dtype=torch.int64)
            total.index_add_(0, runs, torch.tensor([e.ret for e in episodes], dtype=torch.float64))
            count.index_add_(0, runs, torch.ones(len(episodes), dtype=torch.float64))
        mean = torch.where(count > 0, total / count.clamp(min=1.0), torch.full_like(total, math.nan))
        mean = torch.where(diverged, math.nan, mean)
        count = torch.where(diverged, math.nan, count)
        return [
            MetricBlock("episode_return", steps, mean.view(-1, 1)),
            MetricBlock("episodes", steps, count.view(-1, 1)),
        ]

    @torch.no_grad()
    def _internal_blocks(
        self, steps: torch.Tensor, res: UpdateResult, before: list[torch.Tensor]
    ) -> list[MetricBlock]:
        p, agent = self.p, self.agent
        k = p.probe_steps
        pol_h = [h[:, -k:] for h in res.policy_hidden]
        val_h = [h[:, -k:] for h in res.value_hidden]
        n_pol = 2 * len(agent.policy.weights)
        pol_after = [t.detach() for t in agent.policy.parameters()]
        val_after = [t.detach() for t in agent.value.parameters()]
        values = {
            "dormant_units/policy": metrics.dormant_units(
                torch.cat(pol_h, 2), p.dormant_threshold, strict=False
            ),
            "dormant_units/value": metrics.dormant_units(
                torch.cat(val_h, 2), p.dormant_threshold, strict=False
            ),
            "abs_approximate_rank/policy": metrics.abs_approximate_rank(pol_h[-1], p.rank_threshold),
            "weight_magnitude/policy": metrics.weight_magnitude(pol_after),
            "weight_magnitude/value": metrics.weight_magnitude(val_after),
            "weight_change/policy": metrics.weight_change(before[:n_pol], pol_after),
            "weight_change/value": metrics.weight_change(before[n_pol:], val_after),
        }
        if self.learner.cbp is not None:
            values["cbp_replaced"] = sum(n.to(torch.float64) for n in self.learner.cbp.n_replaced)
        return [
            MetricBlock(name, steps, v.detach().cpu().to(torch.float64).view(-1, 1))
            for name, v in values.items()
        ]

    # ------------------------------------------------------------------------------------------


EXPERIMENTS = [
    ExperimentSpec(
        name="ppo_slippery_ant",
        problem_cls=SlipperyAntProblem,
        build=PPOTrainer,
        supports=supported_keys(PPOLearner.HOOK_POINTS),
        description="PPO on slippery Ant, friction changes every 2M steps (Fig. 3)",
    ),
    ExperimentSpec(
        name="ppo_ant",
        problem_cls=AntProblem,
        build=PPOTrainer,
        supports=supported_keys(PPOLearner.HOOK_POINTS),
        description="PPO on Ant for 50M steps: loss of plasticity and internals (Fig. 4)",
    ),
    ExperimentSpec(
        name="ppo_mujoco",
        problem_cls=MujocoProblem,
        build=PPOTrainer,
        supports=supported_keys(PPOLearner.HOOK_POINTS),
        description="PPO on Hopper / Walker2d (Extended Data Fig. 5a)",
    ),
]
