"""Experiment `budgeted_cl`: equal budgets, the step-size schedule, storage, resume, batch independence,
bad settings, and the smoke scale end to end."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch

from lop.config import MethodConfig, from_dict
from lop.errors import ConfigError
from lop.experiments.base import RunSpec
from lop.experiments.budgeted_cl import EXPERIMENT, BudgetedCLProblem

CPU = torch.device("cpu")
TINY: dict[str, Any] = {
    "dataset": "digits",
    "n_classes": 6,
    "n_steps": 3,
    "iterations": 4,
    "batch_size": 8,
    "train_per_class": 20,
    "test_per_class": 10,
    "val_per_class": 2,
    "width": 16,
    "pretrain_epochs": 2,
    "pretrain_batch": 16,
    "probe_examples": 10,
    "eval_batch": 64,
    "store_logits": True,
}
SGD = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9}
METHODS: dict[str, dict[str, Any]] = {
    "naive": {},
    **{k: {"sampler": {"kind": k}} for k in ("class_balanced", "fifo", "recency", "herding", "kmeans", "max_loss", "uncertainty")},
    **{f"distill_{k}": {"distill": {"loss": k}} for k in ("bce", "kl", "cosine", "mse")},
    **{k: {"fc_correction": {"kind": k}} for k in ("wa", "bic", "cosine")},
}


def _trainer(method: dict[str, Any], seeds=(0, 1), **problem: Any):
    prob = from_dict(BudgetedCLProblem, {**TINY, **problem}, "problem")
    cfg = from_dict(MethodConfig, {**SGD, **method}, "method")
    return EXPERIMENT.build(prob, [RunSpec("m", "d", {}, cfg, s) for s in seeds], CPU)


def _train(tr, units=None) -> dict[str, torch.Tensor]:
    out: dict[str, list[torch.Tensor]] = {}
    for u in range(tr.n_units) if units is None else units:
        for b in tr.train_unit(u):
            out.setdefault(b.name, []).append(b.values)
    return {k: torch.cat(v, 1) for k, v in out.items()}


def test_every_method_is_charged_the_same_budget_per_step():
    charged = {}
    for name, m in METHODS.items():
        tr = _trainer(m, seeds=(0,))
        budgets = tr.budgets
        charged[name] = [b.spent for b in budgets]
        assert all(b.spent == b.budget for b in budgets)
    assert len({tuple(v) for v in charged.values()}) == 1, charged
    # and what the extra forward passes cost: stored logits (fixed), candidates (per example)
    naive = _trainer({}, seeds=(0,), store_logits=False).budgets[0]
    assert naive.fixed == 0 and naive.n_train == 4 * 8
    tr = _trainer({"sampler": {"kind": "max_loss", "candidates": 2}}, seeds=(0,), store_logits=False)
    assert tr.budgets[0].per_example == 5 and tr.budgets[0].n_train == (3 * 32) // 5
    tr = _trainer({"fc_correction": {"kind": "bic"}}, seeds=(0,))
    assert tr.budgets[0].fixed == 20 + 2 * 4  # 20 arriving logits + 2 held-out per seen class (4)


def test_budget_metrics_are_recorded_and_equal_across_methods():
    got = {}
    for name in ("naive", "max_loss", "distill_kl"):
        m = _train(_trainer(METHODS[name], seeds=(0,)))
        got[name] = m["budget/forward_units"]
        assert torch.all(m["budget/forward_units"] == 3 * 4 * 8)
    assert torch.equal(got["naive"], got["max_loss"])


def test_step_size_decays_linearly_to_zero_within_each_step():
    tr = _trainer({}, seeds=(0,), store_logits=False, budget_factor=2.0)
    seen: list[float] = []
    step = tr.learner.step

    def spy(t, x, y, n_logits=None):
        seen.append(float(tr.learner.optimizer.lr[0]))
        return step(t, x, y, n_logits=n_logits)

    tr.learner.step = spy
    _train(tr, [0, 1])
    n = 8  # 2 × 4 iterations of 8 examples
    expect = [0.05 * (1 - i / n) for i in range(n)]
    assert seen == pytest.approx(expect * 2)


def test_storage_keeps_every_example_seen_as_pool_indices():
    tr = _trainer({}, seeds=(0, 1), store_logits=False)
    per = 20
    assert tr.storage.n == 3 * per  # the pretraining classes' examples
    for t in range(3):
        tr.train_unit(t)
        assert tr.storage.n == 3 * per + (t + 1) * per
    idx = tr.storage.index[:, : tr.storage.n]
    for s in range(2):
        assert sorted(idx[s].tolist()) == list(range(6 * per))  # every example exactly once
    # labels: pretraining classes keep their id, stream classes are numbered in the run's order
    cls = idx // per
    assert torch.equal(tr.storage.labels[:, : tr.storage.n], tr.stream.label_of_class.gather(1, cls))
    assert not torch.equal(tr.stream.order[0], tr.stream.order[1])  # seeded orders differ per run


def test_data_incremental_steps_split_the_stream_evenly():
    tr = _trainer({}, seeds=(0,), store_logits=False, scenario="data")
    assert tr.stream.n_step == 20
    m = _train(tr)
    assert "test_accuracy/task_1" not in m and m["stream_accuracy"].shape == (1, 3)
    assert tr.storage.n == 6 * 20


def test_class_incremental_records_the_accuracy_matrix():
    m = _train(_trainer({}, seeds=(0,), store_logits=False))
    assert m["test_accuracy/task_1"].shape[1] == 3 and m["test_accuracy/task_3"].shape[1] == 1
    for k in ("cl/acc", "cl/bwt", "cl/forgetting", "cl/avg_incremental_acc"):
        assert torch.isfinite(m[k]).all()
    assert m["cl/acc"][0, 0] == pytest.approx(m["stream_accuracy"][0, -1].item())
    for k in ("dormant_units", "effective_rank", "stable_rank", "weight_magnitude", "pretrain_accuracy"):
        assert k in m


@pytest.mark.parametrize("name", ["naive", "herding", "max_loss", "distill_kl", "bic"])
def test_a_run_does_not_depend_on_its_batch(name):
    both = _train(_trainer(METHODS[name], seeds=(3, 4)))
    alone = _train(_trainer(METHODS[name], seeds=(4,)))
    for k, v in alone.items():
        assert torch.equal(both[k][1:], v), k


@pytest.mark.parametrize("name", ["naive", "kmeans", "distill_mse", "bic"])
def test_resume_after_a_step_is_bit_identical(name):
    straight = _train(_trainer(METHODS[name]))
    first = _trainer(METHODS[name])
    part = _train(first, [0, 1])
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    second = _trainer(METHODS[name])
    second.load_state_dict(torch.load(buf, weights_only=True))
    rest = _train(second, [2])
    for k, v in straight.items():
        got = torch.cat([part[k], rest[k]], 1) if k in part and k in rest else part.get(k, rest.get(k))
        assert torch.equal(got, v), k


def test_methods_change_the_run():
    base = _train(_trainer({}, seeds=(0,)))["train_loss"]
    for name in ("fifo", "herding", "max_loss", "distill_kl", "wa", "bic", "cosine"):
        other = _train(_trainer(METHODS[name], seeds=(0,)))
        changed = not torch.equal(other["train_loss"], base) or not torch.equal(other["stream_accuracy"], base)
        assert changed, name


def test_class_balanced_equals_uniform_when_classes_are_equally_stored():
    """Class-incremental with equal images per class: 1/n_c is the same for all, so the draws are uniform's;
    data-incremental steps store classes unevenly, and then it differs."""
    cb, naive = METHODS["class_balanced"], METHODS["naive"]
    assert torch.equal(_train(_trainer(cb, seeds=(0,)))["train_loss"], _train(_trainer(naive, seeds=(0,)))["train_loss"])
    a = _train(_trainer(cb, seeds=(0,), scenario="data"))["train_loss"]
    b = _train(_trainer(naive, seeds=(0,), scenario="data"))["train_loss"]
    assert not torch.equal(a, b)


def test_bad_settings_are_one_clear_error():
    with pytest.raises(ConfigError, match="budget_factor"):
        from_dict(BudgetedCLProblem, {**TINY, "budget_factor": 0})
    with pytest.raises(ConfigError, match="iterations"):
        from_dict(BudgetedCLProblem, {**TINY, "iterations": 0})
    with pytest.raises(ConfigError, match="n_steps"):
        from_dict(BudgetedCLProblem, {**TINY, "n_steps": 2})  # 3 stream classes
    with pytest.raises(ConfigError, match="store_logits"):
        _trainer({"distill": {"loss": "kl"}}, store_logits=False)
    with pytest.raises(ConfigError, match="scenario"):
        _trainer({"fc_correction": {"kind": "wa"}}, scenario="data")
    with pytest.raises(ConfigError, match="iterations"):
        _trainer({"sampler": {"kind": "max_loss", "candidates": 8}}, budget_factor=0.05)
    with pytest.raises(ConfigError, match="pretrained"):
        _trainer({}, pretrained="/nonexistent/net.pt")


def test_bad_sampler_in_a_params_file_is_one_error_line(tmp_path, lop_main):
    f = tmp_path / "budgeted_cl.yaml"
    f.write_text(
        "experiment: budgeted_cl\nmethods:\n  m: {base: {optimizer: sgd, sampler: {kind: reservoir}}}\n"
        "scales:\n  smoke: {problem: {dataset: digits, n_classes: 6, n_steps: 3}}\n"
    )
    r = lop_main("params", "validate", str(f))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "sampler.kind" in r.stderr
    f.write_text(
        "experiment: scr\nmethods:\n  m: {base: {optimizer: sgd, sampler: {kind: uniform}}}\n"
        "scales:\n  smoke: {problem: {}}\n"
    )
    r = lop_main("params", "validate", str(f))
    assert r.returncode == 2 and "budgeted_cl" in r.stderr and "sampler" in r.stderr


def test_pretrained_checkpoint_round_trip_and_fingerprint(tmp_path):
    from lop.experiments.budgeted_cl import load_pretrained, pretrain, save_pretrained

    prob = from_dict(BudgetedCLProblem, {**TINY, "pretrained": str(tmp_path / "net.pt")})
    state = pretrain(prob, CPU)
    save_pretrained(prob, state, tmp_path / "net.pt")
    got = load_pretrained(prob, CPU)
    assert all(torch.equal(got[k], v) for k, v in state.items())
    other = from_dict(BudgetedCLProblem, {**TINY, "pretrained": str(tmp_path / "net.pt"), "pretrain_epochs": 3})
    from lop.errors import CheckpointError

    with pytest.raises(CheckpointError, match="lop pretrain"):
        load_pretrained(other, CPU)
    # a budget change does not touch the pretrained network
    same = from_dict(BudgetedCLProblem, {**TINY, "pretrained": str(tmp_path / "net.pt"), "budget_factor": 4.0})
    assert torch.equal(load_pretrained(same, CPU)["fc.weight"], state["fc.weight"])


@pytest.mark.slow
def test_smoke_scale_end_to_end(tmp_path, prepared_standins):
    """The smoke scale of params/budgeted_cl.yaml through `lop pretrain` and `lop run` on the stand-in."""
    import json

    import yaml

    from tests.conftest import REPO, run_lop

    raw = yaml.safe_load((REPO / "params" / "budgeted_cl.yaml").read_text())
    sm = raw["scales"]["smoke"]["problem"]
    sm["data_dir"] = str(prepared_standins["cifar100"])
    sm["pretrained"] = str(tmp_path / "smoke.pt")
    pf = tmp_path / "budgeted_cl.yaml"
    pf.write_text(yaml.safe_dump(raw))
    r = run_lop("pretrain", "--params", str(pf), "--scale", "smoke")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "runs"
    for method in ("naive", "distill_kl", "wa"):
        r = run_lop("run", "--params", str(pf), "--scale", "smoke", "--method", method, "--out", str(out), "--no-progress")
        assert r.returncode == 0, r.stderr
    runs = sorted(out.glob("*/*/seed-*/run.json"))
    assert len(runs) == 6
    assert all(json.loads(p.read_text())["status"] == "complete" for p in runs)
    assert all(json.loads(p.read_text())["stand_in"] for p in runs)
