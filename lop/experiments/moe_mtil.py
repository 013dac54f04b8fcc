"""Experiment `moe_mtil`: multi-domain task-incremental learning (MTIL, Order I) on a frozen CLIP with
mixture-of-experts adapters (Yu et al., CVPR 2024; docs/protocols/moe_mtil.md).

Eleven datasets are learnt one after the other (`lop.data.mtil.ORDER_I`: Aircraft, Caltech101, CIFAR-100,
DTD, EuroSAT, Flowers, Food, MNIST, Pets, Cars, SUN397), each a task with its own classes and prompts
("a photo of a {class}."). Task t trains `iterations` minibatches of `batch_size` of its own training
images (epochs of a fresh per-run shuffle, no replay) with AdamW at the method's lr × ``lr_factors[t]``
(the published per-task rates are 1e-3 × (5, 1, 5, 1, 0.1, 1, 1, 0.1, 1, 1, 1)), a cosine schedule after
``warmup_steps`` linear warm-up steps, restarted per task, and the cross-entropy with label smoothing
over the task's classes of logits exp(logit_scale) · cos(image, text). Evaluation is task-incremental:
the test images of task j are classified among task j's classes only.

Methods (`MethodConfig.moe_adapters`): ``mode: adapters`` with per-task routers, DDAS picking a router
(or zero-shot CLIP) per test image and activate-freeze (the published MTIL configuration), ``zero_shot``
(plain CLIP) and ``full_finetune`` (every backbone tensor trained, one copy per run).

Unit = one task. Metrics (step = tasks trained); the full accuracy matrix is measured, every task after
every step, because "Transfer" reads the tasks not yet trained:

* ``test_accuracy/task_j`` for every j = 1..T at every step 0..T (row 0: CLIP before any training),
  with ``mean_accuracy`` (mean over all T tasks: its mean over steps 1..T is "Avg", its last value
  "Last"), ``seen_accuracy`` (tasks 1..t, t ≥ 1) and ``unseen_accuracy`` (tasks t+1..T, t < T: the tasks
  "Transfer" reads);
* step t ≥ 1: ``train_loss``, ``balance_loss``, ``adapter_weight_magnitude`` (mean |θ| of the trained
  tensors), ``adapter_dormant_units`` (fraction of bottleneck units zero on every evaluated token), with
  DDAS ``ddas_route_accuracy`` (trained tasks' test images sent to their own router) and
  ``ddas_zero_shot_fraction`` (test images of tasks not yet trained sent to zero-shot CLIP; steps
  before the last only);
* last step: ``mtil_transfer``, ``mtil_avg``, ``mtil_last`` (`lop.cl_metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lop import cl_metrics
from lop.algos.ddas import select_routes
from lop.data.mtil import MtilDataset, load_mtil_dataset
from lop.errors import ConfigError
from lop.experiments.base import ExperimentSpec, MetricBlock, RunSpec, Trainer
from lop.experiments.moe_common import ClipAdapterTrainer, check_zero_shot, cosine_factor
from lop.experiments.schemas import PAPER_LR_FACTORS as PAPER_LR_FACTORS  # re-exported
from lop.experiments.schemas import MoEMtilProblem
from lop.nets.clip import encode_image, encode_text, normalise_images


def _subset(n: int, limit: int) -> np.ndarray:
    """Indices of the kept images: all, or `limit` evenly spaced ones (deterministic, every class kept
    in proportion when the file is sorted by class)."""
    if limit <= 0 or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))


class MoEMtilTrainer(ClipAdapterTrainer):
    """Trains S runs of one method over the MTIL task sequence; unit = one task."""

    def __init__(self, problem: MoEMtilProblem, runs: Sequence[RunSpec], device: torch.device) -> None:
        self.p = problem
        cfgs, tok = self.setup_backbone(problem, runs, device)
        self.data: list[MtilDataset] = [
            load_mtil_dataset(problem.data_dir, d, verify=problem.verify_data) for d in problem.datasets
        ]
        self.stand_in = any(d.stand_in for d in self.data)
        self.train_idx = [_subset(len(d.train_labels), problem.train_limit) for d in self.data]
        self.test_idx = [_subset(len(d.test_labels), problem.test_limit) for d in self.data]
        self.tokens = [
            tok([problem.prompt.format(c.replace("_", " ")) for c in d.classes], self.arch.context_length).to(
                device
            )
            for d in self.data
        ]
        self.n_units = len(self.data)
        self.setup_model(runs, cfgs)

    # ---- data --------------------------------------------------------------------------------------
    def images(self, array: np.ndarray, idx: np.ndarray) -> torch.Tensor:
        """uint8 images at file positions `idx` (any shape) -> ``[*idx.shape, 3, H, H]`` on the device."""
        flat = np.ascontiguousarray(array[idx.reshape(-1)])
        return torch.from_numpy(flat).to(self.device).view(*idx.shape, *array.shape[1:])

    def labels(self, array: np.ndarray, idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array[idx])).to(self.device)

    # ---- training ----------------------------------------------------------------------------------
    def train_task(self, u: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Task u's iterations; returns the mean training loss and balance loss ``[S]``."""
        s, bsz, ds = self.streams.n, self.p.batch_size, self.data[u]
        sel = self.train_idx[u]
        n = len(sel)
        per_epoch = -(-n // bsz)
        tokens = self.tokens[u].expand(s, -1, -1)
        self.opt.reset()
        router, masks = None, None
        if self.adapters is not None:
            router = u if self.cfg.routers == "per_task" else 0
            masks = self.adapters.trainable_masks(router)
        w = self.weights()
        sum_loss = torch.zeros(s, device=self.device)
        sum_bal = torch.zeros(s, device=self.device)
        order = sel[None].repeat(s, 0)
        for it in range(self.p.iterations):
            epoch, b = divmod(it, per_epoch)
            if b == 0:  # one host transfer per epoch, not per step
                order = sel[self.streams.permutation(f"moe/shuffle/{u}", epoch, n).cpu().numpy()]
            idx = order[:, b * bsz : (b + 1) * bsz]  # [S, B] file positions
            if self.adapters is not None:
                self.adapters.ctx.route, self.adapters.ctx.training = router, True
                self.adapters.ctx.noise, self.adapters.ctx.step = True, u * self.p.iterations + it
            hook = self.adapters
            img = encode_image(
                normalise_images(self.images(ds.train_images, idx), self.arch.image_size), w, self.arch, hook
            )
            txt = encode_text(tokens, w, self.arch, hook)
            logits = self.logit_scale() * torch.bmm(
                F.normalize(img, dim=-1), F.normalize(txt, dim=-1).transpose(1, 2)
            )
            y = self.labels(ds.train_labels, idx)
            ce, bal = self.backward_loss(logits, y, u)
            self.opt.step(
                cosine_factor(it, self.p.iterations, self.cfg.warmup_steps) * self.p.lr_factors[u], masks
            )
            sum_loss += ce.detach()
            sum_bal += bal.detach()
        if self.adapters is not None:
            self.adapters.ctx.training = False
            self.adapters.freeze_most_used(self.cfg.freeze_top)
        return sum_loss / self.p.iterations, sum_bal / self.p.iterations

    @torch.no_grad()
    def frozen_features(self, array: np.ndarray, sel: np.ndarray) -> torch.Tensor:
        """``[N, e]`` frozen CLIP image embeddings (no adapters) of the images at `sel`, in eval batches."""
        out = []
        for i in range(0, len(sel), self.p.eval_batch):
            x = normalise_images(
                self.images(array, sel[i : i + self.p.eval_batch])[None], self.arch.image_size
            )
            out.append(encode_image(x, self.frozen, self.arch)[0])
        return torch.cat(out)

    # ---- evaluation --------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, n_seen: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Accuracy ``[S, T]`` on every task after `n_seen` trained tasks (task j's classes only), and the
        DDAS route accuracy (trained tasks) and zero-shot fraction (untrained tasks) ``[S]``."""
        s, t_all = self.streams.n, self.n_units
        use = n_seen > 0 and self.adapters is not None
        ddas = use and self.cfg.ddas != "off"
        ad = self.adapters
        if ad is not None:
            ad.ctx.training, ad.ctx.noise, ad.ctx.probe = False, self.cfg.noise_at_test, use
            ad.reset_active()
        n_routes = (n_seen if self.cfg.routers == "per_task" else 1) if use else 0
        w = self.weights()
        acc = torch.zeros(s, t_all, dtype=torch.float64, device=self.device)
        routed_right = torch.zeros(s, device=self.device)
        zero_shot = torch.zeros(s, device=self.device)
        n_trained = n_untrained = 0
        for j, ds in enumerate(self.data):
            tokens = self.tokens[j].expand(s, -1, -1)
            txt = [F.normalize(encode_text(tokens, w, self.arch, None), dim=-1)]  # route −1 first
            for r in range(n_routes):
                ad.ctx.route, ad.ctx.step = r, 0
                txt.append(F.normalize(encode_text(tokens, w, self.arch, ad), dim=-1))
            txt_all = torch.stack(txt, dim=1)  # [S, 1 + R, C, e]
            sel = self.test_idx[j]
            correct = torch.zeros(s, device=self.device)
            for bi, i in enumerate(range(0, len(sel), self.p.eval_batch)):
                part = sel[i : i + self.p.eval_batch]
                xb = self.images(ds.test_images, part)
                yb = self.labels(ds.test_labels, part)
                if ddas:
                    feats = encode_image(
                        normalise_images(xb[None], self.arch.image_size), self.frozen, self.arch
                    )[0]
                    route = select_routes(
                        self.ae.errors(feats, n_seen), self.cfg.ddas_threshold, self.cfg.ddas
                    )
                    if j < n_seen:
                        routed_right += (route == j).sum(1)
                    else:
                        zero_shot += (route < 0).sum(1)
                elif use:
                    route = torch.zeros(s, len(part), dtype=torch.int64, device=self.device)
                else:
                    route = torch.full((s, len(part)), -1, dtype=torch.int64, device=self.device)
                if use:
                    ad.ctx.route, ad.ctx.step = route, j * 100_000 + bi
                images = normalise_images(xb[None].expand(s, *xb.shape), self.arch.image_size)
                img = F.normalize(encode_image(images, w, self.arch, ad if use else None), dim=-1)
                tb = torch.gather(
                    txt_all, 1, (route + 1)[:, :, None, None].expand(-1, -1, *txt_all.shape[2:])
                )
                pred = torch.einsum("sbe,sbce->sbc", img, tb).argmax(-1)
                correct += (pred == yb[None]).sum(1)
            acc[:, j] = correct.double() / len(sel)
            if j < n_seen:
                n_trained += len(sel)
            else:
                n_untrained += len(sel)
        if ad is not None:
            ad.ctx.probe = False
        rr = routed_right / max(n_trained, 1)
        zs = zero_shot / n_untrained if n_untrained else torch.full((s,), float("nan"), device=self.device)
        return acc, rr, zs

    # ---- the unit ----------------------------------------------------------------------------------
    def _row(self, step: int, acc: torch.Tensor) -> list[MetricBlock]:
        """Row `step` of the accuracy matrix and its means over all, trained and untrained tasks."""
        self.acc[:, step] = acc
        out = [self.metric(f"test_accuracy/task_{j + 1}", step, acc[:, j]) for j in range(self.n_units)]
        out.append(self.metric("mean_accuracy", step, acc.mean(1)))
        if step > 0:
            out.append(self.metric("seen_accuracy", step, acc[:, :step].mean(1)))
        if step < self.n_units:
            out.append(self.metric("unseen_accuracy", step, acc[:, step:].mean(1)))
        return out

    def train_unit(self, unit: int) -> list[MetricBlock]:
        out: list[MetricBlock] = []
        if unit == 0:
            out += self._row(0, self.evaluate(0)[0])
        out += self.train_metrics(unit)
        if self.cfg.ddas != "off":
            ds = self.data[unit]
            steps = self.cfg.ddas_steps_first if unit == 0 else self.cfg.ddas_steps
            self.ae.train_task(unit, self.frozen_features(ds.train_images, self.train_idx[unit]), steps=steps)
        if self.cfg.mode == "zero_shot":  # CLIP never changes: every row equals row 0
            acc, rr, zs = self.acc[:, 0].clone(), None, None
        else:
            acc, rr, zs = self.evaluate(unit + 1)
        out += self._row(unit + 1, acc)
        if self.cfg.ddas != "off" and rr is not None:
            out.append(self.metric("ddas_route_accuracy", unit + 1, rr))
            if unit + 1 < self.n_units:  # no untrained task is left after the last step
                out.append(self.metric("ddas_zero_shot_fraction", unit + 1, zs))
        out += self.adapter_metrics(unit + 1)
        if unit + 1 == self.n_units:
            summary = cl_metrics.mtil_summaries(self.acc.cpu().numpy())
            for name in cl_metrics.MTIL_METRICS:
                values = torch.as_tensor(np.asarray(summary[name]), dtype=torch.float64, device=self.device)
                out.append(self.metric(name, unit + 1, values))
        return out


def build(problem: MoEMtilProblem, runs: Sequence[RunSpec], device: torch.device) -> Trainer:
    for r in runs:
        cfg = check_zero_shot(r)
        if cfg.mode != "zero_shot" and r.config.optimizer != "adam":
            raise ConfigError(
                f"methods.{r.method}.optimizer", "moe_mtil trains with AdamW; set optimizer: adam"
            )
    return MoEMtilTrainer(problem, runs, device)


EXPERIMENT = ExperimentSpec(
    name="moe_mtil",
    problem_cls=MoEMtilProblem,
    build=build,
    description="Multi-domain task-incremental learning (11 datasets, Order I) on a frozen CLIP with MoE adapters (Yu et al. 2024)",
    needs_data=("mtil",),
    supports=frozenset({"optimizer", "lr", "betas", "eps", "weight_decay", "moe_adapters"}),
)
