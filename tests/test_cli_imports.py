"""What the light `lop` commands import (docs/reliability.md, "Cost of validation").

Each command runs in a fresh interpreter under ``python -X importtime``, whose stderr names every
module the process imported; the heavy stacks must not be among them. No timings are asserted: the
wall time is measured in docs/reliability.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PLOTTING_AND_TABLES = {"pandas", "pyarrow", "matplotlib", "seaborn", "snakemake", "jsonschema"}
_IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$")


def imported_modules(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``lop <args>`` under ``-X importtime``; the process and the top-level packages it imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "lop.cli", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    names = {m.group(1).split(".")[0] for line in proc.stderr.splitlines() if (m := _IMPORT_LINE.match(line))}
    assert "lop" in names, proc.stderr[-2000:]  # the parse found the import lines
    return proc, names


def test_help_imports_no_heavy_stack():
    """Building the parser (every command group) loads neither torch, numpy nor the table/plot stack."""
    proc, names = imported_modules("--help")
    assert proc.returncode == 0
    assert not names & (PLOTTING_AND_TABLES | {"torch", "numpy", "gymnasium", "mujoco"})


def test_params_validate_imports_no_torch():
    """`lop params validate params/*.yaml` validates every file (all scales, every grid point) without
    torch, numpy, the simulators, pandas, matplotlib or snakemake (`lop.experiments.schemas`)."""
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "params").glob("*.yaml"))
    proc, names = imported_modules("params", "validate", *files)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count(": ok (") == len(files)
    heavy = PLOTTING_AND_TABLES | {"torch", "numpy", "gymnasium", "mujoco"}
    assert not names & heavy, names & heavy


@pytest.mark.parametrize("command", [["data", "verify", "no-such-folder"], ["figure", "list"]])
def test_light_commands_import_no_torch(command):
    """Verifying a missing folder and listing figures stop or answer without torch."""
    proc, names = imported_modules(*command)
    assert proc.returncode in (0, 2)
    assert "Traceback" not in proc.stderr
    assert "torch" not in names and not names & PLOTTING_AND_TABLES
