"""lop.allocator: glibc malloc tuning applied by `lop run` (memory management only, no numerical effect)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lop import allocator


class _FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

        def mallopt(param: int, value: int) -> int:
            self.calls.append((param, value))
            return 1

        self.mallopt = mallopt


def test_sets_mmap_and_trim_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeLibc()
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda name: "libc.so.6")
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: fake)
    assert allocator.keep_freed_memory() is True
    assert fake.calls == [(-3, 32 * 1024 * 1024), (-1, 1024 * 1024 * 1024)]


def test_does_nothing_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: pytest.fail("must not load libc"))
    assert allocator.keep_freed_memory() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_repeated_large_buffers_stop_page_faulting() -> None:
    """A training-step-like pattern (several ~10 MB buffers held, then all freed) re-faults every page
    each step by default (glibc trims the heap top) and takes no fault once `keep_freed_memory` ran."""
    code = (
        "import resource, sys, numpy as np\n"
        "from lop.allocator import keep_freed_memory\n"
        "if sys.argv[1] == '1': assert keep_freed_memory()\n"
        "def step():\n"
        "    held = [np.ones(10_000_000 - 4096 * i, np.uint8) for i in range(4)]\n"
        "    del held\n"
        "for _ in range(5): step()\n"
        "f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(20): step()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n"
    )
    faults = {
        flag: int(
            subprocess.run(
                [sys.executable, "-c", code, flag], capture_output=True, text=True, check=True
            ).stdout
        )
        for flag in ("0", "1")
    }
    assert faults["1"] < 100 and faults["0"] > 10_000, faults
