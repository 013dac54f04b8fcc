"""Smoke scale end to end from a fresh copy of the working tree (issue #3, items 2, 3)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipeline_helpers import fresh_copy, job_stats, snakemake, training_jobs

pytestmark = [pytest.mark.pipeline, pytest.mark.slow]
SMOKE = ("--cores", "2", "--config", "scale=smoke", "experiments=all")  # paper and CL figures


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    ws = fresh_copy(tmp_path_factory.mktemp("e2e") / "lop")
    proc = snakemake(ws, "figures", *SMOKE, timeout=900)
    return ws, proc.stdout + proc.stderr


def _figures(ws: Path) -> list[Path]:
    return sorted((ws / "results" / "figures" / "smoke").glob("*.png"))


def test_every_figure_of_an_existing_experiment_is_built(built):
    ws, out = built
    stats = job_stats(out)
    figures = {r.removeprefix("figure__") for r in stats if r.startswith("figure__")}
    assert figures and {p.stem for p in _figures(ws)} == figures
    for png in _figures(ws):
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, png
        assert png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    assert training_jobs(out) > 0
    for exp in {r.split("__")[1] for r in stats if r.startswith("train__")}:
        assert (ws / "results" / "agg" / f"{exp}-smoke.parquet").is_file()
        logs = list((ws / "results" / "logs" / exp / "smoke" / "train").glob("*.log"))
        benches = list((ws / "results" / "benchmarks" / exp / "smoke" / "train").glob("*.tsv"))
        assert (
            len(logs) == len(benches) == sum(n for r, n in stats.items() if r.startswith(f"train__{exp}__"))
        )


def test_second_run_does_nothing(built):
    ws, _ = built
    proc = snakemake(ws, "figures", *SMOKE, timeout=300)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_figures_rebuild_byte_identical(built):
    ws, _ = built
    before = {p: (p.read_bytes(), p.with_suffix(".pdf").read_bytes()) for p in _figures(ws)}
    for p in before:
        p.unlink()
        p.with_suffix(".pdf").unlink()
    snakemake(ws, "figures", *SMOKE, timeout=300)
    after = {p: (p.read_bytes(), p.with_suffix(".pdf").read_bytes()) for p in _figures(ws)}
    assert after == before


def _edited_dry_run(ws: Path, path: str, old: str, new: str) -> dict[str, int]:
    file = ws / path
    text = file.read_text()
    assert old in text, f"{path} no longer holds {old!r}; update the test"
    file.write_text(text.replace(old, new, 1))
    try:
        return job_stats(snakemake(ws, "-n", "figures", *SMOKE, timeout=300).stdout)
    finally:
        file.write_text(text)


def test_changing_one_methods_grid_reruns_only_its_jobs(built):
    ws, _ = built
    stats = _edited_dry_run(
        ws, "params/scr.yaml", "snp: {grid: {noise_std: [0.001]}}", "snp: {grid: {noise_std: [0.002]}}"
    )
    train = {r for r in stats if r.startswith("train__")}
    assert train and all(r.startswith("train__scr__snp__") for r in train), train
    assert stats.get("aggregate") == 1 and "figure__ed_fig2" in stats
    assert not {"figure__ed_fig3", "figure__ed_fig4"} & set(stats)  # permuted MNIST figures untouched


def test_a_methods_base_config_is_tracked_too(built):
    ws, _ = built
    old = "  l2:\n    base: {optimizer: sgd, lr: 0.01}"  # the method's one definition (all scales patch it)
    stats = _edited_dry_run(ws, "params/scr.yaml", old, old.replace("lr: 0.01", "lr: 0.02"))
    assert (
        {r for r in stats if r.startswith("train__")}
        == {r for r in stats if r.startswith("train__scr__l2__")}
        != set()
    )


def test_editing_a_figures_style_reruns_only_that_figure(built):
    ws, _ = built
    stats = _edited_dry_run(
        ws, "params/figures.yaml", 'title: "Slowly-changing regression"', 'title: "SCR, restyled"'
    )
    assert set(stats) == {"figure__ed_fig2", "figures"}


def test_report_has_every_figure_and_caption(built):
    ws, _ = built
    snakemake(ws, "figures", "--report", "results/report.html", *SMOKE, timeout=300)
    html = (ws / "results" / "report.html").read_text(errors="replace")
    for png in _figures(ws):
        assert png.name in html
    assert "Extended Data Fig. 2" in html and "slowly-changing regression" in html
