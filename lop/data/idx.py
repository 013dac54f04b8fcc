"""The IDX file format of MNIST (docs/protocols/datasets.md): big-endian magic, dims, then uint8 data; plain or gzip."""

from __future__ import annotations

import gzip
import math
import os
import struct
from pathlib import Path

import numpy as np

from lop.data.artifact import atomic_file
from lop.errors import DataError
from lop.limits import GZIP_CAP_DEFAULT, gunzip_capped

IMAGES_MAGIC = 0x00000803  # uint8, 3 dims [n, rows, cols]
LABELS_MAGIC = 0x00000801  # uint8, 1 dim [n]
UINT8_TYPE = 0x08
GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path, max_bytes: int) -> bytes:
    """The file's IDX bytes (gunzipped when compressed), refusing more than `max_bytes` of them: the
    plain file is size-checked before reading and gzip is decompressed in a stream that stops at the cap."""
    if not path.is_file():
        raise DataError(f"{path}: IDX file not found")
    size = path.stat().st_size
    if size > max_bytes + 4096 + max_bytes // 64:  # gzip of incompressible data is slightly larger
        raise DataError(
            f"{path}: {size} bytes, more than the {max_bytes} this IDX file may hold; wrong file?"
        )
    raw = path.read_bytes()
    if raw[:2] != GZIP_MAGIC:
        return raw
    return gunzip_capped(raw, max_bytes, str(path))


def read_idx(
    path: str | os.PathLike[str], *, magic: int | None = None, max_bytes: int = GZIP_CAP_DEFAULT
) -> np.ndarray:
    """Read a uint8 IDX file (gzip-compressed or plain, detected from the content).

    ``magic`` (e.g. `IMAGES_MAGIC`) is checked when given; at most ``max_bytes`` of IDX data are read
    or decompressed (pass the format's expected size: a gzip bomb stops there). The header's dims must
    account for exactly the file's payload size; anything else raises `DataError` naming the file.
    """
    path = Path(path)
    data = _read_bytes(path, max_bytes)
    if len(data) < 4:
        raise DataError(f"{path}: too short to be an IDX file ({len(data)} bytes)")
    (found,) = struct.unpack(">I", data[:4])
    zero, dtype_code, ndim = found >> 16, (found >> 8) & 0xFF, found & 0xFF
    if zero != 0 or dtype_code != UINT8_TYPE or ndim == 0:
        raise DataError(f"{path}: not a uint8 IDX file (magic 0x{found:08x}); is this the right file?")
    if magic is not None and found != magic:
        raise DataError(
            f"{path}: IDX magic 0x{found:08x}, expected 0x{magic:08x}; are the file names swapped?"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(dims)
    if len(data) != expected:
        raise DataError(
            f"{path}: IDX dims {list(dims)} need {expected} bytes but the file holds {len(data)}; "
            "the file is truncated or corrupt: download it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def idx_bytes(array: np.ndarray) -> bytes:
    """The uncompressed IDX encoding of a uint8 array."""
    a = np.ascontiguousarray(array)
    if a.dtype != np.uint8 or a.ndim == 0 or a.ndim > 255:
        raise ValueError(f"IDX writer needs a uint8 array with 1..255 dims, got {a.dtype} {a.shape}")
    head = struct.pack(">I", (UINT8_TYPE << 8) | a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    return head + a.tobytes()


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write a uint8 array as IDX, gzip-compressed when the name ends in ``.gz`` (deterministic bytes:
    gzip mtime 0, no embedded name), atomically (temp file + ``os.replace``)."""
    path = Path(path)
    payload = idx_bytes(array)
    if path.suffix == ".gz":
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    with atomic_file(path) as tmp:
        tmp.write_bytes(payload)
    return path
