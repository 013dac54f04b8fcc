"""bench/gpu_check.py: the CPU (tiny) mode end to end, and the pieces whose CUDA branch the CPU cannot run."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gc() -> ModuleType:
    """The bench script, imported as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _table(markdown: str, heading: str) -> list[list[str]]:
    """The body rows (cells) of the first table after the line starting with `heading`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    rows: list[list[str]] = []
    in_table = False
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            in_table = True
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif in_table:
            break
    assert len(rows) >= 2, f"no table after {heading!r}"
    return rows[2:]  # drop the header and the alignment row


def _number(cell: str) -> float:
    return float(re.match(r"[\d,.]+", cell).group(0).replace(",", ""))  # type: ignore[union-attr]


@pytest.mark.slow
def test_cpu_tiny_check_prints_and_writes_all_tables(gc, tmp_path, capsys):
    out = tmp_path / "sub" / "check.md"
    threads = torch.get_num_threads()
    code = gc.main(["--device", "cpu", "--out", str(out), "--reps", "1"])
    printed = capsys.readouterr().out
    assert code == 0
    assert out.exists()
    text = out.read_text()
    assert text.strip() in printed
    assert "mode tiny" in text and "1 CPU threads" in text  # tiny cpu mode: one thread ...
    assert torch.get_num_threads() == threads  # ... restored afterwards

    parity = _table(text, "## (a) Parity")
    n_cases = sum(len(methods) for _, methods in gc.PARITY_CASES)
    assert len(parity) == n_cases
    assert {(r[0], r[1]) for r in parity} == {(e, m) for e, ms in gc.PARITY_CASES for m in ms}
    for row in parity:
        assert row[-1] == "pass", row
        assert row[4] == "yes"  # cpu vs cpu: identical initial states
        assert row[8] == "yes"  # finite
        assert row[9] == row[10]  # CBP replacement counts equal per run
        if row[1] == "cbp":
            assert row[9] != "–" and all(c.isdigit() for c in row[9].split(","))
        else:
            assert row[9] == "–"
    # CBP does replace units in these smoke runs, so the count comparison is not vacuous
    assert sum(int(c) for row in parity if row[1] == "cbp" for c in row[9].split(",")) > 0

    pipeline = _table(text, "### The `lop run` path on cpu")
    assert [(r[0], r[1]) for r in pipeline] == [(e, ms[0]) for e, ms in gc.PARITY_CASES]
    for row in pipeline:
        assert row[4:7] == ["complete", "yes", "cpu"] and row[-1] == "pass", row
        assert int(row[3]) >= 2 and _number(row[7]) >= 0

    tput = _table(text, "## (b) Throughput")
    sizes = gc.TINY
    expected = len(sizes.mnist_seeds) + 2 * len(sizes.convnet_seeds) + 2 * len(sizes.resnet_seeds)
    assert len(tput) == expected
    for row in tput:
        steps, ms, rate, per_run, peak = (_number(row[i]) for i in (3, 4, 5, 6, 7))
        assert steps > 0 and ms > 0 and rate > 0 and per_run > 0 and peak > 0, row
        assert math.isclose(rate / int(row[2]), per_run, rel_tol=0.01, abs_tol=1.0)
    assert [int(r[2]) for r in tput if r[0].startswith("permuted MNIST")] == list(sizes.mnist_seeds)

    profile = _table(text, "## (c) Profile")
    assert len(profile) == expected
    assert all(r[3].startswith("cpu: heaviest ops") for r in profile)

    goal_rows = _table(text, "## Goals")
    assert len(goal_rows) == 5  # MNIST, ImageNet bp/cbp, CIFAR bp/cbp
    assert all(_number(r[1]) > 0 for r in goal_rows)


def test_budget_spent_skips_every_case(gc):
    opts = gc.Options(device="cpu", budget_s=0.0, sections=("parity", "mnist"))
    report = gc.run_check(opts)
    assert report.parity == [] and report.pipeline == []
    assert report.throughput and not any(r.measured for r in report.throughput)
    n_parity = sum(len(m) for _, m in gc.PARITY_CASES) + len(gc.PARITY_CASES)  # parity + pipeline rows
    assert len(report.skipped) == n_parity + len(gc.TINY.mnist_seeds)
    assert "Skipped (budget spent)" in report.markdown


def test_compare_metrics_tolerances(gc):
    ref = {"loss": torch.tensor([[1.0, 2.0]]), "test_accuracy": torch.tensor([[0.5, 0.75]])}
    same = gc.compare_metrics(ref, {k: v.clone() for k, v in ref.items()})
    assert same[0] and same[1] and same[3] == 0.0

    close = {"loss": ref["loss"] * (1 + 1e-3), "test_accuracy": ref["test_accuracy"] + 0.05}
    assert gc.compare_metrics(ref, close)[0]

    drift = {"loss": ref["loss"] * 1.1, "test_accuracy": ref["test_accuracy"]}
    ok, finite, worst, diff, allowed = gc.compare_metrics(ref, drift)
    assert not ok and finite and worst == "loss" and diff > allowed

    flipped = {"loss": ref["loss"], "test_accuracy": ref["test_accuracy"] - 0.25}
    assert gc.compare_metrics(ref, flipped)[2] == "test_accuracy"
    assert not gc.compare_metrics(ref, flipped)[0]

    nan = {"loss": torch.tensor([[1.0, math.nan]]), "test_accuracy": ref["test_accuracy"]}
    ok, finite, worst, *_ = gc.compare_metrics(ref, nan)
    assert not ok and not finite and worst == "loss"

    assert not gc.compare_metrics(ref, {"loss": ref["loss"]})[0]


def test_states_equal_sees_one_changed_weight(gc):
    from lop.experiments.scr import SCRProblem, SCRTrainer

    spec, problem, runs = gc.smoke_group("scr", "bp", {})
    assert spec.name == "scr" and isinstance(problem, SCRProblem) and len(runs) == 4
    a = SCRTrainer(problem, runs, torch.device("cpu"))
    b = SCRTrainer(problem, runs, torch.device("cpu"))
    assert gc.states_equal(a.state_dict(), b.state_dict())
    moved = gc._to_device(a.state_dict(), torch.device("cpu"))
    b.load_state_dict(moved)
    assert gc.states_equal(a.state_dict(), b.state_dict())
    b.net.weights[0].data[0, 0, 0] += 1.0
    assert not gc.states_equal(a.state_dict(), b.state_dict())


def _ev(gc, key: str, count: int, cpu_us: float, dev_us: float, on_device: bool):
    return gc.ProfileEvent(key, count, cpu_us, dev_us, on_device)


def test_profile_summary_on_cuda_counts_kernels_once(gc):
    # 10 steps in 10 ms of wall time; the GPU computes for 9 ms (two kernels); the CPU op that launched
    # the GEMM repeats its device time, which must not be counted twice.
    events = [
        _ev(gc, "aten::mm", 10, 300.0, 8000.0, False),
        _ev(gc, "ampere_sgemm_128x64_nn", 10, 0.0, 8000.0, True),
        _ev(gc, "vectorized_elementwise_kernel", 20, 0.0, 1000.0, True),
        _ev(gc, "cudaLaunchKernel", 30, 600.0, 0.0, False),
    ]
    line = gc.summarize_profile(events, "cuda", wall_s=0.010, steps=10)
    assert line.startswith("kernel-bound: GPU busy 90% of wall")
    assert "3 launches/step" in line
    assert "mean kernel 300.0 µs" in line
    assert "top kernel ampere_sgemm_128x64_nn (89%)" in line

    tiny_kernels = [
        _ev(gc, "vectorized_elementwise_kernel", 500, 0.0, 1000.0, True),
        _ev(gc, "cudaLaunchKernel", 500, 4000.0, 0.0, False),
    ]
    line = gc.summarize_profile(tiny_kernels, "cuda", wall_s=0.010, steps=10)
    assert line.startswith("launch/CPU-bound: GPU busy 10% of wall, 50 launches/step, mean kernel 2.0 µs")

    mixed = [_ev(gc, "k", 1, 0.0, 5000.0, True)]
    assert gc.summarize_profile(mixed, "cuda", wall_s=0.010, steps=1).startswith("mixed: GPU busy 50%")


def test_profile_summary_on_cpu_names_the_heaviest_ops(gc):
    events = [_ev(gc, "aten::addmm", 5, 600.0, 0.0, False), _ev(gc, "aten::relu", 5, 300.0, 0.0, False)]
    events.append(_ev(gc, "aten::view", 5, 100.0, 0.0, False))
    assert (
        gc.summarize_profile(events, "cpu", 0.001, 5)
        == "cpu: heaviest ops aten::addmm 60%, aten::relu 30% of op time"
    )


def test_goal_extrapolation_uses_the_paper_protocols(gc):
    # Continual ImageNet: 2,000 tasks × 250 epochs × 1,200 images; CIFAR: 450 images per class of the
    # 5, 10, ..., 100 classes seen over 20 increments, 200 epochs each.
    assert gc.imagenet_images_per_run() == 2000 * 250 * 1200
    assert gc.cifar_images_per_run() == 450 * 200 * sum(range(5, 101, 5))
    rows = [
        gc.ThroughputRow(
            "ConvNet (Continual ImageNet)", "bp", 30, "images/s", 25, rate=600_000.0, per_run=20_000
        ),
        gc.ThroughputRow(
            "ConvNet (Continual ImageNet)", "bp", 8, "images/s", 25, rate=300_000.0, per_run=37_500
        ),
        gc.ThroughputRow("ResNet-18 (x)", "bp", 4, "images/s", 10, rate=10_000.0, per_run=2_500),
        gc.ThroughputRow("permuted MNIST 784-2000×3-10", "bp", 100, "seed-steps/s", 500, rate=9_000.0),
        gc.ThroughputRow("ResNet-18 (x)", "cbp", 1, "", note="skipped (budget)"),
    ]
    got = {g[0].split(",")[0]: g for g in gc.goals(rows)}
    imagenet = got["Continual ImageNet bp"]
    assert "S = 30" in imagenet[0]
    assert _number(imagenet[1]) == pytest.approx(30 * 600e6 / 600_000 / 3600, abs=0.05)  # 8.3 h
    assert imagenet[3] == "yes"
    cifar = got["incremental CIFAR-100 ResNet-18 bp"]
    assert _number(cifar[1]) == pytest.approx(94.5e6 / 10_000 / 3600, abs=0.005)  # 2.63 h per run
    assert cifar[3] == "no"
    assert got["permuted MNIST 784-2000×3-10"][3] == "no"
    assert not any("cbp" in k for k in got)  # a skipped case gives no goal row


def test_a_raising_case_is_reported_and_the_check_goes_on(gc, monkeypatch):
    calls: list[int] = []

    def out_of_memory(build, device, reps, profile):
        calls.append(1)
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(gc, "measure", out_of_memory)
    report = gc.run_check(gc.Options(device="cpu", sections=("mnist",)))
    assert len(calls) == len(gc.TINY.mnist_seeds)  # every case was still tried
    assert [r.note for r in report.throughput] == ["error (see Errors)"] * len(calls)
    assert (
        report.errors[0]
        == "permuted MNIST bp S=1: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    )
    assert "## Errors" in report.markdown


def test_profile_summary_without_kernel_events(gc):
    events = [_ev(gc, "aten::mm", 10, 300.0, 0.0, False), _ev(gc, "cudaLaunchKernel", 10, 50.0, 0.0, False)]
    assert gc.summarize_profile(events, "cuda", 0.01, 10).startswith("no kernel events recorded")
