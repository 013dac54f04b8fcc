"""Experiment `incremental_cifar`: class-incremental CIFAR-100 with ResNet-18 (Fig. 2; docs/protocols/incremental_cifar.md).

Training starts on `classes_start` classes of a seeded class order and adds `classes_per_increment` every
`epochs_per_increment` epochs (20 increments × 200 epochs = 4,000 epochs). Output unit j of a run is the
j-th class of its order, so "loss only over the classes seen so far" is the softmax over the first
``n_seen`` logits. Per increment the step size restarts at the method's lr and is multiplied by
`lr_factors` at `lr_milestones` (0.1 → 0.02 → 0.004 → 0.0008 at epochs 60, 120, 160). Training images
are augmented (flip, reflect-pad-4 crop, rotation in `rotation_degrees`), validation/test images are not.

Early stopping: after every epoch each run's validation accuracy on the seen classes is compared with the
best of the current increment; at the end of the increment the parameters and BatchNorm statistics of
the best epoch are loaded back (the optimiser and CBP state carry on).

Methods: ``head_reset`` re-initialises fc at every increment start, ``retrain`` the whole network (with its
optimiser state), S&P adds noise after every step, CBP replaces conv channels (BatchNorm reset).

Unit = one epoch. Metrics (step = epochs completed):

* per epoch: ``test_accuracy``, ``val_accuracy`` (seen classes), ``train_accuracy``, ``train_loss``;
* with ``augmented_test: true``, also per epoch ``test_accuracy_augmented`` (the same test images through
  the training augmentation, fresh draws every evaluation: how the reference measured the accuracies the
  paper reports) and per increment ``test_accuracy_augmented/max`` and ``test_accuracy_augmented/final``;
  the clean ``test_accuracy`` metrics are recorded either way;
* per increment (step = its last epoch): ``test_accuracy/max`` (best test accuracy of any epoch, what the
  reference plots) and ``test_accuracy/final`` (test accuracy of the parameters the increment hands on:
  the best-validation epoch with early stopping, else the last epoch);
* at every increment start (step = epochs completed before it; after the previous increment's reload,
  before head/network resets), on `probe_images` clean training images: ``dormant_units/next`` (the
  increment's new classes) and ``dormant_units/previous`` (classes seen before; from increment 1),
  ``effective_rank/*``, ``abs_approximate_rank/*`` (the reference's 99% "stable rank"),
  ``approximate_rank/*`` and ``stable_rank/*`` of the 8·width-d features (512-d at the paper's width 64),
  and ``weight_magnitude`` (mean |θ| over all parameters). A unit is dormant when it is non-zero on fewer
  than `dormant_threshold` of the (image, position) pairs, over the 16 hidden conv outputs and the pooled
  features, as the reference.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch

from lop.algos.method_layer import supported_keys
from lop.data.augment import cifar_test_transform, cifar_train_transform
from lop.experiments.base import ExperimentSpec, MetricBlock, RunSpec, Trainer
from lop.experiments.schemas import IncrementalCifarProblem
from lop.metrics import rank_metrics, weight_magnitude
from lop.nets.resnet import ResNet18
from lop.problems.image_tasks import (
    MinibatchLearner,
    class_index,
    class_order,
    downsample,
    gather_runs,
    load_cifar_tensors,
    probe_indices,
)
from lop.rng import RunStreams

RANKS = ("effective_rank", "abs_approximate_rank", "approximate_rank", "stable_rank")


class IncrementalCifarTrainer(Trainer):
    """Trains S runs of one method (each with its own class order); unit = one epoch."""

    unit_name = "epoch"
    state_attrs = ("net", "learner", "best", "best_val", "best_test", "max_test", "aug")

    def __init__(
        self, problem: IncrementalCifarProblem, runs: Sequence[RunSpec], device: torch.device
    ) -> None:
        self.p = problem
        s = len(runs)
        self.streams = RunStreams([r.seed for r in runs], device)
        self.data = load_cifar_tensors(
            problem.data_dir,
            device,
            train_per_class=problem.train_per_class,
            val_per_class=problem.val_per_class,
            test_per_class=problem.test_per_class,
            verify=problem.verify_data,
            validation_split=problem.validation_split,
        )
        self.stand_in = self.data.stand_in
        self.net = ResNet18(
            self.streams,
            n_classes=problem.n_classes,
            init=problem.resnet_init,
            channels_last=problem.channels_last,
            width=problem.width,
        )
        configs = [r.config for r in runs]
        self.retrain = configs[0].retrain
        self.head_reset = configs[0].head_reset
        self.learner = MinibatchLearner(
            self.net, configs, self.streams, self.net.unit_layers(problem.cbp_scope)
        )
        self.base_lr = self.learner.optimizer.lr.clone()
        self.order = class_order(self.streams, 100)[:, : problem.n_classes]
        max_train = problem.train_per_class * (
            problem.classes_start + (problem.n_increments - 1) * problem.classes_per_increment
        )
        self.steps_per_epoch_max = -(-max_train // problem.batch_size)
        self.n_units = problem.n_epochs
        self.best = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        self.best_val = torch.full((s,), -1.0, dtype=torch.float64, device=device)
        self.best_test = torch.zeros(s, dtype=torch.float64, device=device)
        self.max_test = torch.zeros(s, dtype=torch.float64, device=device)
        # augmented-test trackers (best-validation epoch's and max accuracy), with `augmented_test` only
        self.aug = (
            {k: torch.zeros(s, dtype=torch.float64, device=device) for k in ("best", "max")}
            if problem.augmented_test
            else {}
        )
        self.init_divergence(s, device)

    # ---- schedule -----------------------------------------------------------------------------
    def n_seen(self, increment: int) -> int:
        return self.p.classes_start + increment * self.p.classes_per_increment

    def lr_factor(self, epoch_in_increment: int) -> float:
        """Step-size multiplier at an epoch of an increment (restarts at 1 every increment)."""
        i = bisect.bisect_right(self.p.lr_milestones, epoch_in_increment)
        return 1.0 if i == 0 else self.p.lr_factors[i - 1]

    def _set_lr(self, factor: float) -> None:
        opt = self.learner.optimizer
        opt.lr.copy_(self.base_lr * factor)
        if hasattr(opt, "neg_lr"):
            opt.neg_lr.copy_(-opt.lr)

    # ---- one epoch ----------------------------------------------------------------------------
    def train_unit(self, unit: int) -> list[MetricBlock]:
        p = self.p
        inc, e = divmod(unit, p.epochs_per_increment)
        blocks: list[MetricBlock] = []
        if e == 0:
            blocks += self.start_increment(inc, unit)
        n_seen = self.n_seen(inc)
        self._set_lr(self.lr_factor(e))
        loss, acc = self._train_epoch(unit, n_seen)
        val = self.evaluate(self.data.val, n_seen)
        test = self.evaluate(self.data.test, n_seen)
        step = torch.tensor([unit + 1], dtype=torch.int64)
        if self.aug:
            test_aug = self.evaluate(self.data.test, n_seen, augment_epoch=unit)
            improved = val > self.best_val
            self.aug["best"] = torch.where(improved, test_aug, self.aug["best"])
            self.aug["max"] = torch.maximum(self.aug["max"], test_aug)
            blocks.append(MetricBlock("test_accuracy_augmented", step, test_aug.unsqueeze(1)))
        self._track(val, test, unit)
        for name, v in (
            ("test_accuracy", test),
            ("val_accuracy", val),
            ("train_accuracy", acc),
            ("train_loss", loss),
        ):
            blocks.append(MetricBlock(name, step, v.to(torch.float64).unsqueeze(1)))
        if e == p.epochs_per_increment - 1:
            final = test
            if p.early_stopping:
                self.load_best()
                final = self.best_test
            blocks.append(MetricBlock("test_accuracy/max", step, self.max_test.clone().unsqueeze(1)))
            blocks.append(MetricBlock("test_accuracy/final", step, final.clone().unsqueeze(1)))
            if self.aug:
                final_aug = self.aug["best"] if p.early_stopping else test_aug
                for name, v in (("max", self.aug["max"]), ("final", final_aug)):
                    blocks.append(
                        MetricBlock(f"test_accuracy_augmented/{name}", step, v.clone().unsqueeze(1))
                    )
        return blocks

    def _train_epoch(self, epoch: int, n_seen: int) -> tuple[torch.Tensor, torch.Tensor]:
        p, s = self.p, self.streams.n
        data = self.data.train
        idx, y = class_index(self.order[:, :n_seen], data.shape[1])
        n = idx.shape[1]
        perm = self.streams.permutation("tasks/shuffle", epoch, n)
        idx, ys = gather_runs(idx, perm), y[perm]
        flat = data.flatten(0, 1)
        n_batches = -(-n // p.batch_size)
        loss_sum = torch.zeros(s, device=self.streams.device)
        acc_sum = torch.zeros(s, device=self.streams.device)
        self.net.train()
        for b in range(n_batches):
            sl = slice(b * p.batch_size, (b + 1) * p.batch_size)
            t = epoch * self.steps_per_epoch_max + b
            xb = self._train_images(flat[idx[:, sl]], t)
            loss, acc = self.learner.step(t, xb, ys[:, sl], n_logits=n_seen)
            loss_sum += loss
            acc_sum += acc
        return loss_sum / n_batches, acc_sum / n_batches

    def _train_images(self, x: torch.Tensor, t: int) -> torch.Tensor:
        p = self.p
        if p.augment:
            out = cifar_train_transform(
                x,
                self.streams,
                t,
                "augment",
                flip_p=p.flip_p,
                padding=p.crop_padding,
                degrees=tuple(p.rotation_degrees),
                interpolation=p.rotation_interpolation,
            )
        else:
            out = cifar_test_transform(x)
        return downsample(out, p.image_size)

    def _clean_images(self, x: torch.Tensor) -> torch.Tensor:
        return downsample(cifar_test_transform(x), self.p.image_size)

    def _augmented_test_images(self, x: torch.Tensor, counter: int) -> torch.Tensor:
        p = self.p
        out = cifar_train_transform(
            x,
            self.streams,
            counter,
            "augment_test",
            flip_p=p.flip_p,
            padding=p.crop_padding,
            degrees=tuple(p.rotation_degrees),
            interpolation=p.rotation_interpolation,
        )
        return downsample(out, p.image_size)

    @torch.no_grad()
    def evaluate(self, split: torch.Tensor, n_seen: int, augment_epoch: int | None = None) -> torch.Tensor:
        """Accuracy ``[S]`` (float64) on the images of the seen classes of `split` ``[K, n, ...]``: clean, or
        with `augment_epoch` through the training augmentation (flip, crop, rotation; streams
        ``augment_test/*`` at counter epoch·1,000,000 + batch number, fresh draws every evaluation)."""
        idx, y = class_index(self.order[:, :n_seen], split.shape[1])
        flat = split.flatten(0, 1)
        self.net.eval()
        correct = torch.zeros(self.streams.n, dtype=torch.float64, device=self.streams.device)
        for batch, start in enumerate(range(0, idx.shape[1], self.p.eval_batch)):
            sl = slice(start, start + self.p.eval_batch)
            x = flat[idx[:, sl]]
            if augment_epoch is None:
                x = self._clean_images(x)
            else:
                x = self._augmented_test_images(x, augment_epoch * 1_000_000 + batch)
            logits = self.net(x)[..., :n_seen]
            correct += (logits.argmax(-1) == y[sl]).sum(1, dtype=torch.float64)
        self.net.train()
        return correct / idx.shape[1]

    # ---- early stopping -----------------------------------------------------------------------
    @torch.no_grad()
    def _track(self, val: torch.Tensor, test: torch.Tensor, epoch: int) -> None:
        """Keep each run's best-validation parameters of the current increment; record divergence."""
        improved = val > self.best_val
        for k, cur in self.net.state_dict().items():
            mask = improved.view(-1, *([1] * (cur.dim() - 1)))
            self.best[k].copy_(torch.where(mask, cur, self.best[k]))
        self.best_val = torch.where(improved, val, self.best_val)
        self.best_test = torch.where(improved, test, self.best_test)
        self.max_test = torch.maximum(self.max_test, test)
        self.mark_diverged(self.learner.bad, epoch + 1)

    @torch.no_grad()
    def load_best(self) -> None:
        """Load every run's best-validation parameters and BatchNorm statistics of this increment."""
        self.net.load_state_dict(self.best, where="early-stopping snapshot")

    # ---- increment boundaries -----------------------------------------------------------------
    def start_increment(self, inc: int, epoch: int) -> list[MetricBlock]:
        """Measure the network handed over by the previous increment, then apply the method's resets."""
        blocks = self.measure(inc, epoch)
        if inc > 0 and self.retrain:
            self.net.reinit(inc, reset_running_stats=self.p.retrain_resets_running_stats)
            if self.p.reset_optimizer_on_reinit:
                self.learner.reset_optimizer_state()
        elif inc > 0 and self.head_reset:
            self.net.reset_head(inc)
            if self.p.reset_optimizer_on_reinit:
                self.learner.reset_optimizer_state([self.net.params["fc.weight"], self.net.params["fc.bias"]])
        self.best_val.fill_(-1.0)
        self.best_test.zero_()
        self.max_test.zero_()
        for t in self.aug.values():
            t.zero_()
        return blocks

    @torch.no_grad()
    def measure(self, inc: int, epoch: int) -> list[MetricBlock]:
        """Dormant units, feature ranks (next / previous classes) and weight magnitude at an increment start."""
        p = self.p
        step = torch.tensor([epoch], dtype=torch.int64)
        blocks = [
            MetricBlock("weight_magnitude", step, weight_magnitude(self.learner.params).unsqueeze(1)),
        ]
        lo, hi = self.n_seen(inc - 1) if inc > 0 else 0, self.n_seen(inc)
        groups = [("next", lo, hi)] + ([("previous", 0, lo)] if lo > 0 else [])
        for name, a, b in groups:
            if b <= a:
                continue
            data = self.data.train
            pool, _ = class_index(self.order[:, a:b], data.shape[1])
            pick = probe_indices(self.streams, f"probe/{name}", inc, pool.shape[1], p.probe_images)
            dormant, features = self.probe(data.flatten(0, 1), gather_runs(pool, pick))
            blocks.append(MetricBlock(f"dormant_units/{name}", step, dormant.unsqueeze(1)))
            for metric, value in rank_metrics(features).items():
                if metric in RANKS:
                    blocks.append(MetricBlock(f"{metric}/{name}", step, value.unsqueeze(1)))
                    # the same rank as a fraction of the feature size (8·width), comparable across widths
                    frac = value.to(torch.float64) / features.shape[-1]
                    blocks.append(MetricBlock(f"{metric}_fraction/{name}", step, frac.unsqueeze(1)))
        return blocks

    @torch.no_grad()
    def probe(self, images: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(dormant fraction ``[S]`` float64, pooled features ``[S, n, 8·width]``) of the clean images
        ``images[idx]`` (idx ``[S, n]``), in eval mode, or with ``probe_bn: train`` in training mode
        (BatchNorm normalises each probe batch of `eval_batch` images by its own statistics, as the
        reference's analysis did; the running statistics it updates are restored afterwards, so the probe
        never changes training).

        Units: the channels of the 16 hidden conv outputs before the last block's output, plus the
        8·width (512) pooled features standing for the last block's output (the reference's feature
        list); a unit is dormant when it is non-zero on fewer than `dormant_threshold` of the (image,
        position) pairs.
        """
        train_bn = self.p.probe_bn == "train"
        saved = {k: v.clone() for k, v in self.net.buffers.items()} if train_bn else {}
        self.net.train(train_bn)
        nonzero: dict[str, torch.Tensor] = {}
        positions: dict[str, int] = {}
        feats = []
        hidden = [c.name for c in self.net.chain()][:-1]
        for start in range(0, idx.shape[1], self.p.eval_batch):
            xb = self._clean_images(images[idx[:, start : start + self.p.eval_batch]])
            _, f, acts = self.net(xb, return_features=True, return_activations=True)
            feats.append(f)
            layers = {k: acts[k].flatten(3) for k in hidden}
            layers["features"] = f.unsqueeze(-1)
            for k, h in layers.items():
                nz = (h != 0).sum(dim=(1, 3), dtype=torch.float64)  # [S, C]
                nonzero[k] = nonzero[k] + nz if k in nonzero else nz
                positions[k] = h.shape[3]
        for k, v in saved.items():
            self.net.buffers[k].copy_(v)
        self.net.train()
        n = idx.shape[1]
        dormant = sum(
            ((nz / (n * positions[k])) < self.p.dormant_threshold).sum(1, dtype=torch.float64)
            for k, nz in nonzero.items()
        )
        total = sum(nz.shape[1] for nz in nonzero.values())
        return dormant / total, torch.cat(feats, dim=1)

    # ---- checkpoint ---------------------------------------------------------------------------


EXPERIMENT = ExperimentSpec(
    name="incremental_cifar",
    problem_cls=IncrementalCifarProblem,
    build=IncrementalCifarTrainer,
    description="Class-incremental CIFAR-100 with ResNet-18 (Fig. 2)",
    needs_data=("cifar100",),
    supports=supported_keys(MinibatchLearner.HOOK_POINTS) | {"head_reset", "retrain"},
)
