"""User-facing errors: one clear line naming the file or key and what to do."""

from __future__ import annotations


class LopError(Exception):
    """Base class of every error the `lop` command reports as one line (exit code 2)."""


class ConfigError(LopError):
    """A params file, run file or command-line setting is invalid."""

    def __init__(self, where: str, message: str) -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class DataError(LopError):
    """A data file is missing, corrupt, or has the wrong checksum/shape/dtype."""


class CheckpointError(LopError):
    """A checkpoint cannot be read or does not belong to this run group."""
