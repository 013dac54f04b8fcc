"""Experiment `moe_cifar`: class-incremental CIFAR-100 on a frozen CLIP with mixture-of-experts adapters
(Yu et al., CVPR 2024; docs/protocols/moe_cifar.md).

The 100 classes, in the fixed order of the class-incremental literature (the "seed 1993" order 87, 0, 52,
…; the same for every run), are split into `n_steps` equal tasks (10, 20 or 50). Task t trains
`epochs_per_step` epoch(s) on its own classes' training images only (no replay), batch `batch_size`,
AdamW at the method's lr with a cosine schedule restarted per task after `warmup_steps` linear warm-up
steps. Logits are exp(logit_scale) · cos(image embedding, text embedding of "a bad photo of a {class}.");
the training loss is the cross-entropy over the current task's classes, the prediction at test time the
argmax over every class seen so far. Adapters (`lop.nets.moe_adapters`) sit in every block of both
encoders; the frozen backbone is shared by the runs of a batch, the adapters, routers and activations
carry the run axis.

Methods (`MethodConfig.moe_adapters`, unset = its defaults): ``mode: adapters`` (the method; optional
per-task routers with DDAS, activate-freeze, load balancing), ``zero_shot`` (plain CLIP, no training) and
``full_finetune`` (every backbone tensor trained, one copy per run).

Unit = one task. Metrics (step = tasks trained):

* step 0: ``test_accuracy/task_1`` (CLIP before training, on task 1's classes);
* step t ≥ 1: ``test_accuracy/task_j`` for j ≤ t (accuracy on task j's test images, argmax over the
  seen classes: row t of the accuracy matrix of `lop.cl_metrics`), ``seen_accuracy`` (all seen test
  images), ``train_loss`` (mean over the task's steps), ``adapter_weight_magnitude`` (mean |θ| of the
  trained tensors, a plasticity probe), ``adapter_dormant_units`` (adapters only: fraction of bottleneck
  units, over all blocks and experts of both encoders, that are zero on every token of the step's
  evaluation — test images and class prompts), ``balance_loss`` and, with DDAS, ``ddas_zero_shot_fraction`` and
  ``ddas_route_accuracy`` (fraction of seen test images sent to their own task's router);
* last step: ``avg_accuracy`` (mean of ``seen_accuracy`` over the steps, step 1 included: the paper's
  "Avg", = `lop.cl_metrics.avg_incremental_acc` for equal tasks) and ``last_accuracy`` (all classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lop.algos.ddas import select_routes
from lop.experiments.base import ExperimentSpec, MetricBlock, RunSpec, Trainer
from lop.experiments.moe_common import ClipAdapterTrainer, check_zero_shot, cosine_factor
from lop.experiments.schemas import MoECifar20Problem, MoECifar50Problem, MoECifarProblem
from lop.nets.clip import encode_image, encode_text, normalise_images
from lop.problems.image_tasks import load_cifar_tensors

# the class order of the class-incremental CIFAR-100 literature ("seed 1993")
CLASS_ORDER_1993 = (
    87, 0, 52, 58, 44, 91, 68, 97, 51, 15, 94, 92, 10, 72, 49, 78, 61, 14, 8, 86,
    84, 96, 18, 24, 32, 45, 88, 11, 4, 67, 69, 66, 77, 47, 79, 93, 29, 50, 57, 83,
    17, 81, 41, 12, 37, 59, 25, 20, 80, 73, 1, 28, 6, 46, 62, 82, 53, 9, 31, 75,
    38, 63, 33, 74, 27, 22, 36, 3, 16, 21, 60, 19, 70, 90, 89, 43, 5, 42, 65, 76,
    40, 30, 23, 85, 2, 95, 56, 48, 71, 64, 98, 13, 99, 7, 34, 55, 54, 26, 35, 39,
)  # fmt: skip
# CIFAR-100 fine label names, label order
CIFAR100_NAMES = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
]


class MoECifarTrainer(ClipAdapterTrainer):
    """Trains S runs of one method; unit = one task."""

    def __init__(self, problem: MoECifarProblem, runs: Sequence[RunSpec], device: torch.device) -> None:
        self.p = problem
        cfgs, tok = self.setup_backbone(problem, runs, device)
        order = CLASS_ORDER_1993[: problem.n_classes]
        self.order = torch.tensor(order, dtype=torch.int64, device=device)
        names = [CIFAR100_NAMES[c].replace("_", " ") for c in order]
        self.tokens = tok([problem.prompt.format(n) for n in names], self.arch.context_length).to(device)
        data = load_cifar_tensors(
            problem.data_dir,
            device,
            train_per_class=problem.train_per_class,
            val_per_class=problem.val_per_class,
            test_per_class=problem.test_per_class,
            verify=problem.verify_data,
        )
        self.stand_in = data.stand_in
        self.train_x = torch.cat([data.train, data.val], dim=1)[
            self.order
        ]  # [C, n, 3, 32, 32], order position
        self.test_x = data.test[self.order]
        self.n_units = problem.n_steps
        self.c = problem.classes_per_step
        self.iters = problem.epochs_per_step * -(-(self.c * self.train_x.shape[1]) // problem.batch_size)
        self.sgd = runs[0].config.optimizer == "sgd"
        self.setup_model(runs, cfgs)

    # ---- the model ---------------------------------------------------------------------------------
    def embed(
        self, images: torch.Tensor, tokens: torch.Tensor, adapters: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised image ``[S, B, e]`` and text ``[S, C, e]`` embeddings."""
        hook = self.adapters if adapters and self.adapters is not None else None
        w = self.weights()
        img = encode_image(normalise_images(images, self.arch.image_size), w, self.arch, hook)
        txt = encode_text(tokens, w, self.arch, hook)
        return F.normalize(img, dim=-1), F.normalize(txt, dim=-1)

    # ---- training ----------------------------------------------------------------------------------
    def train_task(self, u: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One task's epochs; returns the mean training loss and balance loss ``[S]``."""
        s, c, bsz = self.streams.n, self.c, self.p.batch_size
        x_task = self.train_x[u * c : (u + 1) * c]  # [c, n, 3, 32, 32]
        n_per = x_task.shape[1]
        x_flat = x_task.reshape(c * n_per, *x_task.shape[2:])
        y_flat = torch.arange(c, device=self.device).repeat_interleave(n_per)
        tokens = self.tokens[u * c : (u + 1) * c].expand(s, -1, -1)
        self.opt.reset()
        router = None
        if self.adapters is not None:
            router = u if self.cfg.routers == "per_task" else 0
            masks = self.adapters.trainable_masks(router)
        else:
            masks = None
        sum_loss = torch.zeros(s, device=self.device)
        sum_bal = torch.zeros(s, device=self.device)
        n = x_flat.shape[0]
        per_epoch = -(-n // bsz)
        for it in range(self.iters):
            epoch, b = divmod(it, per_epoch)
            perm = self.streams.permutation("moe/shuffle", u * self.p.epochs_per_step + epoch, n)
            idx = perm[:, b * bsz : (b + 1) * bsz]  # [S, B]
            if self.adapters is not None:
                self.adapters.ctx.route, self.adapters.ctx.training = router, True
                self.adapters.ctx.noise, self.adapters.ctx.step = True, u * self.iters + it
            img, txt = self.embed(x_flat[idx], tokens, adapters=True)
            logits = self.logit_scale() * torch.bmm(img, txt.transpose(1, 2))  # [S, B, c]
            ce, bal = self.backward_loss(logits, y_flat[idx], u)
            factor = cosine_factor(it, self.iters, self.cfg.warmup_steps)
            if self.sgd:
                with torch.no_grad():
                    for k, p in self.model.params.items():
                        g = p.grad if p.grad is not None else torch.zeros_like(p)
                        new = p - (self.opt.lr * factor).view(-1, *([1] * (p.dim() - 1))) * (
                            g + self.opt.weight_decay.view(-1, *([1] * (p.dim() - 1))) * p
                        )
                        p.copy_(torch.where(masks[k], new, p) if masks is not None else new)
            else:
                self.opt.step(factor, masks)
            sum_loss += ce.detach()
            sum_bal += bal.detach()
        if self.adapters is not None:
            self.adapters.ctx.training = False
            self.adapters.freeze_most_used(self.cfg.freeze_top)
        return sum_loss / self.iters, sum_bal / self.iters

    @torch.no_grad()
    def frozen_features(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, e]`` frozen CLIP image embeddings (no adapters), in eval batches."""
        out = []
        for i in range(0, images.shape[0], self.p.eval_batch):
            x = normalise_images(images[i : i + self.p.eval_batch][None], self.arch.image_size)
            out.append(encode_image(x, self.frozen, self.arch)[0])
        return torch.cat(out)

    # ---- evaluation --------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, n_tasks: int, trained: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-task accuracy ``[S, n_tasks]`` over the first n_tasks tasks (argmax over their classes),
        the DDAS zero-shot fraction and route accuracy ``[S]``."""
        s, c = self.streams.n, self.c
        n_cls = n_tasks * c
        x = self.test_x[:n_cls]
        n_per = x.shape[1]
        x = x.reshape(n_cls * n_per, *x.shape[2:])
        y = torch.arange(n_cls, device=self.device).repeat_interleave(n_per)
        use = trained and self.adapters is not None
        tokens = self.tokens[:n_cls].expand(s, -1, -1)
        ddas = use and self.cfg.ddas != "off"
        ad = self.adapters
        if ad is not None:
            ad.ctx.training, ad.ctx.noise, ad.ctx.probe = False, self.cfg.noise_at_test, use
            ad.reset_active()
        n_routes = (n_tasks if self.cfg.routers == "per_task" else 1) if use else 0
        txt_by_route = []  # route -1 (zero-shot) first, then each router
        w = self.weights()
        txt_by_route.append(F.normalize(encode_text(tokens, w, self.arch, None), dim=-1))
        for r in range(n_routes):
            ad.ctx.route, ad.ctx.step = r, 0
            txt_by_route.append(F.normalize(encode_text(tokens, w, self.arch, ad), dim=-1))
        txt = torch.stack(txt_by_route, dim=1)  # [S, 1 + R, C, e]
        correct = torch.zeros(s, n_cls * n_per, device=self.device)
        zero_shot = torch.zeros(s, device=self.device)
        routed_right = torch.zeros(s, device=self.device)
        for bi, i in enumerate(range(0, x.shape[0], self.p.eval_batch)):
            xb = x[i : i + self.p.eval_batch]
            yb = y[i : i + self.p.eval_batch]
            images = normalise_images(xb[None].expand(s, *xb.shape), self.arch.image_size)
            if ddas:
                errs = self.ae.errors(self.frozen_features(xb), n_tasks)
                route = select_routes(errs, self.cfg.ddas_threshold, self.cfg.ddas)
                zero_shot += (route < 0).sum(1)
                routed_right += (route == (yb // c)[None]).sum(1)
            elif use:
                route = torch.zeros(s, xb.shape[0], dtype=torch.int64, device=self.device)
            else:
                route = torch.full((s, xb.shape[0]), -1, dtype=torch.int64, device=self.device)
            if ad is not None and use:
                ad.ctx.route, ad.ctx.step = route, bi
            img = F.normalize(encode_image(images, w, self.arch, ad if use else None), dim=-1)
            t = torch.gather(
                txt, 1, (route + 1)[:, :, None, None].expand(-1, -1, *txt.shape[2:])
            )  # [S, B, C, e]
            logits = torch.einsum("sbe,sbce->sbc", img, t)
            correct[:, i : i + xb.shape[0]] = (logits.argmax(-1) == yb[None]).to(correct.dtype)
        if ad is not None:
            ad.ctx.probe = False
        per_task = correct.view(s, n_tasks, c * n_per).mean(-1)
        total = float(x.shape[0])
        return per_task.double(), zero_shot / total, routed_right / total

    # ---- the unit ----------------------------------------------------------------------------------
    def train_unit(self, unit: int) -> list[MetricBlock]:
        out: list[MetricBlock] = []
        if unit == 0:
            acc0, _, _ = self.evaluate(1, trained=False)
            self.acc[:, 0, 0] = acc0[:, 0]
            out.append(self.metric("test_accuracy/task_1", 0, acc0[:, 0]))
        out += self.train_metrics(unit)
        if self.cfg.ddas != "off":
            feats = self.frozen_features(self.train_x[unit * self.c : (unit + 1) * self.c].flatten(0, 1))
            steps = self.cfg.ddas_steps_first if unit == 0 else self.cfg.ddas_steps
            self.ae.train_task(unit, feats, steps=steps)
        acc, zs, rr = self.evaluate(unit + 1, trained=True)
        self.acc[:, unit + 1, : unit + 1] = acc
        for j in range(unit + 1):
            out.append(self.metric(f"test_accuracy/task_{j + 1}", unit + 1, acc[:, j]))
        seen = acc.mean(1)
        out.append(self.metric("seen_accuracy", unit + 1, seen))
        if self.cfg.ddas != "off":
            out.append(self.metric("ddas_zero_shot_fraction", unit + 1, zs))
            out.append(self.metric("ddas_route_accuracy", unit + 1, rr))
        out += self.adapter_metrics(unit + 1)
        if unit + 1 == self.n_units:
            seen_rows = torch.nanmean(self.acc[:, 1:, :], dim=2)  # A_k, equal tasks
            out.append(self.metric("avg_accuracy", unit + 1, seen_rows.mean(1)))
            out.append(self.metric("last_accuracy", unit + 1, self.acc[:, -1, :].mean(1)))
        return out


def build(problem: MoECifarProblem, runs: Sequence[RunSpec], device: torch.device) -> Trainer:
    for r in runs:
        check_zero_shot(r)
    return MoECifarTrainer(problem, runs, device)


SUPPORTS = frozenset({"optimizer", "lr", "betas", "eps", "weight_decay", "moe_adapters"})


def _spec(name: str, problem_cls: type, steps: int) -> ExperimentSpec:
    return ExperimentSpec(
        name=name,
        problem_cls=problem_cls,
        build=build,
        description=f"Class-incremental CIFAR-100 in {steps} steps on a frozen CLIP with MoE adapters (Yu et al. 2024)",
        needs_data=("cifar100",),
        supports=SUPPORTS,
    )


EXPERIMENT = _spec("moe_cifar", MoECifarProblem, 10)
EXPERIMENTS = [_spec("moe_cifar_20", MoECifar20Problem, 20), _spec("moe_cifar_50", MoECifar50Problem, 50)]
