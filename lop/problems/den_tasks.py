"""DEN on the task-sequence benchmarks (docs/protocols/den.md): the trainer used when a run sets ``den``.

`with_den(trainer_cls)` is the experiment's ``build``: runs whose method sets ``den`` get a subclass of the
experiment's trainer whose learner is `lop.algos.den.DENLearner` instead of the plain learner — DEN
*replaces* the network and the learner (its own preallocated multi-head network), it does not hook into
them. The data, the task order, the accuracy matrix and its summaries are the benchmark's own.

Differences from the plain learner, all from DEN's protocol:

* **multi-head with task identity.** Task t is predicted by head t and the units born at or before t,
  so DEN uses the task label at test time. In the ``task`` scenario each head has the benchmark's T·k
  outputs under the task mask (k usable), in ``domain`` the k shared labels; ``class`` (no task identity
  at test) is rejected. Before task j is trained its head is zero, so row 0 and the entries above the
  diagonal of the accuracy matrix are the constant prediction's accuracy (chance level).
* **its own phases and optimisers.** Each task runs DEN's phases (`lop.algos.den`), each with a fresh
  optimiser; ``phase_steps: 0`` gives each main phase the benchmark's steps per task
  (``epochs_per_task`` × batches per epoch), batches drawn as the benchmark does (a per-run reshuffle per
  epoch). The problem's ``reset_optimizer`` therefore has no effect on DEN runs, ``joint`` is rejected, and
  the network must be ReLU (``activation: relu``) of the problem's ``width`` × ``depth``.

Metrics at step i (tasks trained): ``test_accuracy/task_<j>`` (the accuracy matrix) and
``test_auroc/task_<j>`` (macro one-vs-rest AUROC over task j's classes, `lop.metrics.macro_auroc`, on the
softmax of its head), ``auroc`` (the mean of ``test_auroc`` over tasks 1..i, DEN's reported metric),
``live_units/layer<l>``, ``params_in_use``, ``train_loss``, and DEN's decisions ``den_expanded`` (0/1),
``den_split_units`` and ``den_selected_units``; after the last task the benchmark's summaries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from lop.algos.den import DENLearner
from lop.errors import ConfigError
from lop.experiments.base import MetricBlock, RunSpec, Trainer, flatten_tensors
from lop.metrics import macro_auroc
from lop.problems.cl_tasks import check_scenario
from lop.problems.task_sequence import task_label_mask


def with_den(trainer_cls: type) -> Callable[[Any, Sequence[RunSpec], torch.device], Trainer]:
    """An experiment ``build``: the DEN variant of ``trainer_cls`` for runs that set ``den``, else it."""
    den_cls = type(f"DEN{trainer_cls.__name__}", (DENTrainerMixin, trainer_cls), {})

    def build(problem: Any, runs: Sequence[RunSpec], device: torch.device) -> Trainer:
        uses = {r.config.den is not None for r in runs}
        if len(uses) > 1:
            raise ConfigError("den", "all runs of one batch must use DEN or none")
        return (den_cls if uses.pop() else trainer_cls)(problem, runs, device)

    return build


class DENTrainerMixin:
    """Overrides the task-sequence trainer's learner with DEN (see the module docstring)."""

    unit_name = "task"
    state_attrs = ("learner", "matrix", "auroc")

    def setup(
        self,
        data,
        net,
        runs: Sequence[RunSpec],
        streams,
        *,
        scenario: str,
        epochs_per_task: int,
        batch_size: int,
        probe_examples: int,
        eval_batch: int,
        reset_optimizer: bool = False,
    ) -> None:
        check_scenario(scenario, runs)  # DENConfig.SCENARIOS: task, domain
        if any(r.config.joint for r in runs):
            raise ConfigError("joint", "DEN trains one task at a time; remove joint or den")
        p = self.p
        if getattr(p, "activation", "relu") != "relu":
            raise ConfigError("problem.activation", "DEN's network is ReLU; set activation: relu")
        if getattr(p, "output_init", "default") != "default":
            raise ConfigError("problem.output_init", "DEN grows its own network; set output_init: default")
        self.data, self.streams, self.scenario = data, streams, scenario
        self.epochs, self.batch_size, self.eval_batch = epochs_per_task, batch_size, eval_batch
        self.n_units = data.n_tasks
        t, k, dev = data.n_tasks, data.k, streams.device
        n_out = self.n_outputs(scenario, t, k)
        mask = task_label_mask(torch.arange(t * k, device=dev) // k, dev) if scenario == "task" else None
        n_batches = [-(-len(r) // batch_size) for r in data.train.rows]
        in_dim = data.train.x[0].numel()
        self.learner = DENLearner(
            in_dim,
            [p.width] * p.depth,
            n_out,
            t,
            [r.config for r in runs],
            streams,
            steps_per_task=epochs_per_task * max(n_batches),
            steps_per_epoch=max(n_batches),
            label_mask=mask,
        )
        self.matrix = torch.full((streams.n, t + 1, t), float("nan"), dtype=torch.float64, device=dev)
        self.auroc = torch.full((streams.n, t + 1, t), float("nan"), dtype=torch.float64, device=dev)
        self.init_divergence(streams.n, dev)

    def model_state(self) -> dict[str, torch.Tensor]:
        return flatten_tensors(self.learner.net.state_dict())

    # ---- one task -----------------------------------------------------------------------------------
    def task_outputs(self, task: int) -> torch.Tensor:
        """bool ``[S, C]``: the outputs of task ``task`` (0-based)."""
        k, s = self.data.k, self.streams.n
        n_out = self.n_outputs(self.scenario, self.data.n_tasks, k)
        out = torch.arange(n_out, device=self.streams.device)
        used = (out // k == task) if self.scenario == "task" else torch.ones_like(out, dtype=torch.bool)
        return used.unsqueeze(0).expand(s, -1)

    def sampler(self, unit: int) -> Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]:
        """DEN's ``sample(phase, step)``: batch ``step mod n_batches`` of epoch ``step // n_batches`` of
        the phase, each epoch a per-run reshuffle (stream ``den/order``) of the task's training rows."""
        rows = self.data.train.rows[unit]
        n, bs = len(rows), self.batch_size
        n_batches = -(-n // bs)
        cache: dict[tuple[int, int], torch.Tensor] = {}

        def sample(phase: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
            epoch, b = divmod(step, n_batches)
            key = (phase, epoch)
            if key not in cache:
                cache.clear()
                counter = (unit * 8 + phase) * 1_000_003 + epoch
                cache[key] = rows[self.streams.permutation("den/order", counter, n)]
            r = cache[key][:, b * bs : (b + 1) * bs]
            return self.gather(self.data.train, r, torch.full_like(r, unit))

        return sample

    def train_unit(self, unit: int) -> list[MetricBlock]:
        blocks: list[MetricBlock] = []
        if unit == 0:
            blocks += self.evaluate(0)
        task = unit + 1
        info = self.learner.learn_task(task, self.sampler(unit), self.task_outputs(unit))
        self.mark_diverged(self.learner.bad, task)
        blocks.append(self.metric("train_loss", task, info["train_loss"]))
        for name in ("expanded", "split_units", "selected_units"):
            blocks.append(self.metric(f"den_{name}", task, info[name].to(torch.float64)))
        for layer, n in enumerate(self.learner.net.live_units(), start=1):
            blocks.append(self.metric(f"live_units/layer{layer}", task, n.to(torch.float64)))
        blocks.append(
            self.metric("params_in_use", task, self.learner.net.params_in_use(task).to(torch.float64))
        )
        blocks += self.evaluate(task)
        if task == self.n_units:
            blocks += self.summaries()
        return blocks

    @torch.no_grad()
    def evaluate(self, trained: int) -> list[MetricBlock]:
        """Row ``trained`` of the accuracy and AUROC matrices: task j by head j with the units of time j."""
        from lop.cl_metrics import task_metric

        test, s = self.data.test, self.streams.n
        out: list[MetricBlock] = []
        for j, rows in enumerate(test.rows):
            r = rows.expand(s, -1)
            logp = []
            ys = []
            for b0 in range(0, len(rows), self.eval_batch):
                x, y = self.gather(
                    test, r[:, b0 : b0 + self.eval_batch], torch.full_like(r[:, b0 : b0 + self.eval_batch], j)
                )
                logp.append(self.learner.log_probs(j + 1, x, y))
                ys.append(y)
            lp, y = torch.cat(logp, 1), torch.cat(ys, 1)
            self.matrix[:, trained, j] = (lp.argmax(-1) == y).to(torch.float64).mean(1)
            self.auroc[:, trained, j] = macro_auroc(lp.exp(), y, self.task_outputs(j))
            out.append(self.metric(task_metric(j + 1), trained, self.matrix[:, trained, j]))
            out.append(self.metric(f"test_auroc/task_{j + 1}", trained, self.auroc[:, trained, j]))
        if trained:
            out.append(self.metric("auroc", trained, self.auroc[:, trained, :trained].mean(1)))
        return out
