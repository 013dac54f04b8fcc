"""File-level data utilities: checksums, verified streaming downloads, safe tar extraction (docs/protocols/datasets.md)."""

from __future__ import annotations

import functools
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath

from lop.errors import DataError

CHUNK = 1 << 20
USER_AGENT = "lop-data/0.1"


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def md5sum(path: str | os.PathLike[str]) -> str:
    """Hex md5 of a file (the checksum the official dataset pages publish)."""
    return _digest(Path(path), "md5")


def sha256sum(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file (the checksum prepared-artifact manifests record)."""
    return _digest(Path(path), "sha256")


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it; restored at once (read once per process)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The permission bits a plainly created file/folder gets under the umask (temp files are 0600)."""
    return (0o777 if directory else 0o666) & ~_umask()


def _tmp_sibling(dest: Path, suffix: str) -> tuple[int, Path]:
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    return fd, Path(name)


def download(url: str, dest: str | os.PathLike[str], md5: str | None, *, timeout: float = 60) -> Path:
    """Stream ``url`` to ``dest`` through a temp file in dest's folder; verify ``md5``; ``os.replace``.

    An existing ``dest`` whose md5 already matches is kept (no network access). On any failure
    (network error, truncated body, md5 mismatch) nothing is left at ``dest``.
    """
    dest = Path(dest)
    if dest.is_file() and md5 is not None:
        if md5sum(dest) == md5:
            return dest
        dest.unlink()  # a stale or corrupt copy: it must not look complete
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _tmp_sibling(dest, ".part")
    try:
        h = hashlib.md5()
        n_read = 0
        expected_len: int | None = None
        with os.fdopen(fd, "wb") as f:
            try:
                req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
                with urllib.request.urlopen(req, timeout=timeout) as resp:
                    length = resp.headers.get("Content-Length")
                    expected_len = int(length) if length is not None and length.isdigit() else None
                    while chunk := resp.read(CHUNK):
                        f.write(chunk)
                        h.update(chunk)
                        n_read += len(chunk)
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
                raise DataError(
                    f"download of {url} -> {dest} failed ({type(e).__name__}: {e}); check the URL and "
                    f"network and retry, or put the file at {dest} by hand"
                ) from e
        if expected_len is not None and n_read != expected_len:
            raise DataError(
                f"download of {url} -> {dest} is truncated: got {n_read} of {expected_len} bytes; "
                "retry the download"
            )
        actual = h.hexdigest()
        if md5 is not None and actual != md5:
            raise DataError(
                f"{dest.name}: md5 mismatch for {url}: expected {md5}, got {actual}; the file was "
                f"discarded. Retry (the mirror may be serving a different file) or put the official "
                f"file at {dest} by hand"
            )
        os.chmod(tmp, default_mode())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _check_member(m: tarfile.TarInfo, root: str, archive: Path) -> None:
    """Reject absolute paths, ``..`` components, links escaping ``root`` and device/fifo members."""
    name = m.name
    where = f"{archive}: member {name!r}"
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        raise DataError(f"{where} has an absolute path; refusing to extract this archive")
    if ".." in PurePosixPath(name).parts or ".." in PureWindowsPath(name).parts:
        raise DataError(f"{where} contains '..'; refusing to extract this archive")
    dest = os.path.normpath(os.path.join(root, name))
    if not _inside(root, dest):
        raise DataError(f"{where} would be written outside {root}; refusing to extract this archive")
    if m.isdev():
        raise DataError(f"{where} is a device or fifo; refusing to extract this archive")
    if m.issym() or m.islnk():
        target = m.linkname
        if target.startswith(("/", "\\")) or PureWindowsPath(target).drive:
            raise DataError(f"{where} links to the absolute path {target!r}; refusing to extract")
        base = os.path.dirname(dest) if m.issym() else root
        resolved = os.path.normpath(os.path.join(base, target))
        if not _inside(root, resolved):
            raise DataError(f"{where} links outside the output folder ({target!r}); refusing to extract")
    elif not (m.isfile() or m.isdir()):
        raise DataError(f"{where} has an unsupported type; refusing to extract this archive")


def safe_extract_tar(archive: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Extract a (possibly compressed) tar archive into ``out_dir`` after validating every member.

    All members are checked before anything is written (`_check_member`); extraction goes to a temporary
    sibling folder (with tarfile's ``data`` filter as a second line of defence) whose entries are then
    moved into ``out_dir``. Truncated or corrupt archives raise `DataError`. Returns the extracted files.
    """
    archive, out_dir = Path(archive), Path(out_dir)
    root = os.path.abspath(out_dir)
    if not archive.is_file():
        raise DataError(f"{archive}: archive not found")
    try:
        with tarfile.open(archive, "r:*") as tf:
            members = tf.getmembers()
            for m in members:
                _check_member(m, root, archive)
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".extract", dir=out_dir.parent))
            os.chmod(tmp, default_mode(directory=True))
            try:
                tf.extractall(tmp, members=members, filter="data")
                out_dir.mkdir(exist_ok=True)
                for entry in sorted(tmp.iterdir()):
                    target = out_dir / entry.name
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target)
                    elif target.exists() or target.is_symlink():
                        target.unlink()
                    os.replace(entry, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(
            f"{archive}: cannot read the archive ({type(e).__name__}: {e}); it is truncated or corrupt: "
            "delete it and download it again"
        ) from e
    return [out_dir / m.name for m in members if m.isfile()]
