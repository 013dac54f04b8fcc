"""DEN (lop.algos.den, lop.algos.den_net) on hand-made networks: masking, breadth-first selection,
expansion and pruning, splitting, timestamped inference, batch independence, resume, bad settings."""

from __future__ import annotations

import pytest
import torch

from lop.algos.den import DENLearner, den_capacity
from lop.algos.den_net import UNBORN, DENNetwork
from lop.config import DENConfig, MethodConfig, from_dict, to_dict
from lop.errors import ConfigError
from lop.metrics import macro_auroc
from lop.rng import RunStreams

CPU = torch.device("cpu")


def make_net(seeds=(0,), in_dim=4, widths=(3, 3), cap=5, n_tasks=3, n_out=2) -> DENNetwork:
    streams = RunStreams(list(seeds), CPU)
    capacity = torch.full((len(seeds),), cap, dtype=torch.int64)
    return DENNetwork(in_dim, widths, capacity, n_tasks, n_out, streams)


def all_outputs(net: DENNetwork) -> torch.Tensor:
    return torch.ones(net.streams.n, net.n_out, dtype=torch.bool)


# ---- masking ---------------------------------------------------------------------------------------
def test_initial_network_has_width_live_units_born_at_task_1():
    net = make_net(seeds=(0, 1))
    for a, b in zip(net.alive, net.birth):
        assert a.sum(1).tolist() == [3, 3]
        assert torch.equal(b[:, :3], torch.ones(2, 3, dtype=torch.int64))
        assert (b[:, 3:] == UNBORN).all()
    assert (net.weights[0][:, 3:] == 0).all() and (net.weights[1][:, :, 3:] == 0).all()


def test_dead_and_unborn_units_contribute_nothing_and_get_no_gradient():
    net = make_net()
    net.init_head(1, all_outputs(net))
    x = torch.rand(1, 7, 4)
    before = net.forward(x, 1)
    # put garbage into the empty slots' fan-in, bias and fan-out: the output must not move
    with torch.no_grad():
        net.weights[0][:, 3:] = 5.0
        net.biases[0][:, 3:] = 5.0
        net.weights[1][:, :, 3:] = 5.0
        net.weights[1][:, 3:] = 5.0
        net.biases[1][:, 3:] = 5.0
        net.head_w[:, 0, :, 3:] = 5.0
    assert torch.equal(net.forward(x, 1), before)
    for p in net.params():
        p.requires_grad_(True)
    grads = torch.autograd.grad(net.forward(x, 1).square().sum(), net.params())
    w0, w1, b0, b1, hw, _ = grads
    assert (w0[:, 3:] == 0).all() and (b0[:, 3:] == 0).all() and (b1[:, 3:] == 0).all()
    assert (w1[:, 3:] == 0).all() and (w1[:, :, 3:] == 0).all() and (hw[:, 0, :, 3:] == 0).all()
    assert (w0[:, :3] != 0).any()


# ---- breadth-first selection ---------------------------------------------------------------------
def sparse_net() -> DENNetwork:
    """Layer 0 units 0,1,2 read pixels; layer 1: unit 0 reads layer-0 unit 1, unit 1 reads unit 0,
    unit 2 reads units 1 and 2. Head 2: output 0 reads layer-1 unit 0, output 1 reads unit 2."""
    net = make_net()
    with torch.no_grad():
        net.weights[0].zero_()
        net.weights[0][0, :3, :] = 1.0
        net.weights[1].zero_()
        net.weights[1][0, 0, 1] = 0.5
        net.weights[1][0, 1, 0] = 0.5
        net.weights[1][0, 2, 1] = -0.5
        net.weights[1][0, 2, 2] = 0.25
        net.head_w.zero_()
        net.head_w[0, 1, 0, 0] = 1.0
        net.head_w[0, 1, 1, 2] = 1.0
    return net


def test_breadth_first_search_selects_exactly_the_units_reaching_the_head():
    net = sparse_net()
    sel = net.select_subnetwork(2, all_outputs(net))
    assert sel[1][0].nonzero().flatten().tolist() == [0, 2]
    assert sel[0][0].nonzero().flatten().tolist() == [1, 2]


def test_search_follows_every_output_of_the_task_not_only_the_first():
    """The public code reads output 0 only; from output 0 alone the search would stop at unit 0."""
    net = sparse_net()
    only_first = torch.tensor([[True, False]])
    sel = net.select_subnetwork(2, only_first)
    assert sel[1][0].nonzero().flatten().tolist() == [0]
    assert sel[0][0].nonzero().flatten().tolist() == [1]


