"""Shared test helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_lop(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: int = 300):
    """Run the `lop` CLI in a subprocess; returns CompletedProcess (text)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "lop.cli", *args],
        cwd=str(cwd or REPO),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def repo() -> Path:
    return REPO


class Result:
    """Outcome of an in-process CLI call (same fields as CompletedProcess)."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def lop_main(capsys):
    """Call `lop.cli.main` in-process (fast; for commands that fail before training)."""
    from lop.cli import main

    def call(*args: str) -> Result:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return call


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Small-tensor tests run faster (and steadier on shared cores) on one intra-op thread."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def prepared_standins(tmp_path_factory) -> dict[str, Path]:
    """Small prepared stand-ins of the image data sets (deterministic files), shared by the golden-metrics
    and method-layer tests: ``{"imagenet32": dir, "cifar100": dir}``."""
    from lop.data.cifar100 import prepare_cifar100
    from lop.data.imagenet32 import prepare_imagenet32
    from lop.data.standins import write_standin

    root = tmp_path_factory.mktemp("standin-data")
    write_standin("imagenet32", root / "in-raw", size="small")
    write_standin("cifar100", root / "c-raw", size="small")
    return {
        "imagenet32": prepare_imagenet32(root / "in-raw", root / "in"),
        "cifar100": prepare_cifar100(root / "c-raw", root / "c"),
    }
