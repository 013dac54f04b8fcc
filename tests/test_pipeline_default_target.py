"""A stranger's first commands from a fresh copy (issue #10): `snakemake --cores 2` with no target builds
the figures and the ours-vs-paper table, and `snakemake --report results/report.html` with no target works
after it."""

from __future__ import annotations

import pytest
from pipeline_helpers import fresh_copy, job_stats, snakemake, training_jobs

pytestmark = [pytest.mark.pipeline, pytest.mark.slow]
CONFIG = ("--config", "scale=smoke", "experiments=scr")  # one quick experiment keeps this to a minute


def test_no_target_builds_the_figures_and_the_report_works(tmp_path):
    ws = fresh_copy(tmp_path / "lop")
    proc = snakemake(ws, "--cores", "2", *CONFIG, timeout=600)
    out = proc.stdout + proc.stderr
    assert "Nothing to be done" not in out
    stats = job_stats(out)
    assert stats.get("all") == 1 and "figure__ed_fig2" in stats, out
    assert training_jobs(out) > 0
    png = ws / "results" / "figures" / "smoke" / "ed_fig2.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the ours-vs-paper table and the DVC metrics/plot files are part of the default target
    assert stats.get("paper_comparison") == 1 and stats.get("summary__scr") == 1
    md = (ws / "results/tables/smoke/paper_comparison.md").read_text()
    assert "| Extended Data Fig. 2 |" in md and "smoke scale" in md
    assert (ws / "results/tables/smoke/paper_comparison.csv").is_file()
    assert "ed_fig2" in (ws / "results/metrics/smoke/scr.json").read_text()
    assert (ws / "results/plots/smoke/ed_fig2.csv").read_text().startswith("x,")

    again = snakemake(ws, "--cores", "2", *CONFIG, timeout=300)
    assert "Nothing to be done" in again.stdout + again.stderr

    snakemake(ws, "--report", "results/report.html", *CONFIG, timeout=300)
    html = (ws / "results" / "report.html").read_text(errors="replace")
    assert "ed_fig2.png" in html and "Extended Data Fig. 2" in html
    assert "paper_comparison.md" in html