def test_search_ignores_units_born_in_the_current_task():
    net = sparse_net()
    net.add_units(2, torch.tensor([1]), all_outputs(net))  # slot 3 of each layer, fan-out into head 2
    sel = net.select_subnetwork(2, all_outputs(net))
    assert not sel[1][0, 3] and not sel[0][0, 3]


# ---- expansion and pruning --------------------------------------------------------------------------
def test_add_units_fills_free_slots_per_run_up_to_capacity():
    streams = RunStreams([0, 1], CPU)
    net = DENNetwork(4, (3, 3), torch.tensor([5, 4]), 3, 2, streams)
    new = net.add_units(2, torch.tensor([5, 1]), all_outputs(net))
    assert [n.sum(1).tolist() for n in new] == [[2, 1], [2, 1]]
    assert [n.tolist() for n in net.live_units()] == [[5, 4], [5, 4]]
    assert net.birth[0][0, 3:].tolist() == [2, 2] and net.birth[0][1, 3:].tolist() == [2, UNBORN]
    # new units read every live input and feed the next layer's old units and the task's head
    assert (net.weights[0][0, 3:] != 0).all()
    assert (net.weights[1][0, :3, 3:] != 0).all() and (net.weights[1][0, 3:, :] != 0).all()
    assert (net.head_w[0, 1, :, 3:] != 0).all() and (net.head_w[0, 0] == 0).all()


def test_units_with_a_zeroed_fan_in_are_pruned():
    net = make_net(seeds=(0, 1))
    new = net.add_units(2, torch.tensor([2, 2]), all_outputs(net))
    with torch.no_grad():
        net.weights[1][0, 4] = 0.0  # run 0, layer 1, second new unit: group lasso zeroed it
        net.weights[0][1, 3] = 0.0  # run 1, layer 0, first new unit
        net.weights[0][0, 0] = 0.0  # an old unit with a zero fan-in is not a candidate
    dead = net.prune_empty(new)
    assert [d.nonzero().tolist() for d in dead] == [[[1, 3]], [[0, 4]]]
    assert [n.tolist() for n in net.live_units()] == [[5, 4], [4, 5]]
    assert not net.alive[0][1, 3] and net.birth[0][1, 3] == UNBORN
    assert (net.weights[1][1, :, 3] == 0).all()  # its fan-out is gone too
    assert net.alive[0][0, 0]


def learner(seeds=(0,), den=None, steps=30, widths=(6, 5), n_tasks=3, **method) -> DENLearner:
    cfg = {"optimizer": "adam", "lr": 1e-2, "weight_decay": 1e-4, **method}
    cfg["den"] = {"phase_steps": steps, "head_steps": 5, **(den or {})}
    methods = [from_dict(MethodConfig, cfg)] * len(seeds)
    return DENLearner(8, widths, 4, n_tasks, methods, RunStreams(list(seeds), CPU), steps, 10)


def toy_sampler(streams: RunStreams, task: int):
    """A separable 4-class toy task per task number (class means drawn from the task's stream)."""
    means = RunStreams([0] * streams.n, CPU).normal("toy/means", task, (4, 8), std=2.0)

    def sample(phase: int, step: int):
        y = streams.randint("toy/y", (task * 10 + phase) * 100_000 + step, (16,), 4)
        noise = streams.normal("toy/x", (task * 10 + phase) * 100_000 + step, (16, 8))
        return means.gather(1, y.unsqueeze(2).expand(-1, -1, 8)) + noise, y

    return sample


def outputs_all(n: int) -> torch.Tensor:
    return torch.ones(n, 4, dtype=torch.bool)


def test_expansion_adds_k_units_and_group_lasso_can_remove_them_all():
    grows = learner(den={"loss_threshold": 0.0, "expand_units": 3, "group_lasso": 0.0, "split_max": 0})
    prunes = learner(den={"loss_threshold": 0.0, "expand_units": 3, "group_lasso": 10.0, "split_max": 0})
    for lrn in (grows, prunes):
        for t in (1, 2):
            out = lrn.learn_task(t, toy_sampler(lrn.streams, t), outputs_all(1))
        assert out["expanded"].tolist() == [1]
    assert [n.tolist() for n in grows.net.live_units()] == [[9], [8]]
    assert [n.tolist() for n in prunes.net.live_units()] == [[6], [5]]


def test_no_expansion_below_the_loss_threshold():
    lrn = learner(den={"loss_threshold": 1e6, "split_max": 0})
    for t in (1, 2):
        out = lrn.learn_task(t, toy_sampler(lrn.streams, t), outputs_all(1))
    assert out["expanded"].tolist() == [0]
    assert [n.tolist() for n in lrn.net.live_units()] == [[6], [5]]


