"""Diagonal Fisher information estimators for EWC, seed-batched.

F_k = (1/N) Σ_{i=1..N} w_i·(∂ log p(ŷ_i | x_i) / ∂θ_k)² over N examples of the finished task, per run:

* ``exact``      Σ over every output class c with weight p(c | x_i) (the expectation over the model's
                 predictive distribution, computed exactly);
* ``sample``     one label ŷ_i ~ p(· | x_i) per example (drawn from `lop.rng`, keyed by example index);
* ``empirical``  the true label ŷ_i = y_i;
* ``pred``       the predicted label ŷ_i = argmax_c p(c | x_i);
* ``batched``    (1/K) Σ_k (∂ (1/|B_k|) Σ_{i∈B_k} log p(y_i | x_i) / ∂θ)² over K minibatches of
                 ``fisher_batch`` examples with their true labels: the square of the mean gradient,
                 a cheap and biased estimate (as in Avalanche).

Per-example gradients come from one forward pass per chunk of examples and one vectorised backward
pass over one-hot output selections (``torch.autograd.grad(..., is_grads_batched=True)``): selection
k picks (example b, class c) with weight √p (exact) or 1 (the single-label estimators), so its
vector–Jacobian product is the per-example gradient of that log-probability, and the squares are
summed. The chunk size depends only on the parameters per run, never on the batch of runs, so a
run's Fisher does not depend on which runs share its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from lop.rng import RunStreams

# per-run elements held by one chunk's batched gradients (selections × parameters per run), and the
# most selections (backward passes) one vectorised backward takes
CHUNK_ELEMENTS = 1 << 23
MAX_SELECTIONS = 64

Batches = Callable[[int, int], Iterator[tuple[torch.Tensor, torch.Tensor]]]
LogProbs = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _per_run_numel(params: list[torch.Tensor]) -> int:
    return sum(p[0].numel() for p in params)


def chunk_size(params: list[torch.Tensor], selections_per_example: int) -> int:
    """Examples per chunk such that the batched gradients hold about `CHUNK_ELEMENTS` values per run."""
    by_memory = CHUNK_ELEMENTS // (selections_per_example * _per_run_numel(params))
    return max(1, min(MAX_SELECTIONS // selections_per_example, by_memory))


def _sample_labels(
    p: torch.Tensor, streams: RunStreams, task: int, offset: int, n_total: int
) -> torch.Tensor:
    """ŷ ~ p per example by inverse CDF, uniforms keyed by (task, example index): ``[S, B]``."""
    u = streams.uniform("ewc/fisher_label", task, (n_total,), dtype=torch.float64)[:, offset : offset + p.shape[1]]
    cdf = p.double().cumsum(-1)
    target = u * cdf[..., -1]
    return (cdf <= target.unsqueeze(-1)).sum(-1).clamp_(max=p.shape[-1] - 1)


def _accumulate_batched_vjp(
    logp: torch.Tensor,
    sel: torch.Tensor,
    params: list[torch.Tensor],
    fisher: list[torch.Tensor],
    weight: torch.Tensor | None = None,
) -> None:
    """fisher += Σ_k (vjp(logp, sel[k]))² (sel ``[K, S, B, C]``). The sum over k is accumulated one k
    at a time (in place, no temporaries of the size of the batched gradients, and in the same order
    for any S: a reduction over the leading dimension of ``[K, S, ...]`` may be blocked differently
    for another S and round differently, breaking batch independence)."""
    grads = torch.autograd.grad(logp, params, grad_outputs=sel, is_grads_batched=True, allow_unused=True)
    for f, g in zip(fisher, grads, strict=True):
        if g is not None:
            for gk in g:
                f.addcmul_(gk, gk)


def diagonal_fisher(
    estimator: str,
    n: int,
    batches: Batches,
    log_probs: LogProbs,
    params: list[torch.Tensor],
    streams: RunStreams,
    task: int,
    fisher_batch: int = 128,
) -> list[torch.Tensor]:
    """The diagonal Fisher ``[S, ...]`` per parameter from (up to) `n` examples of the finished task."""
    fisher = [torch.zeros_like(p, dtype=torch.float32, memory_format=torch.contiguous_format) for p in params]
    count = 0
    if estimator == "batched":
        for x, y in batches(n, fisher_batch):
            logp = log_probs(x, y)
            mean = logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(1).sum()
            grads = torch.autograd.grad(mean, params, allow_unused=True)
            for f, g in zip(fisher, grads, strict=True):
                if g is not None:
                    f.add_(g.detach().float().square())
            count += 1
        return [f / max(count, 1) for f in fisher]
    offset = 0
    if estimator == "exact":
        x0, y0 = next(iter(batches(1, 1)))
        with torch.no_grad():
            n_classes = log_probs(x0[:, :1], y0[:, :1]).shape[-1]
        step = chunk_size(params, n_classes)
    else:
        step = chunk_size(params, 1)
    for x, y in batches(n, step):
        logp = log_probs(x, y)
        s, b, c = logp.shape
        if estimator == "exact":
            p = logp.detach().exp()
            # selections (example j, class k) with weight √p(k | x_j), over the classes some example of
            # the chunk may use (the scenario's mask gives the others p = 0)
            classes = torch.nonzero((p > 0).flatten(0, 1).any(0)).flatten()
            k = len(classes)
            sel = torch.zeros(b, k, s, b, c, dtype=logp.dtype, device=logp.device)
            jj = torch.arange(b, device=logp.device).view(b, 1)
            kk = torch.arange(k, device=logp.device).view(1, k)
            sel[jj, kk, :, jj, classes.view(1, k)] = p[:, :, classes].sqrt().permute(1, 2, 0)
            _accumulate_batched_vjp(logp, sel.flatten(0, 1), params, fisher)
        else:
            if estimator == "empirical":
                label = y
            elif estimator == "pred":
                label = logp.detach().argmax(-1)
            elif estimator == "sample":
                label = _sample_labels(logp.detach().exp(), streams, task, offset, n)
            else:
                raise ValueError(f"unknown Fisher estimator {estimator!r}")
            sel = torch.zeros(b, s, b, c, dtype=logp.dtype, device=logp.device)
            idx = torch.arange(b, device=logp.device)
            sel[idx, :, idx] = torch.nn.functional.one_hot(label, c).to(logp.dtype).transpose(0, 1)
            _accumulate_batched_vjp(logp, sel, params, fisher)
        offset += b
        count += b
    return [f / max(count, 1) for f in fisher]
