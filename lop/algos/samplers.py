"""Samplers of compute-budgeted continual learning: which stored examples a budgeted batch is drawn from
(docs/protocols/budgeted_cl.md).

The storage of a run holds every example seen so far, in arrival order: positions ``0..N-1`` of a
``[S, N]`` table of labels (pretraining data first, then the stream). A sampler turns it into the
indices of the examples a step trains on. Everything is seed-batched (``[S, ...]``), every random
number comes from `lop.rng` at a counter derived from (step, iteration), and nothing loops over runs.

*Static* samplers give a distribution ``p [S, N]`` over the storage, and batches are drawn from it
with replacement (inverse CDF of uniform draws, `draw_from`):

* ``uniform``         p_i = 1/N (the naive baseline);
* ``class_balanced``  p_i ∝ 1/n_{y_i}, n_c the number of stored examples of class c: every class is
                      equally likely (the direction the method intends; the public code used ∝ n_c);
* ``fifo``            uniform over the last k stored examples (k = ``window``, 0 = the number of
                      examples the step trains on): a last-k / first-in-first-out window;
* ``recency``         p_i ∝ exp(−decay · age_i / n_new), age_i = N − 1 − i in examples and n_new the
                      examples that arrived this step: the newest step weighs e^decay times the previous.

*Coreset* samplers look at the network's penultimate features of a candidate pool (``candidates`` ×
the examples the step trains on, drawn uniformly without replacement) and keep, per class, the
fraction ``keep`` of its candidates; batches are drawn uniformly from what is kept:

* ``herding``  the first ⌈keep·n_c⌉ examples of the class in herding order (Welling 2009; iCaRL): on
               L2-normalised features f, step k picks argmin_i ‖μ_c − (Σ_{j<k} f_j + f_i)/k‖;
* ``kmeans``   ``clusters`` centres per class (Lloyd's algorithm, 10 iterations, centres started at the
               class's first candidates), keeping the candidates nearest to their centre.

*Scoring* samplers score ``candidates`` uniform draws per trained example with a forward pass of the
current network and train on the top ones of each batch:

* ``max_loss``     the highest cross-entropy −log p(y | x);
* ``uncertainty``  the lowest max-softmax probability (least confidence).
"""

from __future__ import annotations

import math

import torch

from lop.config import SamplerConfig
from lop.rng import RunStreams

STATIC = ("uniform", "class_balanced", "fifo", "recency")
CORESET = ("herding", "kmeans")
SCORING = ("max_loss", "uncertainty")
KMEANS_ITERATIONS = 10


