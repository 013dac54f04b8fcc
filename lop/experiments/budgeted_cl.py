"""Experiment `budgeted_cl`: compute-budgeted continual learning (Prabhu et al., CVPR 2023;
docs/protocols/budgeted_cl.md).

A network pretrained on the first half of the classes (ResNet-18 on CIFAR-100 classes 0–49; a small MLP
on the embedded digits 0–4 for the offline demo) meets a stream over the other half, class-incremental
(``scenario: class``, ``n_steps`` steps of equal class groups) or data-incremental (``scenario: data``).
Everything seen is stored (pool indices, no copies). Each step the method trains for a fixed budget
(``iterations × batch_size × budget_factor`` example passes, in forward units, the same for every
method; `lop.problems.budgeted_stream`) on batches its sampler draws from the storage
(`lop.algos.samplers`), with the step size decayed linearly to 0 within the step (SGD, momentum as
configured), optionally with distillation towards stored logits (`lop.algos.distillation`) and a
classifier correction (`lop.algos.fc_correction`). The pretrained network comes from `lop pretrain`
(``pretrained: <file>``, a pipeline stage) or, with ``pretrained: ""``, is trained in the process by
the same function (same numbers).

Unit = one step. Metrics (step = steps completed; step 0 = the pretrained network):

* ``stream_accuracy`` (test accuracy on the stream classes seen so far), ``pretrain_accuracy`` (on the
  pretraining classes), ``seen_accuracy`` (on both) — class-incremental: argmax over every output in
  use; ``test_accuracy/task_<j>`` (accuracy on step j's classes, class-incremental only: the accuracy
  matrix of `lop.cl_metrics`) and at the last step ``cl/acc``, ``cl/bwt``, ``cl/forgetting``,
  ``cl/avg_incremental_acc``;
* ``train_loss``, ``train_accuracy`` (mean over the step's batches), ``lr`` (first iteration);
* ``budget/forward_units`` (charged: the budget), ``budget/trained_examples``, ``budget/iterations``,
  ``budget/fixed_forward``, ``budget/forfeited``;
* plasticity probes on the features of ``probe_examples`` of the step's arriving examples (clean, eval
  mode): ``dormant_units`` (feature units active on < 1 % of them), ``effective_rank``, ``stable_rank``,
  ``approximate_rank``, and ``weight_magnitude``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lop import cl_metrics
from lop.algos import samplers as smp
from lop.algos.distillation import DistillHook
from lop.algos.fc_correction import CorrectedNet, fit_bic, weight_align
from lop.algos.method_layer import MethodContext, supported_keys
from lop.config import MethodConfig, SamplerConfig, to_dict
from lop.data.augment import cifar_test_transform, cifar_train_transform
from lop.errors import CheckpointError, ConfigError
from lop.experiments.base import ExperimentSpec, MetricBlock, RunSpec, Trainer
from lop.experiments.schemas import BudgetedCLProblem
from lop.metrics import dormant_units, rank_metrics, weight_magnitude
from lop.nets.feature_mlp import FeatureMLP
from lop.nets.resnet import ResNet18
from lop.problems.budgeted_stream import (
    PoolData,
    Storage,
    Stream,
    batch_sizes,
    linear_decay,
    load_digits_pool,
    step_budget,
)
from lop.problems.image_tasks import MinibatchLearner, downsample, load_cifar_tensors
from lop.problems.task_sequence import TaskSequenceLearner
from lop.rng import RunStreams

OWN_KEYS = frozenset({"sampler", "distill", "fc_correction"})
# the learner's points this experiment calls: no data hook (it would add examples outside the budget)
# and no end-of-task consolidation (its forward passes are not charged)
POINTS = frozenset({"loss_terms", "edit_grads", "after_step"})
ITER_STRIDE = 1 << 20  # counter of iteration i of step t: t·ITER_STRIDE + i
PRETRAIN_FIELDS = (
    "dataset",
    "data_dir",
    "n_classes",
    "train_per_class",
    "width",
    "depth",
    "image_size",
    "augment",
    "pretrain_seed",
    "pretrain_epochs",
    "pretrain_lr",
    "pretrain_batch",
)


# ---- data and network ---------------------------------------------------------------------------------
def load_pool(p: BudgetedCLProblem, device: torch.device) -> PoolData:
    if p.dataset == "digits":
        d = load_digits_pool(p.train_per_class, p.test_per_class, device)
        return PoolData(d.train[: p.n_classes], d.test[: p.n_classes], False, True)
    d = load_cifar_tensors(
        p.data_dir,
        device,
        train_per_class=p.train_per_class,
        val_per_class=1,
        test_per_class=p.test_per_class,
        n_classes=100,
        verify=p.verify_data,
    )
    return PoolData(d.train[: p.n_classes], d.test[: p.n_classes], True, d.stand_in)


def build_net(p: BudgetedCLProblem, streams: RunStreams) -> FeatureMLP | ResNet18:
    if p.dataset == "digits":
        return FeatureMLP(streams, 64, p.n_classes, width=p.width, depth=p.depth)
    return ResNet18(streams, n_classes=p.n_classes, width=p.width)


def inputs(
    p: BudgetedCLProblem, pool: PoolData, x: torch.Tensor, streams: RunStreams | None, counter: int
) -> torch.Tensor:
    """Network inputs of raw examples ``[S, B, ...]``: images augmented (with streams) or clean."""
    if not pool.images:
        return x
    if streams is not None and p.augment:
        out = cifar_train_transform(x, streams, counter, "augment", degrees=(0.0, 0.0))
    else:
        out = cifar_test_transform(x)
    return downsample(out, p.image_size)


def pretrain_fingerprint(p: BudgetedCLProblem) -> str:
    """sha256 of the problem fields the pretrained network depends on."""
    d = to_dict(p)
    return hashlib.sha256(json.dumps({k: d[k] for k in PRETRAIN_FIELDS}, sort_keys=True).encode()).hexdigest()


def pretrain(p: BudgetedCLProblem, device: torch.device) -> dict[str, torch.Tensor]:
    """Train one network (run seed ``pretrain_seed``) on the pretraining classes ``0..⌊K/2⌋−1``:
    ``pretrain_epochs`` epochs of shuffled batches of ``pretrain_batch``, cross-entropy over those
    outputs, SGD (momentum 0.9, weight decay 5e-4) with the step size decayed linearly to 0 over the
    whole run. Returns the network's state ``[1, ...]``."""
    pool = load_pool(p, device)
    streams = RunStreams([p.pretrain_seed], device)
    net = build_net(p, streams)
    cfg = MethodConfig(optimizer="sgd", lr=p.pretrain_lr, momentum=0.9, weight_decay=5e-4)
    learner = MinibatchLearner(net, [cfg], streams)
    n_pre = p.n_classes // 2
    flat = pool.train.flatten(0, 1)
    n = n_pre * pool.train.shape[1]
    labels = torch.arange(n_pre, device=device).repeat_interleave(pool.train.shape[1])
    per_epoch = -(-n // p.pretrain_batch)
    total = p.pretrain_epochs * per_epoch
    opt = learner.optimizer
    base = opt.lr.clone()
    net.train()
    for e in range(p.pretrain_epochs):
        perm = streams.permutation("pretrain/shuffle", e, n)[0]
        for b in range(per_epoch):
            t = e * per_epoch + b
            opt.lr.copy_(base * linear_decay(t, total))
            if hasattr(opt, "neg_lr"):
                opt.neg_lr.copy_(-opt.lr)
            idx = perm[b * p.pretrain_batch : (b + 1) * p.pretrain_batch]
            x = inputs(p, pool, flat[idx].unsqueeze(0), streams, t)
            learner.step(t, x, labels[idx].unsqueeze(0), n_logits=n_pre)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def save_pretrained(p: BudgetedCLProblem, state: dict[str, torch.Tensor], path: Path) -> None:
    """Write the checkpoint atomically: the state and the fingerprint of the fields it depends on."""
    from lop.io import save_torch

    fp = torch.tensor(list(bytes.fromhex(pretrain_fingerprint(p))), dtype=torch.uint8)
    save_torch(path, {"state": state, "fingerprint": fp})


_PRETRAINED: dict[str, dict[str, torch.Tensor]] = {}


def load_pretrained(p: BudgetedCLProblem, device: torch.device) -> dict[str, torch.Tensor]:
    """The pretrained state: from ``pretrained`` (fingerprint checked) or trained now (cached per process)."""
    fp = pretrain_fingerprint(p)
    if not p.pretrained:
        if fp not in _PRETRAINED:
            _PRETRAINED[fp] = pretrain(p, torch.device("cpu"))
        return {k: v.to(device) for k, v in _PRETRAINED[fp].items()}
    path = Path(p.pretrained)
    if not path.is_file():
        raise ConfigError(
            "problem.pretrained",
            f"{path} does not exist; create it with `lop pretrain --params <file> --scale <scale>` "
            '(the pipeline\'s pretrain rule) or set pretrained: "" to pretrain in the run',
        )
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
        state, got = blob["state"], bytes(blob["fingerprint"].tolist()).hex()
    except Exception as e:
        raise CheckpointError(f"{path}: not a pretrained checkpoint of budgeted_cl ({e})") from None
    if got != fp:
        raise CheckpointError(
            f"{path}: pretrained with other settings (fields {', '.join(PRETRAIN_FIELDS)}); run `lop pretrain` again"
        )
    return state


# ---- trainer ------------------------------------------------------------------------------------------
def _shared(configs: Sequence[MethodConfig], key: str):
    values = [getattr(c, key) for c in configs]
    if any(v != values[0] for v in values[1:]):
        raise ConfigError(
            key, "runs of one batch must share this setting (it sets the step's iterations); split the method"
        )
    return values[0]


class BudgetedCLTrainer(Trainer):
    """S runs of one method over the budgeted stream; unit = one step."""

    unit_name = "step"
    state_attrs = ("net", "head", "learner", "storage", "R")

    def __init__(self, problem: BudgetedCLProblem, runs: Sequence[RunSpec], device: torch.device) -> None:
        p = self.p = problem
        s = len(runs)
        configs = [r.config for r in runs]
        self.sampler: SamplerConfig = _shared(configs, "sampler") or SamplerConfig()
        self.fc = _shared(configs, "fc_correction")
        distill = [c.distill for c in configs]
        if any(d is None for d in distill) and any(d is not None for d in distill):
            raise ConfigError("distill", "all runs of one batch must use distillation or none")
        if distill[0] is not None and not p.store_logits:
            raise ConfigError(
                "distill", "distillation needs stored logits: set problem.store_logits: true for this method"
            )
        if self.fc is not None and self.fc.kind in ("wa", "bic") and p.scenario != "class":
            raise ConfigError(
                "fc_correction.kind",
                f"{self.fc.kind} corrects new classes' outputs: it needs scenario: class",
            )
        self.streams = RunStreams([r.seed for r in runs], device)
        self.pool = load_pool(p, device)
        self.stand_in = self.pool.stand_in
        self.net = build_net(p, self.streams)
        pre = load_pretrained(p, device)
        self.net.load_state_dict(
            {k: v.expand(s, *v.shape[1:]).clone() for k, v in pre.items()}, "pretrained network"
        )
        self.head = CorrectedNet(self.net, self.fc, s, device)
        self.learner = TaskSequenceLearner(self.head, configs, self.streams)
        self.distill: DistillHook | None = None
        if distill[0] is not None:
            ctx = MethodContext(self.learner.params, [], self.learner.optimizer, self.streams, self.net)
            self.distill = DistillHook(distill, ctx)  # type: ignore[arg-type]
            self.learner.methods.add_hook("distill", self.distill)
        self.base_lr = self.learner.optimizer.lr.clone()
        per = self.pool.train.shape[1]
        self.stream = Stream(self.streams, p.n_classes, per, p.n_steps, p.scenario)
        n_pre = self.stream.n_pre
        cap = n_pre * per + p.n_steps * self.stream.n_step
        self.storage = Storage(s, cap, p.n_classes, device, p.store_logits)
        self.n_units = p.n_steps
        self.R = torch.full((s, p.n_steps + 1, p.n_steps), float("nan"), dtype=torch.float64, device=device)
        self.budgets = [self.budget(t) for t in range(p.n_steps)]  # raises on a budget too small
        self.init_divergence(s, device)
        idx = torch.arange(n_pre * per, device=device).repeat(s, 1)
        logits = self.forward_logits(idx, n_pre) if p.store_logits else None
        self.storage.add(idx, idx // per, n_pre, logits)

    # ---- budget ---------------------------------------------------------------------------------
    def budget(self, t: int):
        fixed = self.stream.n_step if self.p.store_logits else 0
        if self.fc is not None and self.fc.kind == "bic":
            fixed += self.p.val_per_class * self.stream.n_seen(t)
        return step_budget(
            self.p.iterations,
            self.p.batch_size,
            self.p.budget_factor,
            fixed,
            smp.extra_forward_per_example(self.sampler),
        )

    # ---- forward passes outside training ---------------------------------------------------------
    @torch.no_grad()
    def forward_logits(self, idx: torch.Tensor, n_out: int, features: bool = False) -> torch.Tensor:
        """Eval-mode logits ``[S, n, n_out]`` (or features) of pool examples ``idx [S, n]`` (clean inputs)."""
        flat = self.pool.train.flatten(0, 1)
        self.head.eval()
        self.head.correct = True
        out = []
        for a in range(0, idx.shape[1], self.p.eval_batch):
            x = inputs(self.p, self.pool, flat[idx[:, a : a + self.p.eval_batch]], None, 0)
            if features:
                out.append(self.head(x, return_features=True)[1])
            else:
                out.append(self.head(x)[..., :n_out])
        self.head.correct = False
        self.head.train()
        return torch.cat(out, 1)

    # ---- one step -------------------------------------------------------------------------------
    def train_unit(self, unit: int) -> list[MetricBlock]:
        p, t = self.p, unit
        blocks: list[MetricBlock] = []
        if t == 0:
            blocks += self.evaluate(0)
        n_prev = self.stream.n_seen(t - 1) if t > 0 else self.stream.n_pre
        n_seen = self.stream.n_seen(t)
        idx, labels = self.stream.arrivals(t)
        logits = self.forward_logits(idx, n_prev) if p.store_logits else None
        self.storage.add(idx, labels, n_prev, logits)
        probe = self.probe(idx[:, : p.probe_examples], t)
        bud = self.budgets[t]
        sizes = batch_sizes(bud.n_train, p.batch_size)
        probs = self.prepare_sampler(t, bud.n_train, n_seen)
        s = self.streams.n
        loss_sum = torch.zeros(s, device=self.streams.device)
        acc_sum = torch.zeros(s, device=self.streams.device)
        flat = self.pool.train.flatten(0, 1)
        rows = torch.arange(s, device=self.streams.device).unsqueeze(1)
        opt = self.learner.optimizer
        self.head.train()
        for i, b in enumerate(sizes):
            counter = t * ITER_STRIDE + i
            pos = self.draw(counter, probs, b, n_seen)
            x = inputs(p, self.pool, flat[self.storage.index[rows, pos]], self.streams, counter)
            y = self.storage.labels[rows, pos]
            opt.lr.copy_(self.base_lr * linear_decay(i, len(sizes)))
            if hasattr(opt, "neg_lr"):
                opt.neg_lr.copy_(-opt.lr)
            if self.distill is not None:
                assert self.storage.logits is not None
                self.distill.n_logits = n_seen
                self.distill.set_targets(self.storage.logits[rows, pos], self.storage.n_old[rows, pos])
            loss, acc = self.learner.step(counter, x, y, n_logits=n_seen)
            loss_sum += loss
            acc_sum += acc
        self.mark_diverged(self.learner.bad, t + 1)
        self.correct_head(t, n_prev, n_seen)
        step = t + 1
        n_it = len(sizes)
        full = lambda v: torch.full((s,), float(v), dtype=torch.float64)  # noqa: E731
        blocks += [
            self.metric("train_loss", step, loss_sum / n_it),
            self.metric("train_accuracy", step, acc_sum / n_it),
            self.metric("lr", step, self.base_lr.to(torch.float64)),
            self.metric("budget/forward_units", step, full(bud.spent)),
            self.metric("budget/trained_examples", step, full(bud.n_train)),
            self.metric("budget/iterations", step, full(n_it)),
            self.metric("budget/fixed_forward", step, full(bud.fixed)),
            self.metric("budget/forfeited", step, full(bud.forfeited)),
            *probe,
        ]
        blocks += self.evaluate(step)
        return blocks

    def prepare_sampler(self, t: int, n_train: int, n_seen: int) -> torch.Tensor:
        """The step's distribution over the storage ``[S, N]`` (uniform for the scoring samplers)."""
        cfg, st = self.sampler, self.storage
        n = st.n
        labels = st.labels[:, :n]
        if cfg.kind in smp.STATIC or cfg.kind in smp.SCORING:
            kind = cfg if cfg.kind in smp.STATIC else SamplerConfig()
            return smp.static_probs(kind, labels, self.p.n_classes, self.stream.n_step, n_train)
        size = min(n, cfg.candidates * n_train)
        cand = self.streams.permutation("sampler/pool", t, n)[:, :size]
        rows = torch.arange(self.streams.n, device=cand.device).unsqueeze(1)
        feats = self.forward_logits(st.index[rows, cand], 0, features=True)
        lab = labels.gather(1, cand)
        if cfg.kind == "herding":
            keep = smp.herding_keep(feats, lab, self.p.n_classes, cfg.keep)
        else:
            keep = smp.kmeans_keep(feats, lab, self.p.n_classes, cfg.keep, cfg.clusters)
        w = torch.zeros(self.streams.n, n, dtype=torch.float64, device=cand.device)
        w.scatter_(1, cand, keep.to(torch.float64))
        return w / w.sum(1, keepdim=True)

    def draw(self, counter: int, probs: torch.Tensor, b: int, n_seen: int) -> torch.Tensor:
        """Storage positions ``[S, b]`` of one batch."""
        cfg = self.sampler
        if cfg.kind not in smp.SCORING:
            return smp.draw(self.streams, counter, probs, b)
        cand = smp.draw(self.streams, counter, probs, b * cfg.candidates)
        rows = torch.arange(self.streams.n, device=cand.device).unsqueeze(1)
        logits = self.forward_logits(self.storage.index[rows, cand], n_seen)
        score = smp.scores(cfg.kind, torch.log_softmax(logits.float(), -1), self.storage.labels[rows, cand])
        return cand.gather(1, smp.top_scoring(score, b))

    @torch.no_grad()
    def correct_head(self, t: int, n_prev: int, n_seen: int) -> None:
        """WA or BiC after a class-incremental step that brought new classes."""
        if self.fc is None or n_seen <= n_prev or self.fc.kind == "cosine":
            return
        if self.fc.kind == "wa":
            weight_align(self.net.params["fc.weight"], n_prev, n_seen)
            return
        st, n = self.storage, self.storage.n
        onehot = torch.nn.functional.one_hot(st.labels[:, :n], self.p.n_classes)
        rank = (onehot.cumsum(1) * onehot).sum(-1) - 1  # position of each example within its class
        held = rank < self.p.val_per_class
        # the same number of held-out examples per run: the first val_per_class of every seen class
        order = torch.sort((~held).to(torch.int8), dim=1, stable=True).indices[
            :, : self.p.val_per_class * n_seen
        ]
        rows = torch.arange(self.streams.n, device=order.device).unsqueeze(1)
        self.head.bic_range.copy_(torch.tensor([0, 0]))
        logits = self.forward_logits(st.index[rows, order], n_seen)
        a, b = fit_bic(logits, st.labels[rows, order], n_prev, n_seen, self.fc.bic_steps, self.fc.bic_lr)
        self.head.alpha.copy_(a)
        self.head.beta.copy_(b)
        self.head.bic_range.copy_(torch.tensor([n_prev, n_seen]))

    # ---- evaluation and probes ------------------------------------------------------------------
    @torch.no_grad()
    def class_accuracy(self, n_seen: int) -> torch.Tensor:
        """``[S, K]`` float64 test accuracy of each class id (argmax over the first n_seen outputs)."""
        test = self.pool.test
        k, m = test.shape[0], test.shape[1]
        flat = test.flatten(0, 1)
        s = self.streams.n
        correct = torch.zeros(s, k * m, dtype=torch.float64, device=flat.device)
        true = self.stream.label_of_class.repeat_interleave(m, dim=1)  # [S, K·m]
        self.head.eval()
        self.head.correct = True
        for a in range(0, k * m, self.p.eval_batch):
            xb = flat[a : a + self.p.eval_batch]
            x = inputs(self.p, self.pool, xb.unsqueeze(0).expand(s, *xb.shape), None, 0)
            pred = self.head(x)[..., :n_seen].argmax(-1)
            correct[:, a : a + pred.shape[1]] = (pred == true[:, a : a + pred.shape[1]]).to(torch.float64)
        self.head.correct = False
        self.head.train()
        return correct.view(s, k, m).mean(-1)

    def evaluate(self, step: int) -> list[MetricBlock]:
        st = self.stream
        n_seen = st.n_seen(step - 1) if step > 0 else st.n_pre
        acc = self.class_accuracy(n_seen)  # by class id
        pre = acc[:, : st.n_pre].mean(1)
        blocks = [self.metric("pretrain_accuracy", step, pre)]
        if self.p.scenario == "class":
            # the whole row of the accuracy matrix: tasks not yet seen score 0 (their outputs are not in use)
            k = st.n_stream // st.n_steps
            self.R[:, step] = acc.gather(1, st.order).view(-1, st.n_steps, k).mean(-1)
        if step == 0:
            return blocks
        seen_stream = st.order[:, : n_seen - st.n_pre]
        stream_acc = acc.gather(1, seen_stream).mean(1)
        n_all = st.n_pre + seen_stream.shape[1]
        seen_acc = (pre * st.n_pre + stream_acc * seen_stream.shape[1]) / n_all
        blocks += [
            self.metric("stream_accuracy", step, stream_acc),
            self.metric("seen_accuracy", step, seen_acc),
        ]
        if self.p.scenario == "class":
            for j in range(step):
                blocks.append(self.metric(cl_metrics.task_metric(j + 1), step, self.R[:, step, j]))
            if step == st.n_steps:
                summ = cl_metrics.summaries(self.R.cpu().numpy())
                for name in ("acc", "bwt", "forgetting", "avg_incremental_acc"):
                    blocks.append(self.metric(f"cl/{name}", step, torch.from_numpy(np.asarray(summ[name]))))
        return blocks

    @torch.no_grad()
    def probe(self, idx: torch.Tensor, step: int) -> list[MetricBlock]:
        """Plasticity probes on the features of the arriving examples ``idx [S, n]`` (before training)."""
        f = self.forward_logits(idx, 0, features=True)
        out = [
            self.metric("dormant_units", step, dormant_units(f)),
            self.metric("weight_magnitude", step, weight_magnitude(self.learner.params)),
        ]
        ranks = rank_metrics(f)
        for name in ("effective_rank", "stable_rank", "approximate_rank"):
            out.append(self.metric(name, step, ranks[name].to(torch.float64)))
        return out


EXPERIMENT = ExperimentSpec(
    name="budgeted_cl",
    problem_cls=BudgetedCLProblem,
    build=BudgetedCLTrainer,
    description="Compute-budgeted continual learning: samplers, distillation and FC corrections at equal compute",
    needs_data=("cifar100",),
    supports=supported_keys(POINTS, has_units=False) | OWN_KEYS,
)
