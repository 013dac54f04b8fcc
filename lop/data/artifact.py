"""Prepared artifacts: a folder of ``.npy`` files plus ``manifest.json`` (sha256, shape, dtype per file).

Writers build the whole folder in a temporary sibling and swap it in at the end, so a folder holding a
``manifest.json`` is always complete. Loaders verify sha256 (optional), shapes and dtypes and raise
`DataError` naming the file and the command that re-creates it. The manifest records ``stand_in`` (true when
the raw files were a stand-in, see `lop.data.standins`), which experiments copy into every run's ``run.json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from lop import __version__
from lop.data.download import default_mode, sha256sum
from lop.errors import DataError

MANIFEST = "manifest.json"
_NPY_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")
FORMAT_VERSION = 1
SOURCES = ("official", "standin", "image-folder")


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path in ``path``'s folder; on success ``os.replace`` it onto ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write JSON atomically with sorted keys (byte-stable for the same content)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(path)


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object; a missing or malformed file raises `DataError`."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"{path}: not found") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable JSON ({e})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object")
    return obj


class ArtifactWriter:
    """Build a prepared artifact in a temp folder next to ``out_dir``; `commit` swaps it into place.

    Use as a context manager: an exception (or leaving without `commit`) deletes the temp folder and
    leaves any previous artifact at ``out_dir`` untouched.
    """

    def __init__(self, out_dir: str | os.PathLike[str], dataset: str, source: str) -> None:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        self.out_dir = Path(out_dir)
        self.dataset, self.source = dataset, source
        if self.out_dir.exists():
            if not self.out_dir.is_dir():
                raise DataError(f"{self.out_dir}: exists and is not a folder; choose another --out")
            if any(self.out_dir.iterdir()) and not (self.out_dir / MANIFEST).is_file():
                raise DataError(
                    f"{self.out_dir}: exists, is not empty and holds no {MANIFEST}; refusing to replace it. "
                    "Choose a new or empty --out folder (e.g. data/prepared/<dataset>)"
                )
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(
            tempfile.mkdtemp(prefix=f".{self.out_dir.name}.", suffix=".tmp", dir=self.out_dir.parent)
        )
        os.chmod(self.tmp, default_mode(directory=True))
        self._files: dict[str, tuple[tuple[int, ...], str]] = {}
        self._done = False

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def save(self, name: str, array: np.ndarray) -> None:
        """Add ``array`` as ``name`` (a ``.npy`` file name)."""
        a = np.ascontiguousarray(array)
        np.save(self.tmp / name, a, allow_pickle=False)
        self._files[name] = (tuple(int(d) for d in a.shape), a.dtype.str)

    def commit(self, facts: dict[str, Any]) -> Path:
        """Hash every file, write ``manifest.json`` and swap the folder into ``out_dir``."""
        files = {
            name: {"sha256": sha256sum(self.tmp / name), "shape": list(shape), "dtype": np.dtype(dt).name}
            for name, (shape, dt) in sorted(self._files.items())
        }
        manifest = {
            "format_version": FORMAT_VERSION,
            "dataset": self.dataset,
            "source": self.source,
            "stand_in": self.source == "standin",
            "files": files,
            "lop_version": __version__,
            **facts,
        }
        write_json(self.tmp / MANIFEST, manifest)
        old = None
        if self.out_dir.exists():
            old = Path(
                tempfile.mkdtemp(prefix=f".{self.out_dir.name}.", suffix=".old", dir=self.out_dir.parent)
            )
            os.replace(self.out_dir, old / "previous")
        os.replace(self.tmp, self.out_dir)
        self._done = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out_dir


def read_manifest(prepared_dir: str | os.PathLike[str], dataset: str, missing: str) -> dict[str, Any]:
    """Read and sanity-check ``manifest.json``; ``missing`` is the message when the folder is not there."""
    path = Path(prepared_dir) / MANIFEST
    if not path.is_file():
        raise DataError(missing)
    m = read_json(path)
    if m.get("dataset") != dataset or not isinstance(m.get("files"), dict):
        raise DataError(f"{path}: not a prepared {dataset} manifest (dataset={m.get('dataset')!r})")
    manifest_stand_in(m, path)
    return m


def open_prepared(prepared_dir: Path, dataset: str, title: str, raw_files: str) -> tuple[dict[str, Any], str]:
    """(manifest, fix) of a prepared artifact with downloadable raw files: `read_manifest`, whose message
    for a missing folder says to put ``raw_files`` (e.g. "the official x.tar.gz") in the default raw
    folder (or download them), then prepare; ``fix`` = "re-run `<prepare command>`" for later messages."""
    cmd = prepare_command(dataset, prepared_dir)
    raw = default_raw_dir(prepared_dir, dataset)
    missing = (
        f"{prepared_dir}: no prepared {title} ({MANIFEST} missing). Put {raw_files} in {raw} "
        f"(or run `lop data download {dataset} --raw {raw}`), then run `{cmd}`"
    )
    return read_manifest(prepared_dir, dataset, missing), f"re-run `{cmd}`"


def manifest_stand_in(manifest: dict[str, Any], path: str | os.PathLike[str] = MANIFEST) -> bool:
    """Whether a manifest describes stand-in data. Manifests written before the ``stand_in`` key existed
    count as stand-in only when their ``source`` is ``"standin"`` (missing = false otherwise)."""
    value = manifest.get("stand_in", manifest.get("source") == "standin")
    if not isinstance(value, bool):
        raise DataError(f"{path}: 'stand_in' must be true or false, got {value!r}; re-run `lop data prepare`")
    return value


def prepared_stand_in(prepared_dir: str | os.PathLike[str], dataset: str) -> bool:
    """The ``stand_in`` flag of a prepared artifact (read from its ``manifest.json``)."""
    prepared_dir = Path(prepared_dir)
    missing = f"{prepared_dir / MANIFEST}: not found; run `{prepare_command(dataset, prepared_dir)}`"
    return manifest_stand_in(read_manifest(prepared_dir, dataset, missing), prepared_dir / MANIFEST)


def load_array(
    prepared_dir: Path,
    manifest: dict[str, Any],
    name: str,
    *,
    verify: bool,
    mmap: bool,
    fix: str,
) -> np.ndarray:
    """Load one listed ``.npy`` (no pickle), checking sha256 (when ``verify``), shape and dtype."""
    if not isinstance(name, str) or not _NPY_NAME.match(name):
        raise DataError(
            f"{prepared_dir / MANIFEST}: file name {str(name)[:60]!r} is not a plain .npy name; {fix}"
        )
    path = prepared_dir / name
    entry = manifest["files"].get(name)
    if entry is None:
        raise DataError(f"{prepared_dir / MANIFEST}: does not list {name}; {fix}")
    if not isinstance(entry, dict):
        raise DataError(
            f"{prepared_dir / MANIFEST}: entry of {name} must be an object with sha256, shape and dtype, "
            f"got {str(entry)[:60]!r}; {fix}"
        )
    if not path.is_file():
        raise DataError(f"{path}: missing from the prepared artifact; {fix}")
    if verify:
        actual = sha256sum(path)
        if actual != entry.get("sha256"):
            raise DataError(
                f"{path}: sha256 mismatch (manifest {entry.get('sha256')}, file {actual}): the prepared "
                f"file is corrupt; {fix}"
            )
    try:
        a = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: unreadable .npy ({e}); {fix}") from e
    if [int(d) for d in a.shape] != entry.get("shape") or a.dtype.name != entry.get("dtype"):
        raise DataError(
            f"{path}: shape/dtype {list(a.shape)} {a.dtype.name} differ from the manifest "
            f"{entry.get('shape')} {entry.get('dtype')}; {fix}"
        )
    return a


def check_layout(path: Path, a: np.ndarray, shape: Sequence[int | None], dtype: str, fix: str) -> None:
    """Check an array against the documented layout (``None`` = any size on that axis)."""
    ok = a.ndim == len(shape) and all(e is None or e == d for e, d in zip(shape, a.shape))
    if not ok or a.dtype.name != dtype:
        want = "[" + ", ".join("N" if e is None else str(e) for e in shape) + f"] {dtype}"
        raise DataError(f"{path}: has {list(a.shape)} {a.dtype.name}, the layout needs {want}; {fix}")


def verify_artifact(prepared_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Verify every file listed in a prepared folder's manifest (sha256, shape, dtype); return the manifest."""
    prepared_dir = Path(prepared_dir)
    path = prepared_dir / MANIFEST
    if not path.is_file():
        raise DataError(
            f"{path}: not found; {prepared_dir} is not a prepared artifact (run `lop data prepare`)"
        )
    m = read_json(path)
    if not isinstance(m.get("files"), dict) or not isinstance(m.get("dataset"), str):
        raise DataError(f"{path}: malformed manifest (needs 'dataset' and 'files')")
    manifest_stand_in(m, path)
    if not _NPY_NAME.match(m["dataset"]):
        raise DataError(f"{path}: dataset name {m['dataset'][:60]!r} is not a plain name")
    fix = f"re-run `{prepare_command(m['dataset'], prepared_dir)}`"
    if not m["files"]:
        raise DataError(f"{path}: lists no files; an empty artifact is not valid data; {fix}")
    arrays = {name: load_array(prepared_dir, m, name, verify=True, mmap=True, fix=fix) for name in m["files"]}
    _check_consistency(path, m, arrays, fix)
    return m


