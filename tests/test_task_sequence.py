"""TaskSequenceLearner: scenario masks, the loss_terms and end_task points of the method layer."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lop.algos import method_layer as ml
from lop.config import L2InitConfig, MethodConfig
from lop.problems.task_sequence import TaskSequenceLearner, masked_log_probs, task_label_mask
from lop.rng import RunStreams


class LinearNet:
    """A seed-batched linear classifier with autograd parameters (test network)."""

    def __init__(self, streams: RunStreams, d: int = 5, c: int = 4) -> None:
        self.w = streams.uniform("init/w", 0, (c, d), -0.5, 0.5).requires_grad_(True)
        self.b = torch.zeros(streams.n, c, requires_grad=True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.w, self.b]

    def __call__(self, x: torch.Tensor, return_activations: bool = False) -> Any:
        logits = torch.einsum("sbd,scd->sbc", x, self.w) + self.b[:, None]
        return (logits, {}) if return_activations else logits


def data(s: int = 2, b: int = 8, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(s, b, d, generator=g), torch.randint(0, 4, (s, b), generator=g)


def test_task_label_mask_is_block_diagonal() -> None:
    m = task_label_mask([0, 0, 1, 1])
    assert m.tolist() == [[True, True, False, False], [True, True, False, False],
                          [False, False, True, True], [False, False, True, True]]


def test_masked_log_probs_give_zero_probability_outside_the_task() -> None:
    _x, y = data()
    logits = torch.randn(2, 8, 4)
    logp = masked_log_probs(logits, y, task_label_mask([0, 0, 1, 1]))
    same_task = (torch.arange(4)[None, None] // 2) == (y[..., None] // 2)
    assert torch.all(logp[~same_task] == float("-inf"))
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(2, 8))
    # equal to a softmax over the two allowed outputs only
    pair = logits.view(2, 8, 2, 2)[torch.arange(2)[:, None], torch.arange(8)[None], y // 2]
    torch.testing.assert_close(logp.gather(-1, y[..., None]).squeeze(-1),
                               torch.log_softmax(pair, -1).gather(-1, (y % 2)[..., None]).squeeze(-1))
    assert masked_log_probs(logits, n_logits=3).shape == (2, 8, 3)


def test_task_il_step_never_predicts_another_tasks_class() -> None:
    streams = RunStreams([0, 1])
    net = LinearNet(streams)
    learner = TaskSequenceLearner(net, [MethodConfig(optimizer="sgd", lr=0.1)] * 2, streams,
                                  label_mask=task_label_mask([0, 0, 1, 1]))
    x, y = data()
    loss, _acc = learner.step(0, x, y)
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    pred = learner.predict(x, y)
    assert torch.all(pred // 2 == y // 2)


class RecordingHook(ml.MethodHook):
    points = frozenset({"loss_terms", "end_task"})

    def __init__(self, values: list[Any], ctx: ml.MethodContext) -> None:
        self.net = ctx.net
        self.seen: list[int] = []

    def loss_terms(self, t, x, y, logits):  # type: ignore[no-untyped-def]
        return 3.0 * (self.net.b ** 2).sum(-1)  # a term that pulls the biases to zero

    def end_task(self, task: int, ctx: ml.TaskEnd) -> dict[str, torch.Tensor]:
        self.seen.append(task)
        x, y = next(ctx.batches(4, 4))
        return {"mean_logp": ctx.log_probs(x, y).gather(-1, y[..., None]).mean((1, 2)).detach()}


def test_loss_terms_and_end_task_reach_the_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ml.REGISTRY, "l2_init", ml.MethodEntry(
        "l2_init", RecordingHook.points, RecordingHook, ml.any_set))
    streams = RunStreams([0, 1])
    x, y = data()
    plain = TaskSequenceLearner(LinearNet(streams), [MethodConfig(optimizer="sgd", lr=0.1)] * 2, streams)
    cfg = MethodConfig(optimizer="sgd", lr=0.1, l2_init=L2InitConfig(strength=1.0))
    hooked = TaskSequenceLearner(LinearNet(streams), [cfg] * 2, streams)
    with torch.no_grad():
        for learner in (plain, hooked):
            learner.net.b.fill_(1.0)
    for t in range(3):
        plain.step(t, x, y)
        hooked.step(t, x, y)
    # the loss term's gradient 6·b shrinks the biases much faster than the data loss alone
    assert hooked.net.b.abs().mean() < 0.5 * plain.net.b.abs().mean()
    out = hooked.end_task(1, lambda n, bs: iter([(x[:, :bs], y[:, :bs])]))
    assert hooked.methods.get("l2_init").seen == [1]  # type: ignore[union-attr]
    assert out["l2_init"]["mean_logp"].shape == (2,)
    assert plain.end_task(1, lambda n, bs: iter(())) == {}
