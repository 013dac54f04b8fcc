"""Mixture-of-experts adapters with task routers on a frozen CLIP (Yu et al., CVPR 2024), seed-batched.

Every residual block of both encoders gets E experts and, per router, a gate (docs/protocols/moe_cifar.md).
For the post-attention stream x ``[S, B, T, d]`` of block l (`lop.nets.clip.transformer` adds the result
to the block's output, next to the MLP):

    A_e(x)   = scale · (W_up,e · drop(ReLU(W_down,e x + b_down,e)) + b_up,e)     bottleneck r (64), scale 0.1
    logits   = c · W_g[router]                   c = x[:, :, 0] (class token / start-of-text position)
             + N(0, 1) · (softplus(c · W_n[router]) + 0.01)      noisy gating: training only (unless
                                                                  `noise_at_test`, the public CIL code's bug)
    g        = softmax over the top-k logits, 0 elsewhere        [S, B, E]
    adapter  = Σ_e g_e · A_e(x)

Initialisation: W_down kaiming-uniform with a = √5 (U(±1/√d)), W_up, both biases and both router matrices
zero (so every adapter starts as the identity map of CLIP).

Load balancing (Shazeer et al. 2017): per block, importance_e = Σ_b g_be and load_e = #{b: g_be > 0};
loss = Σ_blocks cv²(importance) + cv²(load), cv²(v) = Var(v) / (mean(v)² + 1e-10) (load is a count: it
carries no gradient). The trainer multiplies it by the method's `balance_weight`.

Activate-freeze: `usage` counts, per run, encoder, block and expert, how often the expert was among the
top-k while training the current task; `freeze_most_used` adds the `n` most used experts of every block to
`frozen`, whose parameters `restore_frozen` keeps fixed in later tasks.

Routes: ``route`` is one router index for the whole batch or an ``[S, B]`` tensor (per sample, DDAS);
a route of −1 means "no adapters" (zero-shot CLIP) for that sample.

Random numbers: streams ``moe/noise/<encoder>/<block>`` and ``moe/dropout/<encoder>/<block>``, counter =
the training step (test-time noise: ``moe/noise/<encoder>/<block>/test``, counter = the evaluation
batch), so a run's draws do not depend on its batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lop.nets.clip import ClipArch
from lop.rng import RunStreams

ENCODERS = ("visual", "text")


@dataclass
class RouteContext:
    """How the next forward pass routes: router index (int) or per-sample ``[S, B]`` routes, training
    mode (noise, dropout, usage counts, balance loss) and the step counter of the random streams."""

    route: int | torch.Tensor = 0
    training: bool = False
    step: int = 0
    noise: bool = False
    probe: bool = False  # record which bottleneck units fire (`active`, a plasticity probe)


def cv_squared(v: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation over the last axis: Var(v) / (mean(v)² + 1e-10) (0 for one expert)."""
    if v.shape[-1] < 2:
        return torch.zeros(v.shape[:-1], device=v.device)
    return v.float().var(dim=-1) / (v.float().mean(dim=-1) ** 2 + 1e-10)


