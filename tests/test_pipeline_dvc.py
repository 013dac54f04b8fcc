"""DVC (issue #3, items 4-5): `dvc repro` is idempotent, and cached results rebuild every figure from a
fresh clone without a single training job."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import threading
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from pipeline_helpers import ROOT, dvc, env_for, fresh_copy, git, run, snakemake, training_jobs

SCALE_LINES = {"  - scale: demo": "  - scale: smoke"}
SUBSET = ("scr", "permuted_mnist")  # two quick experiments keep the DVC tests to minutes


def _check_lock_module():
    spec = importlib.util.spec_from_file_location("check_lock", ROOT / "workflow/scripts/check_lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _params_experiments(root: Path, scale: str) -> set[str]:
    """Experiments with this scale, except those whose scale needs user-provided files (`needs_files`,
    e.g. CLIP weights): those run through Snakemake only, which skips them while the files are missing."""
    out = set()
    for p in (root / "params").glob("*.yaml"):
        if p.name == "figures.yaml":
            continue
        data = yaml.safe_load(p.read_text())
        spec = data["scales"].get(scale)
        if spec is not None and not spec.get("needs_files"):
            out.add(data["experiment"])
    return out


def test_dvc_pipelines_are_generated_from_the_params_files():
    """dvc.yaml files follow params/*.yaml (workflow/scripts/dvc_pipeline.py): a new experiment gets its stage."""
    proc = subprocess.run(
        [sys.executable, "workflow/scripts/dvc_pipeline.py", "--check"],
        cwd=ROOT,
        env=env_for(ROOT),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("dvc_file", ["dvc.yaml", "workflow/dvc/paper/dvc.yaml"])
def test_every_experiment_has_a_dvc_stage(dvc_file):
    """Each experiment: its stage keeps finished runs (persist) and keeps checkpoints off the push."""
    stages = yaml.safe_load((ROOT / dvc_file).read_text())["stages"]
    exps = _params_experiments(ROOT, "demo" if dvc_file == "dvc.yaml" else "paper")
    assert {s.removeprefix("train_") for s in stages if s.startswith("train_")} == exps
    fig_deps = set(stages["figures"]["deps"])
    assert {f"results/agg/{e}-${{scale}}.parquet" for e in exps} <= fig_deps
    for e in exps:
        outs = stages[f"train_{e}"]["outs"]
        (runs,) = [o for o in outs if isinstance(o, dict) and f"results/runs/{e}/${{scale}}" in o]
        assert runs[f"results/runs/{e}/${{scale}}"]["persist"] is True
        (models,) = [o for o in outs if isinstance(o, dict) and f"results/models/{e}/${{scale}}" in o]
        assert models[f"results/models/{e}/${{scale}}"]["push"] is False


def _smoke_copy(ws: Path) -> Path:
    """A fresh copy of the working tree holding two experiments, its dvc.yaml at smoke scale."""
    fresh_copy(ws)
    for p in (ws / "params").glob("*.yaml"):
        if p.name != "figures.yaml" and yaml.safe_load(p.read_text())["experiment"] not in SUBSET:
            p.unlink()
    run([sys.executable, "workflow/scripts/dvc_pipeline.py"], ws, timeout=300)
    text = (ws / "dvc.yaml").read_text()
    for old, new in SCALE_LINES.items():
        assert old in text, f"dvc.yaml no longer has {old!r}; update the test"
        text = text.replace(old, new)
    (ws / "dvc.yaml").write_text(text)
    return ws


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory) -> tuple[Path, Path, str]:
    """A fresh copy (of two experiments) at smoke scale with local remotes, after one `dvc repro`."""
    base = tmp_path_factory.mktemp("dvc")
    ws = _smoke_copy(base / "lop")
    remote = base / "remote"
    for name in ("results", "data", "models"):
        dvc(ws, "remote", "modify", "--local", name, "url", str(remote / name), timeout=120)
    proc = dvc(ws, "repro", timeout=1200)
    return ws, remote, proc.stdout + proc.stderr


@pytest.mark.pipeline
@pytest.mark.slow
def test_repro_runs_everything_then_nothing(dvc_repo):
    ws, _, first = dvc_repo
    assert "Running stage 'figures'" in first
    assert list((ws / "results/figures/smoke").glob("*.png"))
    lock = (ws / "dvc.lock").read_text()
    second = dvc(ws, "repro", timeout=600)
    out = second.stdout + second.stderr
    assert "Running stage" not in out, out
    assert (ws / "dvc.lock").read_text() == lock
    status = dvc(ws, "status", "dvc.yaml", timeout=300)  # the paper pipeline is not built here
    assert "up to date" in status.stdout


@pytest.mark.pipeline
@pytest.mark.slow
@pytest.mark.timeout(3600)  # two smoke-scale `dvc repro` (the fixture's and its own)
def test_a_second_clean_rebuild_reproduces_every_hash_of_the_lock(dvc_repo, tmp_path):
    """Every DVC-tracked output (runs folders with their run.json, aggregates, figures, tables, metrics)
    is deterministic: another clean copy's `dvc repro` writes the same dvc.lock, output for output
    (workflow/scripts/check_lock.py compares the same way against the committed lock)."""
    ws, _, _ = dvc_repo
    again = _smoke_copy(tmp_path / "again")
    dvc(again, "repro", timeout=1200)
    assert list((again / "results/runs").rglob("run.meta.json"))  # written, but not hashed
    first, second = (yaml.safe_load((d / "dvc.lock").read_text()) for d in (ws, again))
    check_lock = _check_lock_module()
    assert check_lock.lock_outputs(first)  # runs, aggregates, figures, tables, metrics
    assert check_lock.differences(first, second, None) == []


@pytest.mark.pipeline
@pytest.mark.slow
def test_cached_results_rebuild_every_figure_without_training(dvc_repo, tmp_path):
    ws, remote, _ = dvc_repo
    dvc(ws, "push", timeout=600)
    assert list((remote / "results").rglob("*"))
    assert not (remote / "models").exists()  # checkpoints stay off the default push
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "results of the smoke pipeline")

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(ws), str(clone))
    for name in ("results", "data", "models"):
        dvc(clone, "remote", "modify", "--local", name, "url", str(remote / name), timeout=120)
    dvc(clone, "pull", "--allow-missing", timeout=600)
    figures = {p.name: p.read_bytes() for p in (ws / "results/figures/smoke").glob("*.p*")}
    for p in (clone / "results/figures/smoke").glob("*"):
        p.unlink()
    for p in (clone / "results/agg").glob("*.parquet"):
        p.unlink()

    proc = snakemake(
        clone, "figures", "--cores", "2", "--config", "scale=smoke", "from_cache=true", timeout=600
    )
    out = proc.stdout + proc.stderr
    assert training_jobs(out) == 0
    assert re.search(r"aggregate\s+\d+", out) and "figure__" in out
    assert not list((clone / "results/logs").glob("*/smoke/train/*.log"))
    rebuilt = {p.name: p.read_bytes() for p in (clone / "results/figures/smoke").glob("*.p*")}
    assert rebuilt == figures


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@contextmanager
def _http_server(folder: Path):
    """A static file server on loopback: how a reader sees a published, read-only remote."""
    folder.mkdir(parents=True, exist_ok=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _verify(ws: Path) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "lop.cli", "cache", "verify"], ws, timeout=120, check=False)


@pytest.mark.pipeline
@pytest.mark.slow
def test_a_stranger_pulls_from_an_http_remote_and_an_empty_pull_fails(dvc_repo, tmp_path):
    """Issue #10: push the smoke results, serve them read-only over HTTP, pull them in a fresh clone and
    rebuild every figure with zero training jobs; an unreachable or empty remote fails `lop cache verify`."""
    ws, remote, _ = dvc_repo
    dvc(ws, "push", timeout=600)
    git(ws, "add", "-A")
    if git(ws, "status", "--porcelain").strip():
        git(ws, "commit", "-qm", "results of the smoke pipeline")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(ws), str(clone))

    # The committed default: an HTTP URL that does not resolve. DVC's pull may exit 0 having pulled
    # nothing; the documented check must not.
    assert dvc(clone, "remote", "list").stdout.split()[1].startswith("https://")
    dvc(clone, "pull", "--allow-missing", timeout=600, check=False)
    proc = _verify(clone)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert (
        line.startswith("error: cached results missing") and "dvc remote modify --local results url" in line
    )

    with _http_server(tmp_path / "empty") as url:  # reachable, holds nothing
        dvc(clone, "remote", "modify", "--local", "results", "url", url)
        dvc(clone, "pull", "--allow-missing", timeout=600, check=False)
        proc = _verify(clone)
        assert proc.returncode == 2 and url in proc.stderr, proc.stderr

    with _http_server(remote / "results") as url:  # the published results
        dvc(clone, "remote", "modify", "--local", "results", "url", url)
        dvc(clone, "pull", "--allow-missing", timeout=600)
    proc = _verify(clone)
    assert proc.returncode == 0 and proc.stdout.startswith("ok: 2 run folder(s)"), proc.stdout + proc.stderr

    figures = {p.name: p.read_bytes() for p in (ws / "results/figures/smoke").glob("*.p*")}
    for p in [*(clone / "results/figures/smoke").glob("*"), *(clone / "results/agg").glob("*.parquet")]:
        p.unlink()
    proc = snakemake(clone, "--cores", "2", "--config", "scale=smoke", "from_cache=true", timeout=600)
    out = proc.stdout + proc.stderr
    assert training_jobs(out) == 0 and "figure__" in out
    rebuilt = {p.name: p.read_bytes() for p in (clone / "results/figures/smoke").glob("*.p*")}
    assert rebuilt == figures


@pytest.mark.parametrize("dvc_file", ["dvc.yaml", "workflow/dvc/paper/dvc.yaml"])
def test_params_metrics_and_plots_are_declared(dvc_file):
    """Issue #10: every params file is a `params:` dependency; metrics JSON and plot CSVs are declared."""
    pipeline = yaml.safe_load((ROOT / dvc_file).read_text())
    stages = pipeline["stages"]
    exps = _params_experiments(ROOT, "demo" if dvc_file == "dvc.yaml" else "paper")
    for e in exps:
        assert {f"params/{e}.yaml": None} in stages[f"train_{e}"]["params"]
        assert {f"results/metrics/${{scale}}/{e}.json": {"cache": False}} in stages["figures"]["metrics"]
    assert {"params/figures.yaml": None} in stages["figures"]["params"]
    plotted = set()
    for entry in pipeline["plots"]:
        ((name, spec),) = entry.items()
        plotted |= set(spec.get("y", {name: None}))
        assert spec["x"] == "x"
    registry = yaml.safe_load((ROOT / "params" / "figures.yaml").read_text())["figures"]
    # figures of experiments that run through Snakemake only (their scale needs user-provided files) have no plot
    assert {Path(p).stem for p in plotted} == {n for n, fig in registry.items() if fig["experiment"] in exps}


@pytest.mark.pipeline
@pytest.mark.slow
def test_dvc_params_metrics_and_plots_show_the_pipelines_values(dvc_repo):
    ws, _, _ = dvc_repo
    metrics = json.loads(dvc(ws, "metrics", "show", "--json", timeout=300).stdout)
    files = next(iter(metrics.values()))["data"]
    scr = files["results/metrics/smoke/scr.json"]["data"]
    assert "BP α=0.01" in scr["ed_fig2"]["1: Backprop (SGD), step sizes"]
    params = json.loads(dvc(ws, "params", "diff", "--all", "--json", timeout=300).stdout)
    assert "params/scr.yaml" in params and "params/figures.yaml" in params
    # both pipelines define plot `ed_fig2`: DVC prefixes the ids with their dvc.yaml (the paper one is not built)
    plots = json.loads(dvc(ws, "plots", "show", "--json", timeout=300).stdout)
    (ed_fig2,) = plots["data"]["dvc.yaml::ed_fig2"]
    fields = {row["field"] for row in ed_fig2["content"]["data"]["values"]}
    assert "BP α=0.01" in fields
    (workspace, *_) = json.loads(dvc(ws, "exp", "show", "--json", timeout=300).stdout)
    assert "params/scr.yaml" in workspace["data"]["params"]
    assert "results/metrics/smoke/scr.json" in workspace["data"]["metrics"]
