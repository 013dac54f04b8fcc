"""Provenance of a raw-data folder: the official files (md5 from docs/protocols/datasets.md) or a stand-in (standin.json)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lop.data.artifact import read_json
from lop.data.download import md5sum
from lop.errors import DataError

STANDIN_JSON = "standin.json"


def read_standin(raw_dir: Path, dataset: str) -> dict[str, Any] | None:
    """The raw folder's ``standin.json`` when it describes ``dataset``, else None."""
    path = raw_dir / STANDIN_JSON
    if not path.is_file():
        return None
    info = read_json(path)
    if info.get("dataset") != dataset or not isinstance(info.get("files"), dict):
        return None
    return info


def identify_raw(
    raw_dir: str | os.PathLike[str],
    official: dict[str, str | None],
    dataset: str,
    *,
    missing: str,
    fix: str,
) -> tuple[str, dict[str, Any] | None, dict[str, str]]:
    """Check the raw files' md5s; return ``(source, standin_info, md5s)``.

    ``source`` is ``"standin"`` when every file matches the md5 recorded in ``standin.json`` by the
    stand-in generator, else ``"official"`` when every file matches the official md5 (``None`` = no
    official checksum is published; the content is validated while converting). ``missing`` is the
    message for an absent file, ``fix`` the advice appended to a mismatch.
    """
    raw_dir = Path(raw_dir)
    md5s: dict[str, str] = {}
    for name in official:
        path = raw_dir / name
        if not path.is_file():
            raise DataError(f"{path}: not found. {missing}")
        md5s[name] = md5sum(path)
    standin = read_standin(raw_dir, dataset)
    if standin is not None and all(standin["files"].get(n) == md5s[n] for n in official):
        return "standin", standin, md5s
    if all(want is None or md5s[n] == want for n, want in official.items()):
        return "official", None, md5s
    if standin is not None:  # blame a file that differs from the stand-in it claims to be
        name = next(n for n in official if standin["files"].get(n) != md5s[n])
        extra = f" nor the stand-in's {standin['files'].get(name)} (standin.json)"
    else:
        name = next(n for n, want in official.items() if want is not None and md5s[n] != want)
        extra = ""
    raise DataError(
        f"{raw_dir / name}: md5 {md5s[name]} matches neither the official {official[name]}{extra}; the file "
        f"is corrupt or not the expected one: {fix}"
    )


def standin_size(info: dict[str, Any], key: str, raw_dir: Path, maximum: int) -> int:
    """A size ``standin.json`` records (``n_classes``, ``per_class``, ...): an integer in 1..``maximum``,
    else a `DataError` naming the file and key (a hand-edited or forged file must not crash the reader)."""
    value = info.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= maximum:
        raise DataError(
            f"{Path(raw_dir) / STANDIN_JSON}: {key} must be an integer in 1..{maximum}, got {value!r}; "
            "regenerate the stand-in with `lop data standin`"
        )
    return value
