"""The forgetting methods on the method layer (issue 12): SI, EWC / online EWC and its Fisher estimators,
experience replay, LwF; hand computations, reference loops, zero-strength identity, batch independence,
resume, bad configs."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from lop.algos import ewc as ewc_module
from lop.algos.fisher import diagonal_fisher
from lop.algos.method_layer import MethodStack, TaskEnd
from lop.algos.replay import ExperienceReplay
from lop.config import MethodConfig, from_dict
from lop.errors import ConfigError
from lop.problems.task_sequence import TaskSequenceLearner, masked_log_probs, task_label_mask
from lop.rng import RunStreams

CPU = torch.device("cpu")


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x ``[S, B, in]`` @ w ``[S, out, in]``ᵀ + b, as a broadcast product: unlike a batched matmul (which
    may take another kernel for S = 1), every run's numbers are computed the same way in any batch."""
    return (x.unsqueeze(2) * w.unsqueeze(1)).sum(-1) + b.unsqueeze(1)


class TinyMLP:
    """A seed-batched 5-6-4 tanh network with autograd parameters (test network)."""

    def __init__(self, streams: RunStreams, d: int = 5, h: int = 6, c: int = 4) -> None:
        self.w1 = streams.uniform("init/w1", 0, (h, d), -0.6, 0.6).requires_grad_(True)
        self.b1 = streams.uniform("init/b1", 0, (h,), -0.1, 0.1).requires_grad_(True)
        self.w2 = streams.uniform("init/w2", 0, (c, h), -0.6, 0.6).requires_grad_(True)
        self.b2 = torch.zeros(streams.n, c, requires_grad=True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.w1, self.b1, self.w2, self.b2]

    def __call__(self, x: torch.Tensor, return_activations: bool = False) -> Any:
        h = torch.tanh(linear(x, self.w1, self.b1))
        logits = linear(h, self.w2, self.b2)
        return (logits, {}) if return_activations else logits


