"""Experiment `scr`: slowly-changing regression (Extended Data Fig. 2), online, batch size 1."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lop.algos.method_layer import supported_keys
from lop.algos.online import OnlineMLPLearner
from lop.experiments.base import ExperimentSpec, MetricBlock, RunSpec, Trainer
from lop.experiments.schemas import SCRProblem
from lop.nets.mlp import BatchedMLP
from lop.problems.scr import LTUTarget, SlowlyChangingInputs
from lop.rng import RunStreams


class SCRTrainer(Trainer):
    """Unit = one bin of `bin_size` examples; metric `squared_error` = mean over the bin."""

    unit_name = "bin"
    state_attrs = ("learner", "inputs.slow")

    def __init__(self, problem: SCRProblem, runs: Sequence[RunSpec], device: torch.device) -> None:
        self.p = problem
        self.streams = RunStreams([r.seed for r in runs], device)
        m = problem.n_slow + problem.n_fast
        arch = runs[0].config.arch
        sizes = [m, 1] if arch == "linear" else [m, problem.hidden, 1]
        activation = "linear" if arch == "linear" else problem.activation
        torch_default_selu = activation == "selu" and problem.selu_hidden_init == "torch_default"
        self.net = BatchedMLP(
            sizes,
            activation,
            self.streams,
            init=problem.init,
            output_gain=problem.output_gain,
            hidden_init="torch_default" if torch_default_selu else None,
        )
        self.learner = OnlineMLPLearner(self.net, [r.config for r in runs], self.streams, loss="mse")
        self.target = LTUTarget(self.streams, m, problem.target_hidden, problem.beta)
        self.inputs = SlowlyChangingInputs(
            self.streams, problem.n_slow, problem.n_fast, problem.flip_every, problem.variant
        )
        self.n_units = problem.n_examples // problem.bin_size
        self.init_divergence(len(runs), device)

    def train_unit(self, unit: int) -> list[MetricBlock]:
        p = self.p
        s = self.streams.n
        t_bin = unit * p.bin_size
        sq = torch.empty(p.bin_size, s, device=self.streams.device)
        for c in range(p.bin_size // p.chunk):
            t0 = t_bin + c * p.chunk
            x, y = self.inputs.chunk(t0, p.chunk, t0 // p.chunk, self.target)
            # step-major copies: each step then reads one contiguous [S, ...] block
            # (unbind: the per-step views in one call; the losses [S, 1] are gathered once per chunk)
            xs = x.transpose(0, 1).contiguous().unsqueeze(2).unbind(0)  # C × [S, 1, m]
            ys = y.transpose(0, 1).contiguous().unsqueeze(2).unbind(0)  # C × [S, 1]
            step = self.learner.step
            losses = [step(t0 + j, xj, yj)[0] for j, (xj, yj) in enumerate(zip(xs, ys))]
            sq[c * p.chunk : (c + 1) * p.chunk] = torch.cat(losses, 1).T
        sq = sq.transpose(0, 1)
        self._track_divergence(sq, t_bin)
        # the bin mean in float64, rounded once to float32: the float32 mean of the strided [bin, S]
        # layout summed a run's errors in an order that depended on S (vectorised across runs), i.e. on
        # its batch, and any float32 order depends on the CPU's vector width; this one is the correctly
        # rounded mean but for ties within 1e-16, whatever the batch and the CPU
        return [self.metric("squared_error", t_bin + p.bin_size, sq.double().mean(1).float())]

    def _track_divergence(self, sq: torch.Tensor, t0: int) -> None:
        bad = ~torch.isfinite(sq)
        self.mark_diverged(bad.any(1), bad.to(torch.int8).argmax(1) + t0)


EXPERIMENT = ExperimentSpec(
    name="scr",
    problem_cls=SCRProblem,
    build=SCRTrainer,
    description="Slowly-changing regression (Extended Data Fig. 2)",
    supports=supported_keys(OnlineMLPLearner.HOOK_POINTS) | {"arch"},
)
