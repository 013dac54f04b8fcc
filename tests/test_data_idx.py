"""IDX reader/writer (docs/protocols/datasets.md): round trips, header validation, corrupt files."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from lop.data.idx import IMAGES_MAGIC, LABELS_MAGIC, idx_bytes, read_idx, write_idx
from lop.errors import DataError


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_round_trip_images(tmp_path, name):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / name, a)
    b = read_idx(tmp_path / name, magic=IMAGES_MAGIC)
    assert b.dtype == np.uint8 and b.shape == (7, 28, 28)
    np.testing.assert_array_equal(a, b)
    assert b.flags.writeable


def test_round_trip_labels_and_known_header(tmp_path):
    y = np.array([5, 0, 4, 1, 9], dtype=np.uint8)
    raw = idx_bytes(y)
    assert raw[:8] == struct.pack(">II", LABELS_MAGIC, 5)  # official header layout
    assert raw[8:] == y.tobytes()
    write_idx(tmp_path / "l.gz", y)
    assert gzip.decompress((tmp_path / "l.gz").read_bytes()) == raw
    np.testing.assert_array_equal(read_idx(tmp_path / "l.gz", magic=LABELS_MAGIC), y)


def test_gzip_output_is_byte_stable(tmp_path):
    a = np.arange(300, dtype=np.uint8).reshape(3, 10, 10)
    write_idx(tmp_path / "a.gz", a)
    write_idx(tmp_path / "b.gz", a)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def test_wrong_magic_is_rejected(tmp_path):
    write_idx(tmp_path / "labels", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="magic 0x00000801, expected 0x00000803"):
        read_idx(tmp_path / "labels", magic=IMAGES_MAGIC)


def test_non_uint8_type_is_rejected(tmp_path):
    (tmp_path / "f").write_bytes(struct.pack(">II", 0x00000D01, 1) + b"\0\0\0\0")  # float32 IDX
    with pytest.raises(DataError, match="not a uint8 IDX"):
        read_idx(tmp_path / "f")


@pytest.mark.parametrize("delta", [-1, +1])
def test_dims_must_match_file_size(tmp_path, delta):
    raw = idx_bytes(np.zeros((2, 3, 3), np.uint8))
    raw = raw[:-1] if delta < 0 else raw + b"\0"
    (tmp_path / "x").write_bytes(raw)
    with pytest.raises(DataError, match=r"IDX dims \[2, 3, 3\] need 34 bytes"):
        read_idx(tmp_path / "x")


def test_truncated_gzip_is_a_data_error(tmp_path):
    write_idx(tmp_path / "x.gz", np.random.default_rng(1).integers(0, 256, (50, 28, 28), dtype=np.uint8))
    raw = (tmp_path / "x.gz").read_bytes()
    (tmp_path / "x.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"x\.gz"):
        read_idx(tmp_path / "x.gz")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope.gz")