def top_k_gates(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Softmax over the k largest logits of the last axis, zeros elsewhere (ties: lowest index first)."""
    top, idx = logits.topk(k, dim=-1)
    return torch.zeros_like(logits).scatter(-1, idx, torch.softmax(top, dim=-1))


class MoEAdapters:
    """Experts and routers of both encoders for S runs: parameters ``[S, L, E, ...]`` and ``[S, R, L, d, E]``."""

    def __init__(
        self,
        streams: RunStreams,
        arch: ClipArch,
        *,
        n_experts: int,
        top_k: int,
        n_routers: int,
        bottleneck: int = 64,
        scale: float = 0.1,
        dropout: float = 0.1,
    ) -> None:
        self.streams, self.arch = streams, arch
        self.n_experts, self.top_k, self.n_routers = n_experts, top_k, n_routers
        self.bottleneck, self.scale, self.dropout = bottleneck, scale, dropout
        s, e, r, dev = streams.n, n_experts, bottleneck, streams.device
        self.params: dict[str, torch.Tensor] = {}
        self.usage: dict[str, torch.Tensor] = {}
        self.frozen: dict[str, torch.Tensor] = {}
        self.active: dict[str, torch.Tensor] = {}
        for enc in ENCODERS:
            n_layers, d = arch.layers(enc), arch.width(enc)
            bound = 1.0 / math.sqrt(d)  # kaiming_uniform(a=√5): gain √(1/3) · √(3/fan_in)
            self.params[f"{enc}.down.weight"] = streams.uniform(f"moe_init/{enc}/down", 0, (n_layers, e, d, r), -bound, bound)
            self.params[f"{enc}.down.bias"] = torch.zeros(s, n_layers, e, r, device=dev)
            self.params[f"{enc}.up.weight"] = torch.zeros(s, n_layers, e, r, d, device=dev)
            self.params[f"{enc}.up.bias"] = torch.zeros(s, n_layers, e, d, device=dev)
            self.params[f"{enc}.router.gate"] = torch.zeros(s, n_routers, n_layers, d, e, device=dev)
            self.params[f"{enc}.router.noise"] = torch.zeros(s, n_routers, n_layers, d, e, device=dev)
            self.usage[enc] = torch.zeros(s, n_layers, e, device=dev)
            self.frozen[enc] = torch.zeros(s, n_layers, e, dtype=torch.bool, device=dev)
            self.active[enc] = torch.zeros(s, n_layers, e, r, dtype=torch.bool, device=dev)
        for p in self.params.values():
            p.requires_grad_(True)
        self.ctx = RouteContext()
        self.balance: list[torch.Tensor] = []

    # ---- forward hook ------------------------------------------------------------------------------
    def _router_weights(self, name: str, layer: int, route: int | torch.Tensor) -> torch.Tensor:
        """``[S, d, E]`` (one router) or ``[S, B, d, E]`` (per-sample routes; −1 reads router 0, masked later)."""
        w = self.params[name][:, :, layer]  # [S, R, d, E]
        if isinstance(route, int):
            return w[:, route]
        idx = route.clamp(min=0)
        return torch.gather(w, 1, idx[:, :, None, None].expand(-1, -1, *w.shape[2:]))

    def _logits(self, c: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.bmm(c, w) if w.dim() == 3 else torch.einsum("sbd,sbde->sbe", c, w)

    def gates(self, enc: str, layer: int, c: torch.Tensor) -> torch.Tensor:
        """Gates ``[S, B, E]`` of block `layer` of encoder `enc` for the routing token c ``[S, B, d]``."""
        ctx = self.ctx
        logits = self._logits(c, self._router_weights(f"{enc}.router.gate", layer, ctx.route))
        if ctx.noise:
            std = F.softplus(self._logits(c, self._router_weights(f"{enc}.router.noise", layer, ctx.route))) + 0.01
            phase = "" if ctx.training else "/test"  # test-time noise (noise_at_test) on its own streams
            z = self.streams.normal(f"moe/noise/{enc}/{layer}{phase}", ctx.step, tuple(logits.shape[1:]))
            logits = logits + z * std
        g = top_k_gates(logits, self.top_k)
        if isinstance(ctx.route, torch.Tensor):
            g = g * (ctx.route >= 0).unsqueeze(-1).to(g.dtype)
        return g

    def __call__(self, enc: str, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Σ_e g_e · A_e(x) for x ``[S, B, T, d]`` (the hook `lop.nets.clip.transformer` calls)."""
        ctx = self.ctx
        s, b, t, d = x.shape
        e, r = self.n_experts, self.bottleneck
        g = self.gates(enc, layer, x[:, :, 0])  # [S, B, E]
        if ctx.training:
            with torch.no_grad():
                self.usage[enc][:, layer] += (g > 0).sum(dim=1).to(self.usage[enc].dtype)
            self.balance.append(cv_squared(g.sum(dim=1)) + cv_squared((g > 0).sum(dim=1).float()))
        wd = self.params[f"{enc}.down.weight"][:, layer]  # [S, E, d, r]
        h = torch.bmm(x.reshape(s, b * t, d), wd.permute(0, 2, 1, 3).reshape(s, d, e * r))
        h = F.relu(h.view(s, b, t, e, r) + self.params[f"{enc}.down.bias"][:, layer][:, None, None])
        if ctx.probe:
            with torch.no_grad():
                self.active[enc][:, layer] |= (h > 0).flatten(1, 2).any(dim=1)
        if ctx.training and self.dropout > 0:
            keep = self.streams.bernoulli(f"moe/dropout/{enc}/{layer}", ctx.step, (b, t, e, r), 1.0 - self.dropout)
            h = h * keep.to(h.dtype) / (1.0 - self.dropout)
        h = h * g[:, :, None, :, None]  # gate folded in before the up-projection
        wu = self.params[f"{enc}.up.weight"][:, layer].reshape(s, e * r, d)
        out = torch.bmm(h.reshape(s, b * t, e * r), wu).view(s, b, t, d)
        out = out + torch.bmm(g, self.params[f"{enc}.up.bias"][:, layer]).unsqueeze(2)
        return self.scale * out

    def take_balance_loss(self) -> torch.Tensor:
        """``[S]``: the summed load-balancing terms of the forward passes since the last call."""
        out = torch.stack(self.balance).sum(0) if self.balance else torch.zeros(self.streams.n, device=self.streams.device)
        self.balance = []
        return out

    # ---- activate-freeze --------------------------------------------------------------------------
    @torch.no_grad()
    def freeze_most_used(self, n: int) -> None:
        """Add the `n` most used experts of every block (this task's `usage`) to `frozen`; reset `usage`."""
        for enc in ENCODERS:
            if n > 0:
                top = self.usage[enc].topk(min(n, self.n_experts), dim=-1).indices
                self.frozen[enc].scatter_(-1, top, True)
            self.usage[enc].zero_()

    def trainable_masks(self, router: int | None) -> dict[str, torch.Tensor]:
        """Per parameter, a mask broadcastable to it: True where it may change (experts not frozen; only
        router `router`, or none)."""
        out: dict[str, torch.Tensor] = {}
        for enc in ENCODERS:
            free = ~self.frozen[enc]  # [S, L, E]
            out[f"{enc}.down.weight"] = free[..., None, None]
            out[f"{enc}.down.bias"] = free[..., None]
            out[f"{enc}.up.weight"] = free[..., None, None]
            out[f"{enc}.up.bias"] = free[..., None]
            sel = torch.zeros(self.n_routers, dtype=torch.bool, device=free.device)
            if router is not None:
                sel[router] = True
            for kind in ("gate", "noise"):
                out[f"{enc}.router.{kind}"] = sel[None, :, None, None, None]
        return out

    # ---- probes and state --------------------------------------------------------------------------
    @torch.no_grad()
    def dormant_fraction(self) -> torch.Tensor:
        """``[S]`` fraction of bottleneck units (all blocks, experts, both encoders) that were zero on every
        token seen since the last `reset_active` while ``ctx.probe`` was on (dormant units)."""
        act = torch.cat([self.active[enc].flatten(1) for enc in ENCODERS], dim=1)
        return 1.0 - act.float().mean(1)

    def reset_active(self) -> None:
        for v in self.active.values():
            v.zero_()

    @torch.no_grad()
    def weight_magnitude(self) -> torch.Tensor:
        """``[S]`` mean |θ| over the expert parameters (a plasticity probe)."""
        names = [k for k in self.params if ".router." not in k]
        total = sum(self.params[k].abs().flatten(1).sum(1) for k in names)
        count = sum(self.params[k][0].numel() for k in names)
        return total / count

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {
            "params": self.params,
            "usage": self.usage,
            "frozen": self.frozen,
        }

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        with torch.no_grad():
            for group in ("params", "usage", "frozen"):
                for k, v in getattr(self, group).items():
                    v.copy_(state[group][k])
