"""What the CLIP + mixture-of-experts adapter experiments share (`lop.experiments.moe_cifar`,
`lop.experiments.moe_mtil`; docs/protocols/moe_cifar.md, docs/protocols/moe_mtil.md).

`ClipAdapterTrainer` holds the common setup of both trainers: one adapter configuration per batch (runs
may differ only in ``balance_weight``), the frozen CLIP backbone shared by the runs (random ``tiny`` or
loaded weights), the prompt tokenizer, the trained tensors of the method's ``mode`` (adapters with
per-task or shared routers, every backbone tensor for ``full_finetune``, none for ``zero_shot``),
AdamW, the DDAS task autoencoders and the ``[S, T+1, T]`` accuracy matrix (row t: after t tasks).
Random draws happen in this order: adapters, then autoencoders, each from the runs' `RunStreams`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lop.algos.adamw import RunAdamW
from lop.algos.ddas import TaskAutoencoders
from lop.config import MoEAdaptersConfig
from lop.errors import ConfigError
from lop.experiments.base import MetricBlock, RunSpec, Trainer, set_method_keys
from lop.experiments.schemas import MoECifarProblem, MoEMtilProblem
from lop.nets.clip import ARCHS, load_clip_state, random_clip_state
from lop.nets.clip_tokenizer import BPETokenizer, ByteTokenizer
from lop.nets.moe_adapters import MoEAdapters
from lop.rng import RunStreams


def cosine_factor(step: int, total: int, warmup: int) -> float:
    """Step-size factor: linear warm-up (step+1)/warmup for `warmup` steps, then ½(1 + cos(π·p)) with p
    the fraction of the remaining steps done."""
    if step < warmup:
        return (step + 1) / warmup
    rest = max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / rest))


class TensorHolder:
    """A named set of tensors with `state_dict`/`load_state_dict` (checkpointing of trainable tensors)."""

    def __init__(self, tensors: dict[str, torch.Tensor] | None = None) -> None:
        self.params = tensors or {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.params

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for k, v in self.params.items():
                v.copy_(state[k])


def check_zero_shot(run: RunSpec) -> MoEAdaptersConfig:
    """The run's adapter configuration (unset = defaults). ``mode: zero_shot`` trains nothing: a method
    that also sets optimiser keys is a `ConfigError`."""
    cfg = run.config.moe_adapters or MoEAdaptersConfig()
    extra = [k for k in set_method_keys(run.config) if k != "moe_adapters"]
    if cfg.mode == "zero_shot" and extra:
        raise ConfigError(
            f"methods.{run.method}.{extra[0]}",
            "mode: zero_shot trains nothing, so optimiser settings would be ignored; remove them",
        )
    return cfg


class ClipAdapterTrainer(Trainer):
    """Base of the MoE-adapter trainers; unit = one task. A subclass calls `setup_backbone`, loads its
    data (no random draws), sets ``n_units`` (the number of tasks T) and calls `setup_model`."""

    unit_name = "task"
    state_attrs = ("model", "opt", "ae", "acc")

    def setup_backbone(
        self, problem: MoECifarProblem | MoEMtilProblem, runs: Sequence[RunSpec], device: torch.device
    ) -> tuple[list[MoEAdaptersConfig], ByteTokenizer | BPETokenizer]:
        """Check that the runs share one adapter architecture, create the run streams and the frozen
        backbone; returns the runs' configurations and the prompt tokenizer."""
        cfgs = [r.config.moe_adapters or MoEAdaptersConfig() for r in runs]
        for k, c in enumerate(cfgs[1:], 1):
            differ = [
                f
                for f in c.__dataclass_fields__
                if f != "balance_weight" and getattr(c, f) != getattr(cfgs[0], f)
            ]
            if differ:
                raise ConfigError(
                    f"runs ({runs[0].setting_id!r} vs {runs[k].setting_id!r}).moe_adapters.{differ[0]}",
                    "runs of one batch must share the adapter architecture; set pack_settings: false",
                )
        self.cfg = cfgs[0]
        self.device = device
        self.streams = RunStreams([r.seed for r in runs], device)
        self.arch = ARCHS[problem.backbone]
        if problem.backbone == "tiny":
            frozen = random_clip_state(self.arch, problem.backbone_seed)
        else:
            frozen = load_clip_state(problem.weights, self.arch)
        self.frozen = {k: v.to(device) for k, v in frozen.items()}
        tok = ByteTokenizer() if problem.tokenizer == "bytes" else BPETokenizer(problem.vocab)
        if tok.vocab_size > self.arch.vocab_size:
            raise ConfigError(
                "problem.tokenizer",
                f"vocabulary of {tok.vocab_size} tokens exceeds the backbone's {self.arch.vocab_size}",
            )
        return cfgs, tok

    def setup_model(self, runs: Sequence[RunSpec], cfgs: Sequence[MoEAdaptersConfig]) -> None:
        """The trained tensors of ``cfg.mode``, AdamW (per-run lr and weight decay), the DDAS
        autoencoders (one per task) and the accuracy matrix, for ``self.n_units`` tasks."""
        s, t, cfg, device = len(runs), self.n_units, self.cfg, self.device
        lr = torch.tensor([r.config.lr for r in runs], device=device)
        wd = torch.tensor([r.config.weight_decay for r in runs], device=device)
        self.balance_weight = torch.tensor([c.balance_weight for c in cfgs], device=device)
        self.adapters: MoEAdapters | None = None
        if cfg.mode == "adapters":
            self.adapters = MoEAdapters(
                self.streams,
                self.arch,
                n_experts=cfg.experts,
                top_k=cfg.top_k,
                n_routers=t if cfg.routers == "per_task" else 1,
                bottleneck=cfg.bottleneck,
                scale=cfg.scale,
                dropout=cfg.dropout,
            )
            self.model: MoEAdapters | TensorHolder = self.adapters  # params, usage counts, frozen experts
        elif cfg.mode == "full_finetune":
            per_run = {
                k: v.expand(s, *v.shape).clone().requires_grad_(True)
                for k, v in self.frozen.items()
                if k != "logit_scale"
            }
            self.model = TensorHolder(per_run)
        else:
            self.model = TensorHolder()
        c0 = runs[0].config
        self.opt = RunAdamW(self.model.params, lr, c0.betas, c0.eps, wd)
        self.ae = (
            TaskAutoencoders(self.streams, t, self.arch.embed_dim) if cfg.ddas != "off" else TensorHolder()
        )
        self.acc = torch.full((s, t + 1, t), float("nan"), dtype=torch.float64, device=device)
        self.init_divergence(s, device)

    def backward_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, unit: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per run, L = CE(logits ``[S, B, C]``, labels ``[S, B]``; label smoothing ``cfg.label_smoothing``,
        mean over the batch) + balance_weight · balance loss of the adapters (0 without adapters); runs whose
        L is not finite are marked diverged at step ``unit + 1`` and get no gradient. Clears the trained
        tensors' gradients, back-propagates ΣL and returns (CE, balance loss) ``[S]``."""
        ce = (
            F.cross_entropy(
                logits.flatten(0, 1),
                labels.flatten(),
                reduction="none",
                label_smoothing=self.cfg.label_smoothing,
            )
            .view(labels.shape[0], -1)
            .mean(1)
        )
        bal = self.adapters.take_balance_loss() if self.adapters is not None else torch.zeros_like(ce)
        loss = ce + self.balance_weight * bal
        bad = ~torch.isfinite(loss)
        self.mark_diverged(bad, unit + 1)
        for p in self.model.params.values():
            p.grad = None
        torch.where(bad, torch.zeros_like(loss), loss).sum().backward()
        return ce, bal

    def train_task(self, u: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Train task ``u``; returns the mean training loss and balance loss ``[S]`` (subclasses)."""
        raise NotImplementedError

    def train_metrics(self, unit: int) -> list[MetricBlock]:
        """Train task ``unit`` unless ``mode: zero_shot``: ``train_loss`` and ``balance_loss`` at step
        ``unit + 1``."""
        if self.cfg.mode == "zero_shot":
            return []
        loss, bal = self.train_task(unit)
        return [self.metric("train_loss", unit + 1, loss), self.metric("balance_loss", unit + 1, bal)]

    def adapter_metrics(self, step: int) -> list[MetricBlock]:
        """``adapter_weight_magnitude`` (mean |θ| over every element of the trained tensors, per run) when
        anything is trained, and ``adapter_dormant_units`` with adapters."""
        out = []
        if self.model.params:
            with torch.no_grad():
                mags = [p.abs().flatten(1).mean(1) for p in self.model.params.values()]
                sizes = [p[0].numel() for p in self.model.params.values()]
                mag = sum(m * n for m, n in zip(mags, sizes)) / sum(sizes)
            out.append(self.metric("adapter_weight_magnitude", step, mag))
        if self.adapters is not None:
            out.append(self.metric("adapter_dormant_units", step, self.adapters.dormant_fraction()))
        return out

    def weights(self) -> dict[str, torch.Tensor]:
        """The backbone tensors the forward pass uses: the frozen ones, with the trained copies over them
        under ``full_finetune``."""
        return {**self.frozen, **self.model.params} if self.cfg.mode == "full_finetune" else self.frozen

    def logit_scale(self) -> torch.Tensor:
        return self.frozen["logit_scale"].exp()

    def model_state(self) -> dict[str, torch.Tensor]:
        return dict(self.model.params)
