"""Verified downloads over a loopback HTTP server, checksums, and safe tar extraction."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lop.data import cifar10, cifar100, mnist
from lop.data.download import download, md5sum, safe_extract_tar, sha256sum
from lop.errors import DataError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, several read chunks


@contextmanager
def serve(root: Path, max_seconds: float = 60.0) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 (random port) until the block ends or ``max_seconds`` pass.

    ``/truncated/<name>`` announces the full Content-Length but sends only half the body.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            truncated = self.path.startswith("/truncated/")
            rel = self.path.removeprefix("/truncated/" if truncated else "/")
            f = (root / rel).resolve()
            if not f.is_file() or root.resolve() not in f.parents:
                self.send_error(404)
                return
            data = f.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2] if truncated else data)
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    stopper = threading.Timer(max_seconds, server.shutdown)
    stopper.daemon = True
    stopper.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stopper.cancel()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def site(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    (root / "file.bin").write_bytes(PAYLOAD)
    with serve(root) as url:
        yield root, url


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_checksums_known_values(tmp_path):
    (tmp_path / "abc").write_bytes(b"abc")
    assert md5sum(tmp_path / "abc") == "900150983cd24fb0d6963f7d28e17f72"
    assert sha256sum(tmp_path / "abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_download_good_md5(site, tmp_path):
    _, url = site
    dest = tmp_path / "dl" / "file.bin"
    out = download(f"{url}/file.bin", dest, hashlib.md5(PAYLOAD).hexdigest(), timeout=10)
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == ["file.bin"]  # no temp files left
    assert dest.stat().st_mode & 0o777 != 0o600  # not the temp file's private mode


def test_download_skips_a_verified_existing_file(tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(PAYLOAD)
    # no server at all: an md5-verified file must not touch the network
    assert download("http://127.0.0.1:9/file.bin", dest, hashlib.md5(PAYLOAD).hexdigest(), timeout=1) == dest


def test_download_wrong_md5_leaves_nothing(site, tmp_path):
    _, url = site
    dest = tmp_path / "dl" / "file.bin"
    wrong = "0" * 32
    with pytest.raises(DataError) as e:
        download(f"{url}/file.bin", dest, wrong, timeout=10)
    msg = str(e.value)
    assert "file.bin" in msg and wrong in msg and hashlib.md5(PAYLOAD).hexdigest() in msg
    assert "by hand" in msg  # the fix
    assert _leftovers(dest.parent) == []


def test_download_replaces_a_corrupt_existing_file_only_on_success(site, tmp_path):
    _, url = site
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"stale")
    with pytest.raises(DataError):
        download(f"{url}/file.bin", dest, "0" * 32, timeout=10)
    assert not dest.exists()  # a stale file with a wrong md5 must not look complete
    download(f"{url}/file.bin", dest, hashlib.md5(PAYLOAD).hexdigest(), timeout=10)
    assert dest.read_bytes() == PAYLOAD


@pytest.mark.parametrize("md5", [None, hashlib.md5(PAYLOAD).hexdigest()])
def test_download_truncated(site, tmp_path, md5):
    _, url = site
    dest = tmp_path / "dl" / "file.bin"
    with pytest.raises(DataError, match=r"truncated|failed"):
        download(f"{url}/truncated/file.bin", dest, md5, timeout=10)
    assert _leftovers(dest.parent) == []


def test_download_http_error(site, tmp_path):
    _, url = site
    with pytest.raises(DataError, match="404"):
        download(f"{url}/missing.bin", tmp_path / "x.bin", None, timeout=10)
    assert _leftovers(tmp_path) == ["site"]


def test_download_mnist_from_a_mirror(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    files = {}
    for i, name in enumerate(mnist.FILES):
        (site / name).write_bytes(bytes([i]) * 100)
        files[name] = md5sum(site / name)
    monkeypatch.setattr(mnist, "FILES", files)
    with serve(site) as url:
        # the first mirror has nothing (404): the second one is used
        paths = mnist.download_mnist(tmp_path / "raw", [f"{url}/nothing-here/", f"{url}/"], timeout=10)
    assert [p.name for p in paths] == list(files)
    assert all(md5sum(p) == files[p.name] for p in paths)


def test_download_mnist_md5_mismatch_names_the_file(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    for name in mnist.FILES:
        (site / name).write_bytes(b"not mnist")
    with serve(site) as url, pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*md5 mismatch"):
        mnist.download_mnist(tmp_path / "raw", f"{url}/", timeout=10)
    assert _leftovers(tmp_path / "raw") == []


@pytest.mark.parametrize(
    "module, fetch",
    [(cifar10, cifar10.download_cifar10), (cifar100, cifar100.download_cifar100)],
    ids=["cifar10", "cifar100"],
)
def test_download_cifar_checks_the_official_md5(tmp_path, module, fetch):
    """A served file whose md5 is not the official one is an error naming that md5 and leaves nothing."""
    site = tmp_path / "site"
    site.mkdir()
    (site / module.ARCHIVE).write_bytes(b"not the archive")
    with serve(site) as url, pytest.raises(DataError, match=module.MD5):
        fetch(tmp_path / "raw", f"{url}/{module.ARCHIVE}", timeout=10)
    assert _leftovers(tmp_path / "raw") == []


# ---- tar extraction ---------------------------------------------------------------------------------


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def test_safe_extract_good_archive(tmp_path):
    arc = _tar(
        tmp_path / "a.tar.gz",
        [
            _file("pkg/a.txt", b"hello"),
            _file("pkg/sub/b.txt", b"b"),
            _link("pkg/ln", "a.txt", tarfile.SYMTYPE),
        ],
    )
    out = tmp_path / "out"
    files = safe_extract_tar(arc, out)
    assert sorted(p.relative_to(out).as_posix() for p in files) == ["pkg/a.txt", "pkg/sub/b.txt"]
    assert (out / "pkg" / "a.txt").read_bytes() == b"hello"
    assert (out / "pkg" / "ln").read_bytes() == b"hello"
    assert _leftovers(tmp_path) == ["a.tar.gz", "out"]  # no temp folders left


@pytest.mark.parametrize(
    ("member", "pattern"),
    [
        (_file("/tmp/evil.txt"), "absolute path"),
        (_file("pkg/../../evil.txt"), r"'\.\.'"),
        (_file("../evil.txt"), r"'\.\.'"),
        (_link("pkg/ln", "../../outside", tarfile.SYMTYPE), "links outside"),
        (_link("pkg/ln", "/etc/passwd", tarfile.SYMTYPE), "absolute path"),
        (_link("pkg/hl", "../outside", tarfile.LNKTYPE), "links outside"),
        (_link("pkg/dev", "", tarfile.CHRTYPE), "device"),
        (_link("pkg/fifo", "", tarfile.FIFOTYPE), "device"),
    ],
)
def test_safe_extract_rejects_malicious_members(tmp_path, member, pattern):
    arc = _tar(tmp_path / "bad.tar", [_file("pkg/ok.txt"), member], mode="w")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=pattern) as e:
        safe_extract_tar(arc, out)
    assert repr(member[0].name) in str(e.value)  # names the member
    assert not out.exists()  # validated before anything is written
    assert _leftovers(tmp_path) == ["bad.tar"]


def test_safe_extract_truncated_and_corrupt(tmp_path):
    arc = _tar(tmp_path / "a.tar.gz", [_file("pkg/big.bin", bytes(range(256)) * 2000)])
    raw = arc.read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "junk.tar.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 100)
    for name in ("cut.tar.gz", "junk.tar.gz"):
        with pytest.raises(DataError, match="truncated or corrupt"):
            safe_extract_tar(tmp_path / name, tmp_path / "out")
        assert not (tmp_path / "out").exists()
