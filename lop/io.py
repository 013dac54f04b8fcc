"""Atomic file output, checkpoints and provenance."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lop.errors import CheckpointError

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temp file next to `path`, then rename it to `path` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; results are ordinary files
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # full disk, read-only folder, ...: name the file the user asked for
        Path(tmp).unlink(missing_ok=True)
        if e.filename is None or str(e.filename) == tmp:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def save_torch(path: Path, obj: Any) -> None:
    """`torch.save` `obj` to `path` atomically, with bytes that depend on the content alone.

    torch names the top folder inside its zip archive after the file name it is given, and
    `atomic_write`'s temp name is random; writing through a file handle makes that folder ``archive``,
    so the same content always gives the same file (what DVC hashes).
    """
    import torch

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            torch.save(obj, f)

    atomic_write(path, write)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """`torch.save` a dict of tensors/primitives atomically (`save_torch`)."""
    save_torch(path, state)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; any failure is a `CheckpointError`."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path}: corrupt or unreadable checkpoint ({type(e).__name__}); delete it to restart the runs"
        ) from e
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"{path}: not a lop checkpoint; delete it to restart the runs")
    return state


def git_commit(start: Path | None = None) -> str | None:
    """The git commit of the working directory (suffixed ``-dirty`` when there are changes), or None."""
    cwd = str(start or Path.cwd())
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def versions() -> dict[str, str]:
    """Versions of the software a result depends on."""
    import numpy
    import pandas
    import torch

    import lop

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "lop": lop.__version__,
        "platform": platform.platform(),
    }


def device_description(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()} x{os.cpu_count()} threads={torch.get_num_threads()}"