# ---- splitting ------------------------------------------------------------------------------------
def test_units_that_drifted_more_than_sigma_are_duplicated():
    net = make_net(cap=6)
    net.init_head(2, all_outputs(net))
    prev_w = [w.clone() for w in net.weights]
    prev_b = [b.clone() for b in net.biases]
    with torch.no_grad():
        net.weights[1][0, 0, :3] += 0.3  # drift √(3·0.09) ≈ 0.52
        net.weights[1][0, 2, 0] += 0.2  # drift 0.2
        net.weights[1][0, 1, 0] += 0.01  # below σ
        net.biases[1][0, 0] += 1.0
    drifted = [w.clone() for w in net.weights]
    head_before = net.head_w[0, 1].clone()
    originals, copies = net.split_units(2, prev_w, prev_b, torch.tensor([0.1]), torch.tensor([10]))
    assert originals[1][0].nonzero().flatten().tolist() == [0, 2]
    assert copies[1][0].nonzero().flatten().tolist() == [3, 4]
    assert not originals[0].any() and not copies[0].any()
    # the largest drift takes the first free slot; the copies keep the update, the originals are restored
    assert torch.equal(net.weights[1][0, 3], drifted[1][0, 0])
    assert torch.equal(net.weights[1][0, 4], drifted[1][0, 2])
    assert torch.equal(net.weights[1][0, 0], prev_w[1][0, 0]) and net.biases[1][0, 0] == prev_b[1][0, 0]
    assert net.biases[1][0, 3] == prev_b[1][0, 0] + 1.0
    assert net.birth[1][0].tolist()[:5] == [1, 1, 1, 2, 2]
    # the unit below σ keeps its update and is not split
    assert torch.equal(net.weights[1][0, 1], drifted[1][0, 1])
    # the new head reads the copies instead of the originals
    assert torch.equal(net.head_w[0, 1, :, 3], head_before[:, 0])
    assert (net.head_w[0, 1, :, 0] == 0).all() and (net.head_w[0, 1, :, 2] == 0).all()


def test_split_keeps_at_most_split_max_largest_drifts_and_old_tasks_are_untouched():
    net = make_net(cap=6)
    net.init_head(1, all_outputs(net))
    net.init_head(2, all_outputs(net))
    x = torch.rand(1, 5, 4)
    prev_w = [w.clone() for w in net.weights]
    prev_b = [b.clone() for b in net.biases]
    task1 = net.forward(x, 1)
    with torch.no_grad():
        net.weights[0][0, 0] += 0.5
        net.weights[0][0, 1] += 1.0
        net.weights[0][0, 2] += 0.7
    originals, copies = net.split_units(2, prev_w, prev_b, torch.tensor([0.1]), torch.tensor([1]))
    assert originals[0][0].nonzero().flatten().tolist() == [1]
    assert copies[0][0].nonzero().flatten().tolist() == [3]
    # old consumers do not read the copy: task 1 sees unit 1 restored, units 0 and 2 still drifted
    assert (net.weights[1][0, :3, 3] == 0).all()
    with torch.no_grad():
        net.weights[0][0, 0] -= 0.5
        net.weights[0][0, 2] -= 0.7
    assert torch.equal(net.forward(x, 1), task1)


# ---- timestamped inference ------------------------------------------------------------------------
def test_units_born_later_do_not_change_earlier_tasks_outputs():
    net = make_net(seeds=(0, 1), cap=8)
    net.init_head(1, all_outputs(net))
    x = torch.rand(2, 9, 4)
    task1 = net.forward(x, 1)
    net.init_head(2, all_outputs(net))
    new = net.add_units(2, torch.tensor([3, 2]), all_outputs(net))
    assert (net.weights[1][:, :3][:, :, 3:] != 0).any()  # old units of layer 1 now read new units
    assert torch.equal(net.forward(x, 1), task1)
    _, hidden = net.forward(x, 1, return_hidden=True)
    assert all((h.transpose(1, 2)[n] == 0).all() for h, n in zip(hidden, new))
    _, hidden = net.forward(x, 2, return_hidden=True)
    assert all((h.transpose(1, 2)[n] != 0).any() for h, n in zip(hidden, new))


def test_learning_a_task_with_frozen_old_units_keeps_earlier_predictions():
    """With σ = 0 every old unit whose fan-in moved is split and restored, and units born in task 2 are
    invisible to task 1, so task 1's outputs after task 2 equal those before it exactly."""
    lrn = learner(den={"loss_threshold": 0.0, "split_threshold": 0.0, "split_max": 20})
    lrn.learn_task(1, toy_sampler(lrn.streams, 1), outputs_all(1))
    x = torch.randn(1, 20, 8)
    before = lrn.log_probs(1, x)
    lrn.learn_task(2, toy_sampler(lrn.streams, 2), outputs_all(1))
    torch.testing.assert_close(lrn.log_probs(1, x), before, rtol=0, atol=0)


