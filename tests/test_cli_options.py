"""Every `lop` command-line option errors cleanly: one `error:` line, exit code 2, no traceback (issue #10)."""

from __future__ import annotations

import pytest
from conftest import run_lop

import lop


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_version_prints_the_package_version():
    proc = run_lop("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"lop {lop.__version__}"


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu", "mps", ""])
def test_bad_device_is_one_error_line(tmp_path, device):
    proc = run_lop(
        "run", "--params", "params/scr.yaml", "--scale", "smoke", "--method", "bp",
        "--out", str(tmp_path), "--device", device,
    )  # fmt: skip
    assert proc.returncode == 2
    line = _one_error_line(proc.stderr)
    assert "--device" in line and "auto, cpu, cuda, cuda:N" in line
    assert not any(tmp_path.iterdir())  # nothing ran


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--out", "x", "--threads", "abc"], "--threads"),
        (["run", "--out", "x", "--checkpoint-every", "1.5"], "--checkpoint-every"),
        (["run", "--out", "x", "--checkpoint-minutes", "soon"], "--checkpoint-minutes"),
        (["run", "--out", "x", "--models-every", "many"], "--models-every"),
        (["run", "--params", "params/scr.yaml"], "--out"),
        (["run", "--out", "x", "--no-such-option"], "--no-such-option"),
        (["params", "jobs"], "file"),
        (["no-such-command"], "no-such-command"),
        ([], "command"),
    ],
)
def test_bad_options_are_one_error_line(capsys, args, needle):
    from lop.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert needle in line and "--help" in line


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--out", "x", "--threads", "abc"], "--threads"),
        (["run", "--params", "params/scr.yaml"], "--out"),
        (["no-such-command"], "no-such-command"),
    ],
)
def test_bad_options_in_a_real_process(args, needle):
    proc = run_lop(*args)
    assert proc.returncode == 2
    line = _one_error_line(proc.stderr)
    assert needle in line and "--help" in line


def test_resolve_device_rejects_unknown_names_with_a_config_error():
    """A device that reaches the runner another way (a params file, a library call) is a ConfigError."""
    from lop.errors import ConfigError
    from lop.runner import resolve_device

    assert resolve_device("cpu").type == "cpu"
    for bad in ("gpu", "mps", "meta"):
        with pytest.raises(ConfigError, match="auto, cpu, cuda"):
            resolve_device(bad)