def _check_consistency(path: Path, m: dict[str, Any], arrays: dict[str, np.ndarray], fix: str) -> None:
    """Images and labels of one split agree in count; labels lie in ``[0, n_classes)`` when the manifest
    records ``n_classes``."""
    n_classes = m.get("n_classes")
    if n_classes is not None and (
        isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1
    ):
        raise DataError(f"{path}: n_classes must be a positive integer, got {n_classes!r}; {fix}")
    for name, labels in arrays.items():
        if not name.endswith("_labels.npy"):
            continue
        images = arrays.get(name.removesuffix("_labels.npy") + "_images.npy")
        if labels.ndim != 1:
            raise DataError(
                f"{path.parent / name}: labels must be one-dimensional, got {list(labels.shape)}; {fix}"
            )
        if images is not None and (images.ndim == 0 or images.shape[0] != labels.shape[0]):
            raise DataError(
                f"{path.parent / name}: {labels.shape[0]} labels but {images.shape[0] if images.ndim else 0} "
                f"images in the same split; {fix}"
            )
        if n_classes is not None and labels.size:
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= n_classes:
                bad = lo if lo < 0 else hi
                raise DataError(f"{path.parent / name}: label {bad} outside 0..{n_classes - 1}; {fix}")


def default_raw_dir(prepared_dir: str | os.PathLike[str], dataset: str) -> Path:
    """``data/raw/<dataset>`` next to ``data/prepared/<dataset>`` (the project layout)."""
    prepared_dir = Path(prepared_dir)
    if prepared_dir.parent.name == "prepared":
        return prepared_dir.parent.parent / "raw" / dataset
    return Path("data") / "raw" / dataset


def prepare_command(dataset: str, prepared_dir: str | os.PathLike[str]) -> str:
    """The command that (re-)creates a prepared artifact, for error messages."""
    return f"lop data prepare {dataset} --raw {default_raw_dir(prepared_dir, dataset)} --out {prepared_dir}"