# ---- batch independence and resume ----------------------------------------------------------------
def test_a_run_does_not_depend_on_its_batch():
    def cfg(thr: float) -> MethodConfig:
        return from_dict(
            MethodConfig,
            {
                "optimizer": "adam",
                "lr": 1e-2,
                "den": {"phase_steps": 20, "head_steps": 4, "loss_threshold": thr},
            },
        )

    alone = DENLearner(8, (6, 5), 4, 3, [cfg(0.0)], RunStreams([7], CPU), 20, 10)
    batch = DENLearner(8, (6, 5), 4, 3, [cfg(1e6), cfg(0.0)], RunStreams([3, 7], CPU), 20, 10)
    for t in (1, 2, 3):
        a = alone.learn_task(t, toy_sampler(alone.streams, t), outputs_all(1))
        b = batch.learn_task(t, toy_sampler(batch.streams, t), outputs_all(2))
        assert b["expanded"].tolist()[1] == a["expanded"].tolist()[0]
    assert b["expanded"].tolist()[0] == 0
    for x, y in zip(alone.net.params(), batch.net.params()):
        assert torch.equal(x[0], y[1])
    for x, y in zip(alone.net.birth + alone.net.alive, batch.net.birth + batch.net.alive):
        assert torch.equal(x[0], y[1])


def test_state_dict_round_trip_resumes_bit_identically(tmp_path):
    a = learner(seeds=(0, 1), den={"loss_threshold": 0.0})
    a.learn_task(1, toy_sampler(a.streams, 1), outputs_all(2))
    a.learn_task(2, toy_sampler(a.streams, 2), outputs_all(2))
    torch.save(a.state_dict(), tmp_path / "s.pt")
    b = learner(seeds=(0, 1), den={"loss_threshold": 0.0})
    b.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    ra = a.learn_task(3, toy_sampler(a.streams, 3), outputs_all(2))
    rb = b.learn_task(3, toy_sampler(b.streams, 3), outputs_all(2))
    assert all(torch.equal(ra[k], rb[k]) for k in ra)
    for x, y in zip(a.net.params() + a.net.alive + a.net.birth, b.net.params() + b.net.alive + b.net.birth):
        assert torch.equal(x, y)


# ---- settings ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key,value",
    [
        ("expand_units", 0),
        ("expand_units", -1),
        ("loss_threshold", -0.1),
        ("split_threshold", -1.0),
        ("l1", -1e-5),
        ("group_lasso", -1.0),
        ("drift_l2", -0.5),
        ("capacity", 0),
        ("lr_decay", 0.0),
    ],
)
def test_bad_settings_name_their_key(key, value):
    with pytest.raises(ConfigError, match=rf"m\.den\.{key}"):
        from_dict(MethodConfig, {"optimizer": "adam", "den": {key: value}}, "m")


def test_capacity_below_the_initial_width_is_rejected():
    with pytest.raises(ConfigError, match=r"den\.capacity.*smaller than the initial width 6"):
        learner(den={"capacity": 5})
    assert den_capacity(DENConfig(), (6, 5), 3) == 6 + 2 * (10 + 10)
    assert den_capacity(DENConfig(capacity=7), (6, 5), 3) == 7


def test_den_serialises_only_when_set():
    assert "den" not in to_dict(from_dict(MethodConfig, {}))
    assert to_dict(from_dict(MethodConfig, {"den": {"expand_units": 3}}))["den"]["expand_units"] == 3


# ---- AUROC -----------------------------------------------------------------------------------------
def test_macro_auroc_matches_pairwise_counting_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (2, 30, 3), generator=g).to(torch.float32)  # many ties
    y = torch.randint(0, 3, (2, 30), generator=g)
    got = macro_auroc(scores, y)
    first = macro_auroc(scores, y, torch.tensor([[True, False, False]] * 2))
    for s in range(2):
        aucs = []
        for c in range(3):
            pos, neg = scores[s, y[s] == c, c], scores[s, y[s] != c, c]
            diff = pos[:, None] - neg[None, :]
            aucs.append(float((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean()))
        assert abs(float(got[s]) - sum(aucs) / 3) < 1e-12
        assert abs(float(first[s]) - aucs[0]) < 1e-12


def test_macro_auroc_is_one_for_perfect_scores_and_nan_without_positives():
    y = torch.tensor([[0, 1, 1, 0]])
    scores = torch.nn.functional.one_hot(y, 2).float()
    assert float(macro_auroc(scores, y)[0]) == 1.0
    assert torch.isnan(
        macro_auroc(scores, torch.zeros(1, 4, dtype=torch.int64), torch.tensor([[False, True]]))
    )[0]
