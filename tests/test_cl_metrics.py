"""Forgetting metrics (lop.cl_metrics) on hand-made matrices and on the published SI fixture."""

from __future__ import annotations

import numpy as np
import pytest

from lop import cl_metrics as cm

# Synaptic Intelligence, c = 0.1, 10-task permuted MNIST: R[i, i] and R[10, .] as published
# with the method's code (docs/protocols/metrics.md); expected ACC 0.969, BWT -0.011.
SI_DIAG = [.983, .983, .984, .981, .980, .978, .976, .978, .977, .978]
SI_FINAL = [.964, .970, .962, .968, .970, .967, .968, .973, .974, .978]


def si_fixture() -> np.ndarray:
    r = np.full((11, 10), np.nan)
    for c, v in enumerate(SI_DIAG):
        r[c + 1, c] = v
    r[10, :] = SI_FINAL
    return r


def test_si_fixture_acc_and_bwt() -> None:
    r = si_fixture()
    assert round(cm.acc(r), 3) == 0.969
    assert -0.012 < cm.bwt(r) < -0.011  # published as -.011 (truncated)
    assert cm.bwt(r) == pytest.approx(-0.104 / 9, abs=1e-12)
    assert np.isnan(cm.fwt(r))  # no random-init row in the fixture


def hand_matrix() -> np.ndarray:
    # T = 3; row 0 random init
    return np.array([
        [0.10, 0.20, 0.30],
        [0.90, 0.40, 0.35],
        [0.70, 0.95, 0.50],
        [0.60, 0.80, 0.85],
    ])


def test_hand_matrix_every_summary() -> None:
    r = hand_matrix()
    assert cm.acc(r) == pytest.approx((0.60 + 0.80 + 0.85) / 3)
    assert cm.bwt(r) == pytest.approx(((0.60 - 0.90) + (0.80 - 0.95)) / 2)
    assert cm.fwt(r) == pytest.approx(((0.40 - 0.20) + (0.50 - 0.30)) / 2)
    # task 1 best over rows 1..2 is 0.90; task 2 best over row 2 is 0.95
    assert cm.forgetting(r) == pytest.approx(((0.90 - 0.60) + (0.95 - 0.80)) / 2)
    a1, a2, a3 = 0.90, (0.70 + 0.95) / 2, (0.60 + 0.80 + 0.85) / 3
    assert cm.avg_incremental_acc(r) == pytest.approx((a1 + a2 + a3) / 3)


def test_forgetting_uses_the_best_past_accuracy_not_the_diagonal() -> None:
    r = hand_matrix()
    r[2, 0] = 0.99  # task 1 improved after task 2 was trained, then fell
    assert cm.forgetting(r) == pytest.approx(((0.99 - 0.60) + (0.95 - 0.80)) / 2)
    assert cm.bwt(r) == pytest.approx(((0.60 - 0.90) + (0.80 - 0.95)) / 2)  # BWT is unchanged


def test_batch_rows_are_independent() -> None:
    a, b = hand_matrix(), si_fixture()[:4, :3].copy()
    b[np.isnan(b)] = 0.5
    batch = np.stack([a, b])
    for name, fn in [("acc", cm.acc), ("bwt", cm.bwt), ("fwt", cm.fwt),
                     ("forgetting", cm.forgetting), ("avg", cm.avg_incremental_acc)]:
        out = fn(batch)
        assert out.shape == (2,), name
        assert out[0] == pytest.approx(fn(a)) and out[1] == pytest.approx(fn(b)), name


def test_single_task_transfer_metrics_are_nan() -> None:
    r = np.array([[0.1], [0.9]])
    assert cm.acc(r) == pytest.approx(0.9)
    assert np.isnan(cm.bwt(r)) and np.isnan(cm.fwt(r)) and np.isnan(cm.forgetting(r))
    assert cm.avg_incremental_acc(r) == pytest.approx(0.9)


@pytest.mark.parametrize("shape", [(3, 3), (2, 3), (4,), (0, 0)])
def test_wrong_shape_is_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="shape"):
        cm.acc(np.zeros(shape))


def test_accuracy_matrix_from_tidy_rows() -> None:
    r = hand_matrix()
    rows = [(i, cm.task_metric(j + 1), r[i, j]) for i in range(4) for j in range(3)]
    rows.append((2, "loss", 123.0))
    np.testing.assert_array_equal(cm.accuracy_matrix(rows), r)
    partial = cm.accuracy_matrix([(3, "test_accuracy/task_2", 0.8)], n_tasks=3)
    assert partial.shape == (4, 3) and partial[3, 1] == 0.8 and np.isnan(partial).sum() == 11
    with pytest.raises(ValueError, match="task-sequence"):
        cm.accuracy_matrix([(0, "loss", 1.0)])
