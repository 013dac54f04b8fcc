"""Packing methods into one job (params ``pack_methods``): validation, the jobs it plans, and the
contract that matters — each run's metrics are byte-identical to the same run trained alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lop.algos.method_layer import MethodStack
from lop.algos.perturb import GaussianPerturbation
from lop.cli import main
from lop.config import CBPConfig, EWCConfig, MethodConfig
from lop.errors import ConfigError
from lop.params import expand_jobs, load_params, select_runs
from lop.rng import RunStreams

SCR_PARAMS = """
experiment: scr
methods:
  bp: {{base: {{optimizer: sgd}}, grid: {{lr: [0.01, 0.003]}}}}
  l2: {{base: {{optimizer: sgd, lr: 0.01, weight_decay: 0.001}}}}
  snp: {{base: {{optimizer: sgd, lr: 0.01, weight_decay: 0.001, noise_std: 0.01}}}}
  cbp: {{base: {{optimizer: sgd, lr: 0.01, cbp: {{replacement_rate: 0.01, maturity: 20}}}}}}
  adam: {{base: {{optimizer: adam, lr: 0.001}}}}
  linear: {{base: {{optimizer: sgd, lr: 0.01, arch: linear}}}}
scales:
  smoke:
    problem: {{n_examples: 3000, flip_every: 500, bin_size: 500, chunk: 500}}
    seeds: [0, 4]
    seeds_per_job: 2
    pack_settings: {pack_settings}
    pack_methods: {pack}
    device: cpu
"""


def write_params(tmp_path: Path, pack: str, pack_settings: str = "true") -> Path:
    path = tmp_path / "scr.yaml"
    path.write_text(SCR_PARAMS.format(pack=pack, pack_settings=pack_settings))
    return path


@pytest.mark.parametrize(
    ("pack", "pack_settings", "message"),
    [
        ("[[bp, nope]]", "true", "no method 'nope'"),
        ("[[bp, l2], [l2, snp]]", "true", "method 'l2' is in two groups"),
        ("[[bp]]", "true", "at least two methods"),
        ("[[bp, l2]]", "false", "set pack_settings: true"),
        ("[[bp, adam]]", "true", "differ in 'optimizer'"),
        ("[[bp, linear]]", "true", "differ in 'arch'"),
        ("[bp, l2]", "true", "pack_methods"),
    ],
)
def test_bad_pack_methods_name_the_key(tmp_path, pack, pack_settings, message):
    path = write_params(tmp_path, pack, pack_settings)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert "pack_methods" in str(err.value) and message in str(err.value)


def test_a_pack_is_one_job_per_seed_chunk_with_every_members_runs(tmp_path):
    params = load_params(write_params(tmp_path, "[[bp, l2, snp, cbp]]"))
    jobs = expand_jobs(params, "smoke")
    assert [j.method for j in jobs] == ["bp+l2+snp+cbp", "adam", "linear"]
    packed = jobs[0]
    assert packed.setting_ids == [
        "bp/lr=0.01", "bp/lr=0.003", "l2/default", "snp/default", "cbp/default",
    ]  # fmt: skip
    assert packed.outputs[:3] == [
        "bp/lr=0.01/seed-0/run.json", "bp/lr=0.01/seed-4/run.json", "bp/lr=0.003/seed-0/run.json",
    ]  # fmt: skip
    assert len(packed.outputs) == 10
    _, runs = select_runs(params, "smoke", packed.method, packed.setting_ids, packed.seeds)
    assert [(r.method, r.seed) for r in runs][-2:] == [("cbp", 0), ("cbp", 4)]
    with pytest.raises(ConfigError, match=r"no setting 'lr=0\.01'"):
        select_runs(params, "smoke", packed.method, ["lr=0.01"], [0])  # packed ids name their method
    with pytest.raises(ConfigError, match="no method group"):
        select_runs(params, "smoke", "bp+adam", None, [0])


def test_each_run_of_a_pack_trains_exactly_as_alone(tmp_path):
    """The packed job (BP ×2, L2, S&P, CBP in one batch) writes, for every run, the metrics bytes that
    the run's own method job writes (CBP's neutral config for the others, S&P noise on its rows only)."""
    path = write_params(tmp_path, "[[bp, l2, snp, cbp]]")
    packed_out, alone_out = tmp_path / "packed", tmp_path / "alone"
    assert main(["run", "--params", str(path), "--scale", "smoke", "--method", "bp+l2+snp+cbp",
                 "--out", str(packed_out)]) == 0  # fmt: skip
    for method in ("bp", "l2", "snp", "cbp"):
        assert main(["run", "--params", str(path), "--scale", "smoke", "--method", method,
                     "--out", str(alone_out)]) == 0  # fmt: skip
    alone = sorted(alone_out.glob("*/*/seed-*/metrics.parquet"))
    assert len(alone) == 10
    for a in alone:
        p = packed_out / a.relative_to(alone_out)
        assert p.read_bytes() == a.read_bytes(), a.relative_to(alone_out)
        record = json.loads((p.parent / "run.json").read_text())
        assert record["group_size"] == 10 and record["method"] == a.parts[-4]
        assert record["config"] == json.loads((a.parent / "run.json").read_text())["config"]


def _stack(configs, fuse=False):
    streams = RunStreams(list(range(len(configs))))
    w = torch.zeros(len(configs), 4, 3)
    from lop.nets.units import UnitLayer

    layer = UnitLayer("layer1", torch.zeros(len(configs), 4, 3), torch.zeros(len(configs), 4), w,
                      torch.zeros(len(configs), 4), ("uniform", 0.1))  # fmt: skip
    return MethodStack(configs, streams, params=[w], unit_layers=[layer], fuse_if_possible=fuse)


def test_only_methods_with_a_neutral_config_mix_with_runs_without_them():
    cbp = MethodConfig(cbp=CBPConfig(replacement_rate=0.01))
    stack = _stack([MethodConfig(), cbp])
    assert stack.get("cbp").impl.rate.tolist() == [0.0, 0.01]  # the plain run: CBP that never replaces
    with pytest.raises(ConfigError, match="all runs of one batch must use this method or none"):
        _stack([MethodConfig(optimizer="adam"), MethodConfig(optimizer="adam", ewc=EWCConfig())])
    with pytest.raises(ConfigError, match="fused optimiser"):
        _stack([MethodConfig(optimizer="adam"), MethodConfig(optimizer="adam", cbp=CBPConfig())], fuse=True)


@pytest.mark.parametrize("std", [[0.0, 0.1, 0.0], [0.0, 0.1, 0.2], [0.1, 0.0, 0.2]])
def test_perturbation_leaves_runs_without_noise_untouched_and_others_as_alone(std: list[float]):
    """Rows with σ = 0 keep their bits (signed zeros too); noisy rows, a contiguous range (a slice)
    or not (index_add_), get exactly the noise they would get alone."""
    params = [torch.full((3, 2, 5), -0.0), torch.randn(3, 7, generator=torch.Generator().manual_seed(0))]
    before = [p.clone() for p in params]
    seeds = [5, 6, 7]
    pert = GaussianPerturbation(params, torch.tensor(std), RunStreams(seeds))
    assert (pert.span is not None) == (std != [0.1, 0.0, 0.2])
    assert (pert.rows is None) == (pert.span is not None)  # an index tensor only for scattered rows
    pert.step(3)
    for r, sigma in enumerate(std):
        if sigma == 0:
            for p, b in zip(params, before):
                assert torch.equal(p[r], b[r]) and torch.equal(torch.signbit(p[r]), torch.signbit(b[r]))
            continue
        alone = [b[r : r + 1].clone() for b in before]
        GaussianPerturbation(alone, torch.tensor([sigma]), RunStreams([seeds[r]])).step(3)
        for p, a, b in zip(params, alone, before):
            assert torch.equal(p[r : r + 1], a) and not torch.equal(a, b[r : r + 1])


PPO_PARAMS = """
experiment: ppo_ant
methods:
  standard: {base: {optimizer: adam, lr: 1.0e-4, betas: [0.9, 0.999]}}
  l2: {base: {optimizer: adam, lr: 1.0e-4, betas: [0.9, 0.999], weight_decay: 1.0e-4}}
  cbp_l2: {base: {optimizer: adam, lr: 1.0e-4, betas: [0.9, 0.999], weight_decay: 1.0e-4,
           cbp: {replacement_rate: 0.01, maturity: 4}}}
