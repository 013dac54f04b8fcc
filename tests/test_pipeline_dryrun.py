"""Snakemake at parse/dry-run level: lint, the paper grids, skipped figures, bad params files (issue #3)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import defaultdict

import pytest
from pipeline_helpers import ROOT, env_for, job_stats, snakemake

pytestmark = [pytest.mark.pipeline, pytest.mark.slow]

# Paper grids (docs/protocols/scr.md, docs/protocols/permuted_mnist.md): method -> (number of settings, seeds per setting).
PAPER_GRIDS: dict[str, dict[str, tuple[int, int]]] = {
    # docs/protocols/scr.md, SCR (ReLU): BP SGD and Adam at 3 steps, linear at 3 steps, L2 and S&P at 6 values, CBP at 5 rates.
    "scr": {
        "bp": (3, 100),
        "bp_adam": (3, 100),
        "linear": (3, 100),
        "l2": (6, 100),
        "snp": (6, 100),
        "cbp": (5, 100),
        "l2_init": (4, 100),  # L2-Init (not in the paper): the method layer's proof method
    },
    # docs/protocols/permuted_mnist.md, permuted MNIST: SGD 3 steps, widths 3, change rates 3 (one method each: they change the task
    # length), Adam 3, L2 3, S&P 3, CBP 3; 30 runs each.
    "permuted_mnist": {
        "bp": (3, 30),
        "bp_width": (3, 30),
        "bp_change_10k": (1, 30),
        "bp_change_100k": (1, 30),
        "bp_change_1m": (1, 30),
        "adam": (3, 30),
        "l2": (3, 30),
        "snp": (3, 30),
        "cbp": (3, 30),
        "l2_init": (3, 30),  # L2-Init (not in the paper)
    },
}
RUN_RE = re.compile(
    r"results/runs/(?P<exp>[^/]+)/paper/(?P<method>[^/]+)/(?P<sid>[^/]+)/seed-(?P<seed>\d+)/run\.json"
)


def _experiments() -> set[str]:
    import yaml

    return {
        yaml.safe_load(p.read_text())["experiment"]
        for p in (ROOT / "params").glob("*.yaml")
        if p.name != "figures.yaml"
    }


def test_lint_is_clean():
    proc = snakemake(ROOT, "--lint", timeout=300)
    assert "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr


def test_paper_dry_run_has_the_paper_grids():
    """Every figure's experiment: jobs = expand_jobs, runs per method = the paper's settings x seeds."""
    from lop.params import expand_jobs, load_params

    exps = sorted(_experiments() & set(PAPER_GRIDS))
    assert exps, "no experiment with a known paper grid has a params file"
    proc = snakemake(ROOT, "-n", "figures", "--config", "scale=paper", "experiments=all", timeout=600)
    out = proc.stdout + proc.stderr
    seeds: dict[tuple[str, str, str], set[int]] = defaultdict(set)
    for m in RUN_RE.finditer(out):
        seeds[m["exp"], m["method"], m["sid"]].add(int(m["seed"]))
    stats = job_stats(out)
    for exp in exps:
        jobs = expand_jobs(load_params(ROOT / "params" / f"{exp}.yaml"), "paper")
        assert sum(n for r, n in stats.items() if r.startswith(f"train__{exp}__")) == len(jobs), exp
        settings: dict[str, int] = defaultdict(int)
        for (e, method, _), s in seeds.items():
            if e == exp:
                settings[method] += 1
                assert len(s) == PAPER_GRIDS[exp][method][1], (exp, method)
        assert dict(settings) == {m: n for m, (n, _) in PAPER_GRIDS[exp].items()}, exp
        assert stats.get("aggregate", 0) >= 1


def test_figures_without_experiment_are_skipped_not_errors():
    from lop.analysis.registry import load_registry

    registry = load_registry(ROOT / "params" / "figures.yaml")
    proc = snakemake(ROOT, "-n", "figures", "--config", "scale=smoke", "experiments=all", timeout=300)
    out = proc.stdout + proc.stderr
    stats = job_stats(out)
    exps = _experiments()
    for fid, spec in registry.figures.items():
        assert (f"figure__{fid}" in stats) == (spec.experiment in exps), fid
    if any(spec.experiment not in exps for spec in registry.figures.values()):
        assert "skipping figure(s)" in out


def test_bad_params_file_stops_before_any_job(tmp_path):
    """Validation happens at parse time: no job is scheduled, the message names the file and the key."""
    params = tmp_path / "params"
    shutil.copytree(ROOT / "params", params)
    bad = params / "scr.yaml"
    text = bad.read_text()
    assert "seeds_per_job: 2" in text
    bad.write_text(text.replace("seeds_per_job: 2", "seeds_per_job: 2\n    colour: red", 1))
    proc = snakemake(
        ROOT, "-n", "figures", "--config", "scale=smoke", f"params_dir={params}", check=False, timeout=300
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert str(bad) in out and "colour" in out and "unknown key" in out
    assert "Job stats" not in out
    cli = subprocess.run(
        [sys.executable, "-m", "lop.cli", "params", "validate", str(bad)],
        cwd=ROOT,
        env=env_for(ROOT),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 2 and str(bad) in cli.stderr and "colour" in cli.stderr


def test_missing_registry_is_a_clear_error(tmp_path):
    proc = snakemake(
        ROOT, "-n", "figures", "--config", f"figures={tmp_path / 'none.yaml'}", check=False, timeout=300
    )
    assert proc.returncode != 0 and "figure registry not found" in proc.stdout + proc.stderr


def test_from_cache_without_runs_says_to_pull(tmp_path):
    proc = snakemake(
        ROOT,
        "-n",
        "figures",
        "--config",
        "scale=smoke",
        "from_cache=true",
        f"results={tmp_path / 'results'}",
        check=False,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "dvc pull" in out and "from_cache" in out


def test_default_target_skips_the_clip_experiment_without_weights():
    """Without the CLIP weights the demo scale of moe_cifar is left out with one line, nothing fails
    (docs/protocols/moe_cifar.md, "Weights"), also when every experiment is asked for."""
    if (ROOT / "data/clip/ViT-B-16.pt").is_file():
        pytest.skip("the CLIP weights are present here")
    proc = snakemake(ROOT, "-n", "--cores", "1", "--config", "experiments=all", timeout=300)
    out = proc.stdout + proc.stderr
    lines = [ln for ln in out.splitlines() if "skipping experiment moe_cifar" in ln]
    assert len(lines) == 1 and "data/clip/ViT-B-16.pt" in lines[0] and "moe_cifar.md" in lines[0]
    assert "train__moe_cifar__" not in out


def test_the_default_demo_target_draws_the_papers_ten_figures():
    """Issue #11: a fresh clone's `snakemake --cores 2 figures` is the paper's 10 figures at demo scale
    (the `paper` group of config/config.yaml); the continual-learning systems are `experiments=cl`."""
    proc = snakemake(ROOT, "-n", "figures", timeout=300)
    stats = job_stats(proc.stdout + proc.stderr)
    drawn = {r.removeprefix("figure__") for r in stats if r.startswith("figure__")}
    assert drawn == {"fig1b", "fig1c", "fig2", "fig3", "fig4", "ed_fig2", "ed_fig3", "ed_fig4", "ed_fig5",
                     "ed_fig5bcd"}  # fmt: skip
    trained = {r.split("__")[1] for r in stats if r.startswith("train__")}
    assert trained == {"scr", "permuted_mnist", "continual_imagenet", "incremental_cifar", "ppo_ant",
                       "ppo_slippery_ant", "ppo_mujoco"}  # fmt: skip
    cl = job_stats(snakemake(ROOT, "-n", "figures", "--config", "experiments=cl", timeout=300).stdout)
    assert {r for r in cl if r.startswith("figure__cl_")} and not {"figure__fig1b", "figure__ed_fig2"} & set(
        cl
    )