def task_data(seeds: list[int], task: int, n: int = 96, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-run data of a task (a function of the run's seed and the task only): two classes per task."""
    xs, ys = [], []
    for s in seeds:
        g = torch.Generator().manual_seed(1000 * s + task)
        y = torch.randint(0, 2, (n,), generator=g) + 2 * (task % 2)
        x = torch.randn(n, d, generator=g) + torch.nn.functional.one_hot(y, d).float() * 1.5
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys)


def batches_of(x: torch.Tensor, y: torch.Tensor):
    def batches(n: int, bs: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = min(n, x.shape[1])
        for lo in range(0, n, bs):
            yield x[:, lo : min(n, lo + bs)], y[:, lo : min(n, lo + bs)]

    return batches


def cfg(**method: Any) -> MethodConfig:
    return from_dict(MethodConfig, {"optimizer": "adam", "lr": 0.02, **method})


def make_learner(seeds: list[int], configs: list[MethodConfig], label_mask: bool = False) -> TaskSequenceLearner:
    streams = RunStreams(seeds)
    mask = task_label_mask([0, 0, 1, 1]) if label_mask else None
    return TaskSequenceLearner(TinyMLP(streams), configs, streams, label_mask=mask)


def train(learner: TaskSequenceLearner, seeds: list[int], tasks: range, steps: int = 6, bs: int = 16,
          t0: int = 0) -> int:
    """Train on `tasks` (each ends with end_task); returns the next step counter."""
    t = t0
    for task in tasks:
        x, y = task_data(seeds, task)
        for i in range(steps):
            lo = (i * bs) % x.shape[1]
            learner.step(t, x[:, lo : lo + bs], y[:, lo : lo + bs])
            t += 1
        learner.end_task(task + 1, batches_of(x, y))
    return t


def params_of(learner: TaskSequenceLearner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in learner.params]


# ---- Synaptic Intelligence -------------------------------------------------------------------------
def test_si_path_integral_importance_and_penalty_by_hand() -> None:
    """Plain SGD (lr 0.1), c = 20, ξ = 0.1, θ₀ = (1, 2, 0); the gradients g below are those of the
    unregularised loss, handed to the stack as the learner would.

    task 1 (Ω = 0, no penalty):  g = (1, −2, 1): Δθ = (−.1, .2, −.1), ω = (.1, .4, .1)
                                 g = (−1, 1, −1): Δθ = (.1, −.1, .1),  ω = (.2, .5, .2), θ = (1, 2.1, 0)
      end: θ − θ̃ = (0, .1, 0) → Ω = (.2/.1, .5/.11, .2/.1) = (2, 50/11, 2); θ̃ = (1, 2.1, 0); ω = 0
    task 2:  g = (2, 0, −1): penalty 0 (θ = θ̃), Δθ = (−.2, 0, .1), ω = (.4, 0, .1), θ = (.8, 2.1, .1)
             penalty c·ΣΩ(θ − θ̃)² = 20·(2·.04 + 2·.01) = 2
             g = (−1, 1, −2): penalty gradient 2cΩ(θ − θ̃) = (−16, 0, 8), applied (−17, 1, 6),
             Δθ = (1.7, −.1, −.6), ω −= g⊙Δθ → ω = (2.1, .1, −1.1), θ = (2.5, 2, −.5)
      end: θ − θ̃ = (1.5, −.1, −.5), (θ − θ̃)² + ξ = (2.35, .11, .35)
           Ω = relu(2 + 2.1/2.35, 50/11 + .1/.11, 2 − 1.1/.35) = (2 + 2.1/2.35, 60/11, 0)
    """
    p = torch.tensor([[1.0, 2.0, 0.0]], dtype=torch.float64)
    stack = MethodStack([from_dict(MethodConfig, {"lr": 0.1, "si": {"c": 20.0, "xi": 0.1}})], RunStreams([0]),
                        params=[p])
    si = stack.get("si")
    end = TaskEnd(task=1, batches=lambda n, bs: iter(()), log_probs=lambda x, y: x, params=[p])

    def step(t: int, g: list[float]) -> None:
        stack.step(t, [torch.tensor([g], dtype=torch.float64)])

    step(0, [1, -2, 1])
    step(1, [-1, 1, -1])
    torch.testing.assert_close(si.omega[0], torch.tensor([[0.2, 0.5, 0.2]], dtype=torch.float64))
    stack.end_task(1, end)
    torch.testing.assert_close(si.importance[0], torch.tensor([[2.0, 50 / 11, 2.0]], dtype=torch.float64))
    torch.testing.assert_close(si.anchor[0], torch.tensor([[1.0, 2.1, 0.0]], dtype=torch.float64))
    assert float(si.omega[0].abs().sum()) == 0.0
    step(2, [2, 0, -1])
    torch.testing.assert_close(si.penalty(), torch.tensor([2.0]))
    step(3, [-1, 1, -2])
    torch.testing.assert_close(p, torch.tensor([[2.5, 2.0, -0.5]], dtype=torch.float64))
    torch.testing.assert_close(si.omega[0], torch.tensor([[2.1, 0.1, -1.1]], dtype=torch.float64))
    stack.end_task(2, end)
    torch.testing.assert_close(si.importance[0], torch.tensor([[2 + 2.1 / 2.35, 60 / 11, 0.0]], dtype=torch.float64))
    assert float(si.penalty()) == 0.0  # θ̃ ← θ


def test_si_runs_before_other_penalties() -> None:
    """SI's ω uses the gradient before L2-Init adds its penalty (SI is registered first)."""
    p = torch.tensor([[1.0]], dtype=torch.float64)
    stack = MethodStack(
        [from_dict(MethodConfig, {"lr": 0.1, "si": {"c": 1.0}, "l2_init": {"strength": 1.0}})],
        RunStreams([0]), params=[p])
    assert list(stack.hooks) == ["si", "l2_init"]
    with torch.no_grad():
        p.fill_(2.0)  # L2-Init gradient 2λ(θ − θ₀) = 2
    stack.step(0, [torch.tensor([[1.0]], dtype=torch.float64)])
    # applied update −0.1·(1 + 2) = −0.3; ω = −g·Δθ with g = 1 (not 3)
    torch.testing.assert_close(stack.get("si").omega[0], torch.tensor([[0.3]], dtype=torch.float64))


# ---- EWC: Fisher estimators against per-example loops ----------------------------------------------
def _reference_fisher(net: TinyMLP, x: torch.Tensor, y: torch.Tensor, kind: str,
                      mask: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Per-run, per-example loop: F = mean_i Σ_c w_ic (∂ log p(c|x_i))²."""
    params = net.parameters()
    out = [torch.zeros_like(p) for p in params]
    s_n, n = y.shape
    for s in range(s_n):
        for i in range(n):
            logp = masked_log_probs(net(x[:, i : i + 1]), y[:, i : i + 1], mask)[s, 0]
            p = logp.detach().exp()
            if kind == "exact":
                labels = [(c, float(p[c])) for c in range(len(p)) if p[c] > 0]
            elif kind == "empirical":
                labels = [(int(y[s, i]), 1.0)]
            else:  # pred
                labels = [(int(p.argmax()), 1.0)]
            for c, w in labels:
                grads = torch.autograd.grad(logp[c], params, retain_graph=True)
                for o, g in zip(out, grads, strict=True):
                    o[s] += w * g[s].square() / n
    return out


@pytest.mark.parametrize("kind", ["exact", "empirical", "pred"])
@pytest.mark.parametrize("masked", [False, True])
def test_fisher_matches_a_per_example_loop(kind: str, masked: bool) -> None:
    seeds = [0, 1]
    streams = RunStreams(seeds)
    net = TinyMLP(streams)
    x, y = task_data(seeds, 0, n=24)
    mask = task_label_mask([0, 0, 1, 1]) if masked else None
    got = diagonal_fisher(kind, 24, batches_of(x, y), lambda a, b: masked_log_probs(net(a), b, mask),
                          net.parameters(), streams, 1)
    want = _reference_fisher(net, x, y, kind, mask)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)


def test_batched_fisher_is_the_mean_of_squared_batch_mean_gradients() -> None:
    seeds = [0, 1]
    streams = RunStreams(seeds)
    net = TinyMLP(streams)
    x, y = task_data(seeds, 0, n=20)
    lp = lambda a, b: masked_log_probs(net(a), b)  # noqa: E731
    got = diagonal_fisher("batched", 20, batches_of(x, y), lp, net.parameters(), streams, 1, fisher_batch=8)
    want = [torch.zeros_like(p) for p in net.parameters()]
    for lo, hi in ((0, 8), (8, 16), (16, 20)):  # three batches, the last one partial
        mean = lp(x[:, lo:hi], y[:, lo:hi]).gather(-1, y[:, lo:hi, None]).mean((1, 2)).sum()
        for w, g in zip(want, torch.autograd.grad(mean, net.parameters()), strict=True):
            w += g.square() / 3
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_fisher_estimators_differ_and_sampling_approaches_exact() -> None:
    seeds = [0, 1]
    streams = RunStreams(seeds)
    net = TinyMLP(streams)
    x, y = task_data(seeds, 0, n=2000)
    lp = lambda a, b: masked_log_probs(net(a), b)  # noqa: E731
    est = {k: diagonal_fisher(k, 2000, batches_of(x, y), lp, net.parameters(), streams, 1)
           for k in ("exact", "sample", "empirical", "pred", "batched")}
    total = {k: float(sum(f.sum() for f in v)) for k, v in est.items()}
    assert len({round(v, 6) for v in total.values()}) == 5
    # y ~ p is an unbiased estimate of the exact expectation over labels
    assert abs(total["sample"] - total["exact"]) < 0.05 * total["exact"]
    # the square of a mean gradient is much smaller than the mean of squares
    assert total["batched"] < 0.5 * total["empirical"]
    again = diagonal_fisher("sample", 2000, batches_of(x, y), lp, net.parameters(), streams, 1)
    assert all(torch.equal(a, b) for a, b in zip(again, est["sample"], strict=True))


# ---- EWC: separate vs online penalties -------------------------------------------------------------
def _ewc_with_fishers(monkeypatch: pytest.MonkeyPatch, method: dict[str, Any], fishers: list[torch.Tensor],
                      anchors: list[torch.Tensor]) -> tuple[Any, torch.Tensor]:
    queue = list(fishers)
    monkeypatch.setattr(ewc_module, "diagonal_fisher", lambda *a, **k: [queue.pop(0)])
    p = torch.zeros(1, 3, dtype=torch.float64)
    stack = MethodStack([from_dict(MethodConfig, {"ewc": method})], RunStreams([0]), params=[p])
    end = TaskEnd(task=1, batches=lambda n, bs: iter(()), log_probs=lambda a, b: a, params=[p])
    for j, a in enumerate(anchors):
        with torch.no_grad():
            p.copy_(a)
        stack.end_task(j + 1, end)
    return stack, p


def test_separate_ewc_keeps_one_term_per_task_and_online_one_anchor(monkeypatch: pytest.MonkeyPatch) -> None:
    f1, f2 = torch.tensor([[1.0, 0.0, 2.0]], dtype=torch.float64), torch.tensor([[3.0, 1.0, 0.0]], dtype=torch.float64)
    a1, a2 = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64), torch.tensor([[0.0, -1.0, 1.0]], dtype=torch.float64)
    theta = torch.tensor([[0.5, 0.5, 0.5]], dtype=torch.float64)
    lam, gamma = 4.0, 0.5
    want = {
        # ∂/∂θ (λ/2)[F1(θ − a1)² + F2(θ − a2)²]
        "separate": lam * (f1 * (theta - a1) + f2 * (theta - a2)),
        # ∂/∂θ (λ/2) γF*(θ − a2)², F* = γF1 + F2
        "online": lam * gamma * (gamma * f1 + f2) * (theta - a2),
    }
    for name, method in (("separate", {"lam": lam}), ("online", {"lam": lam, "online": True, "gamma": gamma})):
        stack, p = _ewc_with_fishers(monkeypatch, method, [f1.clone(), f2.clone()], [a1, a2])
        with torch.no_grad():
            p.copy_(theta)
        grads = [torch.zeros_like(p)]
        stack.get("ewc").edit_grads(0, grads)
        torch.testing.assert_close(grads[0], want[name])
    # the separate penalty value, up to its constant, has the same θ-dependence
    stack, p = _ewc_with_fishers(monkeypatch, {"lam": lam}, [f1.clone(), f2.clone()], [a1, a2])
    values = []
    for th in (theta, theta + 0.25):
        with torch.no_grad():
            p.copy_(th)
        explicit = 0.5 * lam * (f1 * (th - a1) ** 2 + f2 * (th - a2) ** 2).sum()
        values.append(float(explicit) - float(stack.get("ewc").penalty()))
    assert values[0] == pytest.approx(values[1])


def test_ewc_gives_no_gradient_before_the_first_task_ends() -> None:
    p = torch.ones(2, 3)
    stack = MethodStack([from_dict(MethodConfig, {"ewc": {"lam": 1e6}})] * 2, RunStreams([0, 1]), params=[p])
    grads = [torch.full_like(p, 0.5)]
    stack.get("ewc").edit_grads(0, grads)
    assert torch.equal(grads[0], torch.full_like(p, 0.5))


# ---- replay ------------------------------------------------------------------------------------------
def _replay(seeds: list[int], buffer: int, batch: int, policy: str = "reservoir", n_classes: int = 2) -> ExperienceReplay:
    cfgs = [from_dict(MethodConfig, {"replay": {"buffer": buffer, "batch": batch, "policy": policy}})] * len(seeds)
    stack = MethodStack(cfgs, RunStreams(seeds), params=[torch.zeros(len(seeds), n_classes)])
    return stack.get("replay")


def test_reservoir_keeps_a_uniform_sample_of_the_stream() -> None:
    seeds = list(range(200))
    hook = _replay(seeds, buffer=100, batch=4)
    for t in range(100):  # 1000 examples, 10 per step; x = the example's stream index
        idx = torch.arange(10 * t, 10 * t + 10, dtype=torch.float32).expand(200, 10)
        hook.mix_batch(t, idx.unsqueeze(-1), torch.zeros(200, 10, dtype=torch.int64))
    stored = hook.x[..., 0].long()
    assert bool(hook.filled.all())
    assert all(len(set(r.tolist())) == 100 for r in stored)  # no example stored twice
    counts = torch.bincount(stored.flatten(), minlength=1000).float() / 200  # inclusion probability
    by_tenth = counts.view(10, 100).mean(1)
    assert torch.all((by_tenth - 0.1).abs() < 0.015), by_tenth


def test_mix_batch_appends_replayed_pairs_once_the_buffer_has_examples() -> None:
    hook = _replay([0, 1], buffer=8, batch=5)
    x = torch.arange(6.0).view(1, 6, 1).expand(2, 6, 1)
    y = torch.tensor([0, 1, 0, 1, 0, 1]).expand(2, 6)
    x0, y0 = hook.mix_batch(0, x, y)
    assert torch.equal(x0, x) and torch.equal(y0, y)  # empty buffer: nothing appended
    x1, y1 = hook.mix_batch(1, x + 6, y)
    assert x1.shape == (2, 11, 1) and y1.shape == (2, 11)
    replayed_x, replayed_y = x1[:, 6:, 0].long(), y1[:, 6:]
    assert torch.all(replayed_x < 6) and torch.equal(replayed_y, replayed_x % 2)  # labels travel with examples
    assert all(len(set(r.tolist())) == 5 for r in replayed_x)  # drawn without replacement


def test_class_balanced_buffer_gives_each_class_its_quota() -> None:
    hook = _replay([0, 1, 2], buffer=40, batch=4, policy="class_balanced", n_classes=4)
    g = torch.Generator().manual_seed(0)
    for t in range(50):  # 90 % class 0, 10 % class 3, classes 1 and 2 never
        y = torch.where(torch.rand(3, 20, generator=g) < 0.9, 0, 3)
        hook.mix_batch(t, y.unsqueeze(-1).float(), y)
    for r in range(3):
        labels = hook.y[r][hook.filled[r]]
        assert int((labels == 0).sum()) == 10 and int((labels == 3).sum()) == 10
        assert torch.equal(hook.x[r][hook.filled[r], 0].long(), labels)
    report = hook.end_task(1, TaskEnd(1, lambda n, bs: iter(()), lambda a, b: a, []))
    assert report["buffer_examples"].tolist() == [20] * 3 and report["buffer_classes"].tolist() == [2] * 3
    reservoir = _replay([0], buffer=40, batch=4)
    for t in range(50):
        y = torch.where(torch.rand(1, 20, generator=g) < 0.9, 0, 3)
        reservoir.mix_batch(t, y.unsqueeze(-1).float(), y)
    assert int((reservoir.y == 3).sum()) < 10  # plain reservoir follows the stream's imbalance


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
def test_replay_is_deterministic_and_batch_independent(policy: str) -> None:
    def run(seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        hook = _replay(seeds, buffer=12, batch=3, policy=policy, n_classes=3)
        outs = []
        for t in range(10):
            y = (torch.arange(5) + t).remainder(3).expand(len(seeds), 5)
            xm, _ = hook.mix_batch(t, (y * 100 + t).float().unsqueeze(-1), y)
            outs.append(xm[..., 0])
        return hook.x[..., 0], torch.cat(outs, 1)

    alone, in_batch, again = run([3]), run([0, 3]), run([3])
    assert torch.equal(alone[0][0], in_batch[0][1]) and torch.equal(alone[1][0], in_batch[1][1])
    assert torch.equal(alone[0], again[0]) and torch.equal(alone[1], again[1])
    assert not torch.equal(in_batch[0][0], in_batch[0][1])  # runs draw differently


# ---- LwF ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_lwf_term_is_absent_on_the_first_task_and_positive_after(scenario: str) -> None:
    seeds = [0, 1]
    learner = make_learner(seeds, [cfg(lwf={"alpha": 1.0, "temperature": 2.0})] * 2, label_mask=scenario == "task")
    hook = learner.methods.get("lwf")
    x, y = task_data(seeds, 0)
    if scenario == "domain":
        y = y % 2
    n_logits = 2 if scenario == "class" else None
    logits = learner.net(x)
    assert hook.loss_terms(0, x, y, logits) is None
    for t in range(5):
        learner.step(t, x[:, 16 * t : 16 * t + 16], y[:, 16 * t : 16 * t + 16], n_logits)
    learner.end_task(1, batches_of(x, y), n_logits)
    expected = {"task": [[0, 1]], "domain": [[0, 1, 2, 3]], "class": [[0, 1]]}[scenario]
    assert [h.tolist() for h in hook.heads] == expected
    term = hook.loss_terms(5, x, y, learner.net(x))
    assert term is not None and float(term.detach().abs().max()) < 1e-6  # the old model is the current one
    x2, y2 = task_data(seeds, 1)
    for t in range(5, 10):
        learner.step(t, x2[:, :16], y2[:, :16] % 2 if scenario == "domain" else y2[:, :16])
    assert torch.all(hook.loss_terms(10, x2, y2, learner.net(x2)) > 0)


def test_lwf_heads_per_scenario_after_two_tasks() -> None:
    seeds = [0]
    for scenario, want in (("task", [[0, 1], [2, 3]]), ("class", [[0, 1, 2, 3]])):
        learner = make_learner(seeds, [cfg(lwf={})], label_mask=scenario == "task")
        for task in range(2):
            x, y = task_data(seeds, task)
            learner.step(task, x[:, :16], y[:, :16], None if scenario == "task" else 2 * task + 2)
            learner.end_task(task + 1, batches_of(x, y), None if scenario == "task" else 2 * task + 2)
        assert [h.tolist() for h in learner.methods.get("lwf").heads] == want


# ---- through the learner: zero strength, batch independence, resume ----------------------------------
ZERO = {
    "si": {"si": {"c": 0.0}},
    "ewc": {"ewc": {"lam": 0.0, "fisher_samples": 32}},
    "online_ewc": {"ewc": {"lam": 0.0, "online": True, "gamma": 0.9, "fisher_samples": 32}},
    "replay": {"replay": {"buffer": 0, "batch": 4}},
    "lwf": {"lwf": {"alpha": 0.0}},
}
ON = {
    "plain": [{}, {}],
    "si": [{"si": {"c": 1.0, "xi": 0.1}}, {"si": {"c": 0.3, "xi": 0.5}}],
    "ewc": [{"ewc": {"lam": 50.0, "fisher": f, "fisher_samples": 40}} for f in ("sample", "sample")],
    "ewc_exact": [{"ewc": {"lam": 50.0, "fisher_samples": 40}}, {"ewc": {"lam": 5.0, "fisher_samples": 40}}],
    "online_ewc": [{"ewc": {"lam": 50.0, "online": True, "gamma": g, "fisher": "batched", "fisher_batch": 8}}
                   for g in (0.9, 0.5)],
    "replay": [{"replay": {"buffer": 20, "batch": 4}}] * 2,
    "replay_cb": [{"replay": {"buffer": 20, "batch": 4, "policy": "class_balanced"}}] * 2,
    "lwf": [{"lwf": {"alpha": 1.0, "temperature": 2.0}}, {"lwf": {"alpha": 3.0, "temperature": 1.0}}],
}


@pytest.mark.parametrize("name", sorted(ZERO))
def test_zero_strength_equals_plain_training(name: str) -> None:
    seeds = [0, 1]
    plain = make_learner(seeds, [cfg()] * 2, label_mask=True)
    zero = make_learner(seeds, [cfg(**ZERO[name])] * 2, label_mask=True)
    for learner in (plain, zero):
        train(learner, seeds, range(3))
    assert all(torch.equal(a, b) for a, b in zip(params_of(plain), params_of(zero), strict=True))
    on = make_learner(seeds, [cfg(**ON[name if name in ON else "ewc"][0])] * 2, label_mask=True)
    train(on, seeds, range(3))
    assert not all(torch.equal(a, b) for a, b in zip(params_of(plain), params_of(on), strict=True))


@pytest.mark.parametrize("name", sorted(ON))
def test_a_run_does_not_depend_on_its_batch(name: str) -> None:
    a, b = ON[name]
    alone = make_learner([3], [cfg(**b)], label_mask=True)
    train(alone, [3], range(3))
    both = make_learner([0, 3], [cfg(**a), cfg(**b)], label_mask=True)
    train(both, [0, 3], range(3))
    for p, q in zip(params_of(alone), params_of(both), strict=True):
        assert torch.equal(p[0], q[1])


def _checkpoint(learner: TaskSequenceLearner) -> dict[str, Any]:
    buf = io.BytesIO()
    torch.save({"net": params_of(learner), "methods": learner.methods.state_dict()}, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _restore(learner: TaskSequenceLearner, state: dict[str, Any]) -> None:
    with torch.no_grad():
        for p, s in zip(learner.params, state["net"], strict=True):
            p.copy_(s)
    learner.methods.load_state_dict(state["methods"])


@pytest.mark.parametrize("name", sorted(ON))
def test_resume_mid_task_and_after_a_task_end_is_identical(name: str) -> None:
    seeds = [0, 1]
    configs = [cfg(**c) for c in ON[name]]
    ref = make_learner(seeds, configs, label_mask=True)
    t = train(ref, seeds, range(1))  # task 1, ended
    after_end = _checkpoint(ref)
    x, y = task_data(seeds, 1)
    for i in range(3):
        ref.step(t + i, x[:, 16 * i : 16 * i + 16], y[:, 16 * i : 16 * i + 16])
    mid = _checkpoint(ref)
    for i in range(3, 6):
        ref.step(t + i, x[:, 16 * i : 16 * i + 16], y[:, 16 * i : 16 * i + 16])
    ref.end_task(2, batches_of(x, y))
    train(ref, seeds, range(2, 3), t0=t + 6)
    for state, start in ((after_end, 0), (mid, 3)):
        other = make_learner(seeds, configs, label_mask=True)
        _restore(other, state)
        for i in range(start, 6):
            other.step(t + i, x[:, 16 * i : 16 * i + 16], y[:, 16 * i : 16 * i + 16])
        other.end_task(2, batches_of(x, y))
        train(other, seeds, range(2, 3), t0=t + 6)
        assert all(torch.equal(p, q) for p, q in zip(params_of(ref), params_of(other), strict=True)), start


# ---- configs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method,key",
    [
        ({"si": {"c": -0.1}}, "m.si.c"),
        ({"si": {"xi": 0.0}}, "m.si.xi"),
        ({"ewc": {"lam": -1.0}}, "m.ewc.lam"),
        ({"ewc": {"fisher": "diagonal"}}, "m.ewc.fisher"),
        ({"ewc": {"fisher_samples": 0}}, "m.ewc.fisher_samples"),
        ({"ewc": {"online": True, "gamma": 0.0}}, "m.ewc.gamma"),
        ({"ewc": {"gamma": 0.5}}, "m.ewc.gamma"),  # γ without online would be ignored
        ({"ewc": {"fisher_batch": 16}}, "m.ewc.fisher_batch"),  # only the batched estimator uses it
        ({"replay": {"buffer": -1}}, "m.replay.buffer"),
        ({"replay": {"batch": 0}}, "m.replay.batch"),
        ({"replay": {"policy": "fifo"}}, "m.replay.policy"),
        ({"lwf": {"alpha": -1.0}}, "m.lwf.alpha"),
        ({"lwf": {"temperature": 0.0}}, "m.lwf.temperature"),
    ],
)
def test_bad_configs_are_rejected_naming_the_key(method: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        from_dict(MethodConfig, method, "m")
    assert str(e.value).startswith(key)


def test_shape_settings_must_agree_within_a_batch() -> None:
    configs = [cfg(replay={"buffer": 10}), cfg(replay={"buffer": 20})]
    with pytest.raises(ConfigError, match=r"replay\.buffer"):
        make_learner([0, 1], configs)
    with pytest.raises(ConfigError, match=r"replay\.buffer: class_balanced needs at least one slot per class"):
        make_learner([0], [cfg(replay={"buffer": 3, "policy": "class_balanced"})])  # 4 outputs
    configs = [cfg(ewc={"fisher_samples": 10}), cfg(ewc={"fisher_samples": 20})]
    with pytest.raises(ConfigError, match=r"ewc\.fisher_samples"):
        make_learner([0, 1], configs)


def test_bad_method_value_stops_the_cli_with_one_error_line(tmp_path, capsys) -> None:
    from lop.cli import main

    rf = tmp_path / "run.yaml"
    rf.write_text(
        "experiment: scr\nproblem: {n_examples: 200, flip_every: 50, bin_size: 100, chunk: 100}\n"
        "config: {optimizer: sgd, si: {c: -1.0}}\n"
    )
    assert main(["run", "--run-file", str(rf), "--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    lines = [ln for ln in (captured.err + captured.out).splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "si.c" in lines[0], lines