scales:
  smoke:
    problem: {total_steps: 512, rollout: 256, epochs: 1, minibatch: 64, hidden: [8, 8], probe_steps: 128}
    seeds: [0]
    pack_settings: true
    pack_methods: PACK
    device: cpu
"""


@pytest.mark.parametrize(
    ("pack", "error"),
    [
        ("[[standard, l2]]", None),
        ("[[standard, cbp_l2]]", "standard/default has no 'cbp' while others in the group do"),
        ("[[l2, cbp_l2]]", "l2/default has no 'cbp'"),
    ],
)
def test_fused_optimiser_experiments_refuse_partial_cbp_packs_at_validation(
    tmp_path: Path, pack: str, error: str | None
) -> None:
    """PPO's learner fuses Adam: a group mixing runs with and without CBP is refused by `lop params
    validate` (before any job), not only when the job starts."""
    path = tmp_path / "ppo_ant.yaml"
    path.write_text(PPO_PARAMS.replace("PACK", pack))
    if error is None:
        assert [j.method for j in expand_jobs(load_params(path), "smoke")] == ["standard+l2", "cbp_l2"]
        return
    with pytest.raises(ConfigError, match=error) as e:
        load_params(path)
    assert "pack_methods[0]" in e.value.where


def test_validation_and_method_layer_read_the_config_classes_resets_units_flag() -> None:
    """Every method config class declares ``resets_units``; the method layer's entries report exactly
    the flag of their config class (the one `lop params validate` reads), and plain fields reset nothing."""
    import dataclasses

    from lop.algos.method_layer import registry
    from lop.config import method_config_class, resets_units

    classes = {f.name: method_config_class(f.name) for f in dataclasses.fields(MethodConfig)}
    for key, cls in classes.items():
        if cls is not None:
            assert "resets_units" in vars(cls), f"{key}: {cls.__name__} does not declare resets_units"
    flagged = {key for key, cls in classes.items() if cls is not None and cls.resets_units}
    assert flagged == {"cbp", "redo"}
    assert {key for key in classes if resets_units(key)} == flagged
    assert {key for key, e in registry().items() if e.resets_units} == flagged & set(registry())


def test_a_neutral_method_that_resets_no_units_is_not_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Having a neutral config is not what refuses a partial pack of a fused-optimiser experiment: with
    CBP's class flag ``resets_units`` off, validation accepts [[standard, cbp_l2]] and the method layer
    keeps the fused kernel for the same batch (both read the one flag)."""
    monkeypatch.setattr(CBPConfig, "resets_units", False)
    path = tmp_path / "ppo_ant.yaml"
    path.write_text(PPO_PARAMS.replace("PACK", "[[standard, cbp_l2]]"))
    assert [j.method for j in expand_jobs(load_params(path), "smoke")] == ["standard+cbp_l2", "l2"]
    stack = _stack([MethodConfig(optimizer="adam"), MethodConfig(optimizer="adam", cbp=CBPConfig())], fuse=True)
    assert not stack.resettable and stack.get("cbp") is not None