def class_counts(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``[S, n_classes]`` float64 count of each label in ``labels [S, N]``."""
    out = torch.zeros(labels.shape[0], n_classes, dtype=torch.float64, device=labels.device)
    return out.scatter_add_(1, labels, torch.ones_like(labels, dtype=torch.float64))


def static_probs(cfg: SamplerConfig, labels: torch.Tensor, n_classes: int, n_new: int, n_train: int) -> torch.Tensor:
    """The distribution ``[S, N]`` (float64, rows sum to 1) of a static sampler over the storage."""
    s, n = labels.shape
    dev = labels.device
    if cfg.kind == "uniform":
        w = torch.ones(s, n, dtype=torch.float64, device=dev)
    elif cfg.kind == "class_balanced":
        counts = class_counts(labels, n_classes)
        w = 1.0 / counts.gather(1, labels)
    elif cfg.kind == "fifo":
        k = min(n, cfg.window or n_train)
        w = (torch.arange(n, device=dev) >= n - k).to(torch.float64).expand(s, n)
    elif cfg.kind == "recency":
        age = (n - 1 - torch.arange(n, device=dev)).to(torch.float64)
        w = torch.exp(-cfg.decay * age / max(n_new, 1)).expand(s, n)
    else:
        raise ValueError(f"{cfg.kind!r} is not a static sampler; static ones are {STATIC}")
    return w / w.sum(1, keepdim=True)


def draw_from(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Indices ``[S, B]`` drawn from ``probs [S, N]`` with the uniforms ``u [S, B]`` (inverse CDF)."""
    cdf = probs.cumsum(1)
    target = u.to(torch.float64) * cdf[:, -1:]
    return torch.searchsorted(cdf, target, right=True).clamp_(max=probs.shape[1] - 1)


def draw(streams: RunStreams, counter: int, probs: torch.Tensor, b: int) -> torch.Tensor:
    """``[S, b]`` storage positions from ``probs`` (stream ``sampler/draw`` at ``counter``)."""
    return draw_from(probs, streams.uniform("sampler/draw", counter, (b,)))


# ---- coresets ---------------------------------------------------------------------------------------
def _by_class(labels: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(order ``[S, P]`` that sorts the pool by class (stable), class start ``[S, C]``, count ``[S, C]``)."""
    order = torch.sort(labels, dim=1, stable=True).indices
    counts = class_counts(labels, n_classes).to(torch.int64)
    starts = counts.cumsum(1) - counts
    return order, starts, counts


def herding_keep(features: torch.Tensor, labels: torch.Tensor, n_classes: int, keep: float) -> torch.Tensor:
    """``[S, P]`` bool: the first ⌈keep·n_c⌉ candidates of each class in herding order.

    features ``[S, P, D]`` (normalised here), labels ``[S, P]``. Greedy selection, all classes and runs at
    once: at step k every class picks the unselected candidate i maximising ⟨μ_c − Σ_c/k, f_i⟩, which is
    argmin_i ‖μ_c − (Σ_c + f_i)/k‖ for unit-norm f (Σ_c the sum of the features picked so far).
    """
    s, p, _ = features.shape
    f = torch.nn.functional.normalize(features.to(torch.float64), dim=-1)
    onehot = torch.nn.functional.one_hot(labels, n_classes).to(torch.float64)  # [S, P, C]
    counts = onehot.sum(1)  # [S, C]
    mu = torch.bmm(onehot.transpose(1, 2), f) / counts.clamp(min=1).unsqueeze(-1)  # [S, C, D]
    quota = torch.ceil(keep * counts).to(torch.int64)  # [S, C]
    chosen = torch.zeros(s, p, dtype=torch.bool, device=features.device)
    total = torch.zeros_like(mu)
    in_class = onehot.transpose(1, 2).bool()  # [S, C, P]
    rows = torch.arange(s, device=features.device).unsqueeze(1)
    for k in range(1, int(quota.max()) + 1 if quota.numel() else 1):
        target = mu - total / k  # [S, C, D]
        score = torch.bmm(target, f.transpose(1, 2))  # [S, C, P]
        score = score.masked_fill(~in_class | chosen.unsqueeze(1), -math.inf)
        pick = score.argmax(-1)  # [S, C]
        active = quota >= k
        chosen[rows.expand_as(pick)[active], pick[active]] = True
        total = total + f[rows, pick] * active.unsqueeze(-1)
    return chosen


def kmeans_keep(
    features: torch.Tensor, labels: torch.Tensor, n_classes: int, keep: float, clusters: int
) -> torch.Tensor:
    """``[S, P]`` bool: per class, the ⌈keep·n_c⌉ candidates nearest to their k-means centre.

    ``clusters`` centres per class start at the class's first candidates (cycling when the class has
    fewer); 10 Lloyd iterations assign each candidate to the nearest centre of its own class and move
    every centre to the mean of its members (an empty centre stays).
    """
    s, p, d = features.shape
    dev = features.device
    f = torch.nn.functional.normalize(features.to(torch.float64), dim=-1)
    order, starts, counts = _by_class(labels, n_classes)
    rows = torch.arange(s, device=dev)
    k = torch.arange(clusters, device=dev)
    # centre j of class c starts at the class's candidate (j mod n_c)
    first = starts.unsqueeze(-1) + k % counts.clamp(min=1).unsqueeze(-1)  # [S, C, K]
    first = first.clamp(max=p - 1)
    centres = f[rows.view(s, 1, 1), order.gather(1, first.flatten(1)).view(s, n_classes, clusters)]  # [S,C,K,D]
    own = labels  # [S, P]
    for _ in range(KMEANS_ITERATIONS):
        mine = centres[rows.unsqueeze(1), own]  # [S, P, K, D]
        dist = ((f.unsqueeze(2) - mine) ** 2).sum(-1)  # [S, P, K]
        assign = dist.argmin(-1)  # [S, P]
        slot = own * clusters + assign  # [S, P]
        sums = torch.zeros(s, n_classes * clusters, d, dtype=f.dtype, device=dev)
        sums.scatter_add_(1, slot.unsqueeze(-1).expand(s, p, d), f)
        n = torch.zeros(s, n_classes * clusters, dtype=f.dtype, device=dev)
        n.scatter_add_(1, slot, torch.ones_like(slot, dtype=f.dtype))
        new = sums / n.clamp(min=1).unsqueeze(-1)
        centres = torch.where((n > 0).unsqueeze(-1), new, centres.view(s, -1, d)).view(s, n_classes, clusters, d)
    mine = centres[rows.unsqueeze(1), own]
    nearest = ((f.unsqueeze(2) - mine) ** 2).sum(-1).min(-1).values  # [S, P]
    return keep_nearest(nearest, labels, n_classes, keep)


def keep_nearest(dist: torch.Tensor, labels: torch.Tensor, n_classes: int, keep: float) -> torch.Tensor:
    """``[S, P]`` bool: per class, the ⌈keep·n_c⌉ candidates with the smallest ``dist`` (ties: pool order)."""
    by_dist = torch.sort(dist, dim=1, stable=True).indices
    lab = labels.gather(1, by_dist)
    order = torch.sort(lab, dim=1, stable=True).indices  # class-major, nearest first within a class
    pos = by_dist.gather(1, order)
    counts = class_counts(labels, n_classes).to(torch.int64)
    starts = counts.cumsum(1) - counts
    sorted_lab = lab.gather(1, order)
    rank = torch.arange(labels.shape[1], device=labels.device) - starts.gather(1, sorted_lab)
    quota = torch.ceil(keep * counts).to(torch.int64).gather(1, sorted_lab)
    out = torch.zeros_like(labels, dtype=torch.bool)
    return out.scatter_(1, pos, rank < quota)


# ---- scoring ----------------------------------------------------------------------------------------
def scores(kind: str, log_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[S, Q]`` score of candidates (higher = train on it) from their log-probabilities ``[S, Q, C]``."""
    if kind == "max_loss":
        return -log_probs.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    if kind == "uncertainty":
        return -log_probs.max(-1).values
    raise ValueError(f"{kind!r} is not a scoring sampler; scoring ones are {SCORING}")


def top_scoring(score: torch.Tensor, b: int) -> torch.Tensor:
    """``[S, b]`` positions (into the candidates) of the ``b`` highest scores (ties: first candidate)."""
    return torch.sort(score, dim=1, descending=True, stable=True).indices[:, :b]


def extra_forward_per_example(cfg: SamplerConfig) -> int:
    """Forward passes (in examples) a sampler spends per trained example: ``candidates`` for the
    coreset and scoring samplers (they run the network on that many candidates), 0 for static ones."""
    return cfg.candidates if cfg.kind in CORESET + SCORING else 0
