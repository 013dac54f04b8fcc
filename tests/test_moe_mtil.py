"""MTIL on a frozen CLIP (`moe_mtil`): the Transfer/Avg/Last metrics on a hand-computed matrix, the
user-prepared data layer (checksums, clear errors), and the experiment on generated stand-ins with the
tiny random CLIP."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lop import cl_metrics as cm
from lop.data.mtil import ORDER_I, load_mtil_dataset, write_mtil_dataset, write_mtil_standin
from lop.errors import ConfigError, DataError
from lop.experiments.base import RunSpec
from lop.experiments.moe_mtil import PAPER_LR_FACTORS, MoEMtilProblem, build
from lop.params import load_params, missing_files, skip_line

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params" / "moe_mtil.yaml"


# ---- metrics ----------------------------------------------------------------------------------------
def hand_matrix() -> np.ndarray:
    # T = 3; row 0 = before training (not used by the MTIL summaries)
    return np.array([
        [0.10, 0.20, 0.30],
        [0.90, 0.40, 0.35],
        [0.70, 0.95, 0.50],
        [0.60, 0.80, 0.85],
    ])  # fmt: skip


def test_mtil_metrics_on_a_hand_computed_matrix() -> None:
    r = hand_matrix()
    # Transfer: task 2 before training = R[1,2] = .40; task 3 = mean(R[1,3], R[2,3]) = .425; mean = .4125
    assert cm.mtil_transfer(r) == pytest.approx(0.4125, abs=1e-12)
    # Avg: the 9 entries of rows 1..3 sum to 6.05
    assert cm.mtil_avg(r) == pytest.approx(6.05 / 9, abs=1e-12)
    assert cm.mtil_last(r) == pytest.approx(0.75, abs=1e-12)
    batch = np.stack([r, r[:, ::-1][[0, 1, 2, 3]]])
    out = cm.mtil_summaries(batch)
    assert out["mtil_transfer"].shape == (2,) and out["mtil_transfer"][0] == pytest.approx(0.4125)
    assert np.isnan(cm.mtil_transfer(np.array([[0.1], [0.5]])))  # T = 1: no task is seen before training
    assert cm.mtil_avg(np.array([[0.1], [0.5]])) == 0.5


def test_mtil_transfer_ignores_row_zero_and_the_trained_entries() -> None:
    r = hand_matrix()
    r2 = r.copy()
    r2[0] = 0.0  # zero-shot row
    r2[[1, 2, 3], [0, 1, 2]] = 0.0  # diagonal
    r2[3, :2] = 0.0  # lower triangle
    r2[2, 0] = 0.0
    assert cm.mtil_transfer(r2) == cm.mtil_transfer(r)


# ---- data layer -------------------------------------------------------------------------------------
def _tiny(n: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n)
    return rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8), np.arange(n, dtype=np.int64) % n_classes


def test_write_then_load_roundtrip_and_checksums(tmp_path: Path) -> None:
    names = [f"c{k}" for k in range(10)]
    write_mtil_dataset(tmp_path, "eurosat", names, _tiny(20, 10), _tiny(10, 10))
    d = load_mtil_dataset(tmp_path, "eurosat")
    assert d.classes == names and d.train_images.shape == (20, 3, 8, 8) and not d.stand_in
    assert np.array_equal(d.test_labels, np.arange(10))
    # a changed byte is caught by the sha256 check, naming the dataset, the file and the fix
    path = tmp_path / "eurosat" / "train_images.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(
        DataError, match=r"MTIL dataset eurosat: .*train_images\.npy does not match its sha256.*moe_mtil\.md"
    ):
        load_mtil_dataset(tmp_path, "eurosat")
    load_mtil_dataset(tmp_path, "eurosat", verify=False)  # verify_data: false skips only the checksum


def test_missing_dataset_and_wrong_class_count_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"MTIL dataset dtd: .*dtd/manifest\.json is missing; prepare it .*moe_mtil\.md"
    ):
        load_mtil_dataset(tmp_path, "dtd")
    write_mtil_dataset(tmp_path, "dtd", ["a", "b"], _tiny(4, 2), _tiny(2, 2))  # the protocol's DTD has 47
    with pytest.raises(DataError, match=r"dtd.*2 classes, the protocol 47"):
        load_mtil_dataset(tmp_path, "dtd")
    (tmp_path / "dtd" / "test_labels.npy").unlink()
    with pytest.raises(DataError, match=r"test_labels\.npy is missing"):
        load_mtil_dataset(tmp_path, "dtd")
    with pytest.raises(DataError, match="not an MTIL dataset"):
        write_mtil_dataset(tmp_path, "imagenet", ["a"], _tiny(1, 1), _tiny(1, 1))
    with pytest.raises(DataError, match=r"labels must be"):
        write_mtil_dataset(tmp_path, "pets", ["a"], _tiny(2, 2), _tiny(1, 1))


def test_lop_run_without_the_data_prints_one_error_line(tmp_path, monkeypatch, capsys) -> None:
    from lop.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(["run", "--params", str(PARAMS), "--scale", "smoke", "--method", "zero_shot",
               "--setting-id", "default", "--seeds", "0", "--out", "out", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error:")
    assert "MTIL dataset aircraft" in err[0] and "mtil-standin/aircraft/manifest.json" in err[0]


# ---- the experiment ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> Path:
    return write_mtil_standin(tmp_path_factory.mktemp("mtil") / "mtil-standin")


def _runs(method: str, seeds=(0, 1)) -> list[RunSpec]:
    cfg = load_params(PARAMS).settings["smoke"][method][0].config
    return [RunSpec(method, "default", {}, cfg, s) for s in seeds]


def _problem(root: Path, **kw) -> MoEMtilProblem:
    return dataclasses.replace(load_params(PARAMS).problems["smoke"], data_dir=str(root), **kw)


def _train(problem: MoEMtilProblem, runs: list[RunSpec]):
    tr = build(problem, runs, torch.device("cpu"))
    blocks = [b for u in range(tr.n_units) for b in tr.train_unit(u)]
    return tr, blocks


def test_adapters_learn_the_first_task_above_zero_shot(standins: Path) -> None:
    problem = _problem(standins, datasets=("aircraft",), lr_factors=(5.0,), iterations=30)
    tr, blocks = _train(problem, _runs("moe_adapters"))
    acc = tr.acc.numpy()
    assert acc.shape == (2, 2, 1)
    assert (acc[:, 1, 0] >= acc[:, 0, 0] + 0.25).all(), acc  # 3 classes: chance is 1/3
    route = {b.name: b.values for b in blocks}["ddas_route_accuracy"]
    assert (route > 0.9).all()  # one autoencoder: its own task's images are kept in distribution


def test_full_matrix_summaries_and_zero_shot_rows(standins: Path) -> None:
    problem = _problem(standins)
    tr, blocks = _train(problem, _runs("moe_adapters"))
    t = len(problem.datasets)
    acc = tr.acc.numpy()
    assert acc.shape == (2, t + 1, t) and not np.isnan(acc).any()  # every task after every step
    names = [b.name for b in blocks]
    assert names.count("test_accuracy/task_3") == t + 1  # measured at steps 0..T, before and after training
    by = {(b.name, int(b.steps[0])): b.values[:, 0].numpy() for b in blocks}
    np.testing.assert_allclose(by["mean_accuracy", 2], acc[:, 2].mean(1))
    np.testing.assert_allclose(by["seen_accuracy", 2], acc[:, 2, :2].mean(1))
    np.testing.assert_allclose(by["unseen_accuracy", 2], acc[:, 2, 2:].mean(1))
    assert ("unseen_accuracy", t) not in by and ("seen_accuracy", 0) not in by
    assert ("ddas_zero_shot_fraction", t - 1) in by and ("ddas_zero_shot_fraction", t) not in by
    final = {b.name: b.values.numpy() for b in blocks if b.name.startswith("mtil_")}
    ref = cm.mtil_summaries(acc)
    for k in cm.MTIL_METRICS:
        np.testing.assert_allclose(final[k][:, 0], ref[k])
    assert (tr.adapters.frozen["visual"].sum(-1) == 2 * t).all()  # activate-freeze: 2 new experts per task
    zs, _ = _train(problem, _runs("zero_shot"))
    z = zs.acc.numpy()
    assert (z == z[:, :1]).all()  # CLIP never changes
    np.testing.assert_array_equal(z[:, 0], acc[:, 0])  # row 0 of every method is plain CLIP


def test_a_run_does_not_depend_on_its_batch(standins: Path) -> None:
    problem = _problem(standins, datasets=("aircraft", "dtd"), lr_factors=(5.0, 1.0))
    both, _ = _train(problem, _runs("moe_adapters", (0, 1)))
    one, _ = _train(problem, _runs("moe_adapters", (1,)))
    np.testing.assert_allclose(both.acc[1].numpy(), one.acc[0].numpy(), atol=1e-12)


def test_resume_from_state_continues_identically(standins: Path) -> None:
    """A trainer restored from another's state after task 1 trains and evaluates task 2 exactly like the
    original (adapters, usage counts, frozen experts, optimiser, autoencoders, accuracy matrix)."""
    problem = _problem(standins, datasets=("aircraft", "dtd"), lr_factors=(5.0, 1.0))
    runs = _runs("moe_adapters", (3,))
    a = build(problem, runs, torch.device("cpu"))
    a.train_unit(0)
    b = build(problem, runs, torch.device("cpu"))
    b.load_state_dict(dict(a.state_dict()))
    ma, mb = a.train_unit(1), b.train_unit(1)
    assert [m.name for m in ma] == [m.name for m in mb]
    for x, y in zip(ma, mb, strict=True):
        assert torch.equal(x.values, y.values), x.name


def test_lop_data_standin_mtil_writes_loadable_stand_ins(tmp_path: Path) -> None:
    from lop.cli import main

    assert main(["data", "standin", "mtil", "--raw", str(tmp_path / "s")]) == 0
    for name in ORDER_I:
        d = load_mtil_dataset(tmp_path / "s", name)
        assert d.stand_in and len(d.classes) == 3 and d.train_images.shape == (24, 3, 32, 32)


def test_bad_settings_are_rejected(standins: Path) -> None:
    assert [k for k, _ in _problem(standins, lr_factors=(1.0,)).validate()] == ["lr_factors"]
    assert any(
        k == "datasets" for k, _ in MoEMtilProblem(datasets=("imagenet",), lr_factors=(1.0,)).validate()
    )
    assert MoEMtilProblem().validate() == [] and len(PAPER_LR_FACTORS) == len(ORDER_I)
    order = "aircraft caltech101 cifar100 dtd eurosat flowers food mnist pets cars sun397"
    assert tuple(order.split()) == ORDER_I  # Order I
    sgd = dataclasses.replace(_runs("full_finetune")[0].config, optimizer="sgd")
    with pytest.raises(ConfigError, match="optimizer: adam"):
        build(_problem(standins), [RunSpec("full_finetune", "default", {}, sgd, 0)], torch.device("cpu"))


def test_demo_and_paper_are_skipped_with_one_line_without_weights_or_data(tmp_path: Path) -> None:
    p = load_params(PARAMS)
    assert missing_files(p, "smoke", tmp_path) == []
    for scale in ("demo", "paper"):
        missing = missing_files(p, scale, tmp_path)
        assert len(missing) == 13 and "data/prepared/mtil/sun397/manifest.json" in missing
        line = skip_line(p, scale, missing)
        assert "\n" not in line and "moe_mtil" in line and "docs/protocols/moe_mtil.md" in line


@pytest.mark.slow
def test_smoke_scale_end_to_end_through_lop_run(tmp_path, standins, monkeypatch) -> None:
    """`lop run` on the smoke scale writes complete runs with the full accuracy matrix and the summaries."""
    from lop.cli import main

    (tmp_path / "data" / "prepared").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "mtil-standin").symlink_to(standins)
    monkeypatch.chdir(tmp_path)
    rc = main(["run", "--params", str(PARAMS), "--scale", "smoke", "--method", "moe_adapters",
               "--setting-id", "default", "--seeds", "0,1", "--out", "out", "--no-progress"])  # fmt: skip
    assert rc in (0, None)
    for seed in (0, 1):
        d = tmp_path / "out" / "moe_adapters" / "default" / f"seed-{seed}"
        assert '"status": "complete"' in (d / "run.json").read_text()
        df = pd.read_parquet(d / "metrics.parquet")
        r = cm.accuracy_matrix(zip(df.step, df.metric, df.value), n_tasks=3)
        assert r.shape == (4, 3) and not np.isnan(r).any()
        last = df[df.metric == "mtil_avg"].value.to_numpy()
        assert last == pytest.approx([cm.mtil_avg(r)])
