"""Raw-file helpers: digests, resumable downloads from a local HTTP server, and archives that cannot
escape their target folder (hostile tar and zip members are refused and nothing is written).

The HTTP server runs on 127.0.0.1 in a thread of this process: no network is touched.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import tarfile
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cecl.datasets.errors import DataIntegrityError, DataUnavailable
from cecl.datasets.sources.archives import (
    download,
    file_digest,
    iter_members,
    locate_or_download,
    part_path,
    read_member,
    read_members,
    safe_extract,
    verify_file,
)

PAYLOAD = bytes(range(256)) * 400  # 102 400 bytes
MD5 = hashlib.md5(PAYLOAD).hexdigest()


def tree(folder: Path) -> list[str]:
    """Every path under ``folder`` (hidden temp folders included), relative, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# ----------------------------------------------------------------------------- digests


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_file_digest_and_verify_match(tmp_path: Path, algorithm: str) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(PAYLOAD)
    expected = hashlib.new(algorithm, PAYLOAD).hexdigest()
    assert file_digest(path, algorithm) == expected
    assert verify_file(path, expected, algorithm) is True
    assert verify_file(path, expected.upper(), algorithm) is True  # published digests may be upper-case


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_verify_mismatch_names_file_and_both_digests(tmp_path: Path, algorithm: str) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(PAYLOAD)
    wrong = hashlib.new(algorithm, b"other").hexdigest()
    with pytest.raises(DataIntegrityError) as info:
        verify_file(path, wrong, algorithm)
    message = str(info.value)
    got = hashlib.new(algorithm, PAYLOAD).hexdigest()
    assert "\n" not in message and str(path) in message and got in message and wrong in message
    assert algorithm in message
    assert tree(tmp_path) == ["f.bin"]  # nothing written


@pytest.mark.parametrize("expected", [None, "0" * 32])
def test_unverified_warns_once_and_returns_false(tmp_path: Path, expected: str | None) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"not what was published")
    verify = expected is None  # a wrong digest with verify=False must not raise
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert verify_file(path, expected, verify=verify) is False
    message = str(caught[0].message)
    assert len(caught) == 1 and "not verified" in message and str(path) in message


# ----------------------------------------------------------------------------- downloads


class Server:
    """A local HTTP server serving PAYLOAD at /f; knobs say how it misbehaves; it logs each request."""

    def __init__(self) -> None:
        self.range_support = True
        self.cut_at: int | None = None  # send only this many body bytes, then close
        self.declare_length = True
        self.requests: list[dict] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                asked = self.headers.get("Range")
                start = 0
                if asked and owner.range_support:
                    start = int(asked.removeprefix("bytes=").split("-")[0])
                body = PAYLOAD[start:]
                owner.requests.append({"range": asked, "start": start})
                if start >= len(PAYLOAD) and asked and owner.range_support:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                    self.end_headers()
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
                if owner.declare_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if owner.cut_at is None else body[: owner.cut_at])
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/f"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def test_download_complete_and_verified(tmp_path: Path, server: Server) -> None:
    dest = download(server.url, tmp_path / "f.bin", MD5)
    assert dest.read_bytes() == PAYLOAD and not part_path(dest).exists()
    assert server.requests == [{"range": None, "start": 0}]


def test_download_resumes_a_partial_file_with_range(tmp_path: Path, server: Server) -> None:
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(PAYLOAD[:40000])
    download(server.url, dest, MD5)
    assert dest.read_bytes() == PAYLOAD and not part_path(dest).exists()
    assert server.requests == [{"range": "bytes=40000-", "start": 40000}]  # only the rest was sent


def test_download_restarts_when_server_ignores_range(tmp_path: Path, server: Server) -> None:
    server.range_support = False
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(PAYLOAD[:40000])  # appending the full body to this would corrupt it
    download(server.url, dest, MD5)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [{"range": "bytes=40000-", "start": 0}]


def test_download_with_complete_part_gets_416_and_finishes(tmp_path: Path, server: Server) -> None:
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(PAYLOAD)
    download(server.url, dest, MD5)
    assert dest.read_bytes() == PAYLOAD and server.requests[0]["start"] == len(PAYLOAD)


def test_interrupted_download_keeps_part_then_resumes(tmp_path: Path, server: Server) -> None:
    server.cut_at = 30000  # declares the full length, sends 30 000 bytes
    dest = tmp_path / "f.bin"
    with pytest.raises(DataUnavailable) as info:
        download(server.url, dest, MD5)
    assert "\n" not in str(info.value) and server.url in str(info.value)
    assert not dest.exists() and part_path(dest).read_bytes() == PAYLOAD[:30000]
    server.cut_at = None
    download(server.url, dest, MD5)
    assert dest.read_bytes() == PAYLOAD and server.requests[-1]["start"] == 30000


def test_truncated_download_without_length_is_caught_by_the_digest(tmp_path: Path, server: Server) -> None:
    server.declare_length, server.cut_at = False, 50000  # nothing tells the client it is short
    dest = tmp_path / "f.bin"
    with pytest.raises(DataIntegrityError) as info:
        download(server.url, dest, MD5)
    assert MD5 in str(info.value) and hashlib.md5(PAYLOAD[:50000]).hexdigest() in str(info.value)
    assert not dest.exists() and not part_path(dest).exists()  # wrong bytes are not kept for resuming


def test_download_unverified_warns_and_still_completes(tmp_path: Path, server: Server) -> None:
    with pytest.warns(UserWarning, match="not verified"):
        dest = download(server.url, tmp_path / "f.bin", None)
    assert dest.read_bytes() == PAYLOAD


def test_locate_or_download(tmp_path: Path, server: Server) -> None:
    how = "get it from https://example.org/f.bin and put it there"
    with pytest.raises(DataUnavailable) as info:
        locate_or_download(
            tmp_path, "f.bin", url=server.url, expected=MD5, allow_download=False, verify=True, how_to_get=how
        )
    assert str(info.value) == f"{tmp_path / 'f.bin'} not found: {how}" and server.requests == []
    kwargs = {"expected": MD5, "verify": True, "how_to_get": how}
    path = locate_or_download(tmp_path, "f.bin", url=server.url, allow_download=True, **kwargs)
    assert path.read_bytes() == PAYLOAD and len(server.requests) == 1
    assert locate_or_download(tmp_path, "f.bin", url=server.url, allow_download=True, **kwargs) == path
    assert len(server.requests) == 1  # present: not downloaded again
    path.write_bytes(b"tampered")
    with pytest.raises(DataIntegrityError, match="does not match the published"):
        locate_or_download(tmp_path, "f.bin", url=server.url, allow_download=True, **kwargs)


# ----------------------------------------------------------------------------- archives


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_link(tar: tarfile.TarFile, name: str, target: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    tar.addfile(info)


def write_tar(path: Path, build: Callable[[tarfile.TarFile], None], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        add_file(tar, "ok/first.txt", b"benign")  # a good member first: a refused archive writes NOTHING
        build(tar)
    return path


def write_zip(path: Path, names: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok/first.txt", b"benign")
        for name in names:
            zf.writestr(zipfile.ZipInfo(name), b"evil")
    return path


def device(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("ok/dev")
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    tar.addfile(info)


HOSTILE_TAR = {
    "absolute": (lambda t: add_file(t, "/tmp/cecl-absolute-x", b"evil"), "absolute"),
    "dotdot": (lambda t: add_file(t, "../x", b"evil"), "'..'"),
    "nested dotdot": (lambda t: add_file(t, "ok/../../x", b"evil"), "'..'"),
    "symlink to /etc": (lambda t: add_link(t, "ok/etc", "/etc", tarfile.SYMTYPE), "symlink"),
    "relative symlink out": (lambda t: add_link(t, "ok/up", "../../x", tarfile.SYMTYPE), "symlink"),
    "hardlink outside": (lambda t: add_link(t, "ok/hl", "../outside", tarfile.LNKTYPE), "hardlink"),
    "device": (device, "device"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TAR))
def test_hostile_tar_is_refused_and_nothing_is_written(tmp_path: Path, case: str) -> None:
    build, word = HOSTILE_TAR[case]
    archive = write_tar(tmp_path / "a.tar.gz", build)
    work = tmp_path / "work"
    target = work / "out"
    with pytest.raises(DataIntegrityError) as info:
        safe_extract(archive, target)
    message = str(info.value)
    assert "\n" not in message and str(archive) in message and word in message
    assert not work.exists()  # neither target, nor its parent, nor the temp folder, nor anything escaped
    assert not (tmp_path / "x").exists() and not Path("/tmp/cecl-absolute-x").exists()
    if case != "device":
        with pytest.raises(DataIntegrityError):  # the streaming readers refuse the same members
            list(iter_members(archive))


@pytest.mark.parametrize("name", ["../x", "/abs/x", "ok/../../x", "C:/x"])
def test_hostile_zip_is_refused_and_nothing_is_written(tmp_path: Path, name: str) -> None:
    archive = write_zip(tmp_path / "a.zip", [name])
    work = tmp_path / "work"
    with pytest.raises(DataIntegrityError) as info:
        safe_extract(archive, work / "out")
    assert "\n" not in str(info.value) and repr(name) in str(info.value)
    assert not work.exists() and not (tmp_path / "x").exists()
    with pytest.raises(DataIntegrityError):
        read_member(archive, "ok/first.txt")  # a zip's whole directory is checked before reading


def test_zip_symlink_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("ok/link")
        info.external_attr = (0o120777) << 16  # S_IFLNK
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DataIntegrityError, match="symlink"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_good_tar_extracts_reads_and_iterates(tmp_path: Path, mode: str) -> None:
    def build(tar: tarfile.TarFile) -> None:
        add_file(tar, "ok/sub/second.bin", PAYLOAD)
        add_link(tar, "ok/sub/alias", "second.bin", tarfile.SYMTYPE)  # inside the target: allowed

    archive = write_tar(tmp_path / "a.tar", build, mode)
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("already there")
    written = safe_extract(archive, target)
    assert sorted(p.relative_to(target).as_posix() for p in written) == [
        "ok/first.txt",
        "ok/sub/alias",
        "ok/sub/second.bin",
    ]
    assert (target / "ok/sub/second.bin").read_bytes() == PAYLOAD
    assert (target / "ok/sub/alias").is_symlink() and (target / "ok/sub/alias").read_bytes() == PAYLOAD
    assert (target / "keep.txt").read_text() == "already there"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar", "out"]  # the temp folder is gone
    assert read_member(archive, "ok/sub/second.bin") == PAYLOAD
    assert dict(iter_members(archive)) == {"ok/first.txt": b"benign", "ok/sub/second.bin": PAYLOAD}
    assert read_members(archive, ["ok/first.txt", "ok/sub/second.bin"])["ok/first.txt"] == b"benign"


def test_extract_selected_members_and_missing_member(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "a.tar.gz", lambda t: add_file(t, "ok/two.txt", b"2"))
    written = safe_extract(archive, tmp_path / "out", members=["ok/two.txt"])
    assert written == [tmp_path / "out/ok/two.txt"] and not (tmp_path / "out/ok/first.txt").exists()
    with pytest.raises(DataIntegrityError, match=re.escape("no member 'ok/three.txt'")):
        safe_extract(archive, tmp_path / "out2", members=["ok/three.txt"])
    assert not (tmp_path / "out2").exists()


def test_good_zip_extracts_reads_and_iterates(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("d/", b"")
        zf.writestr("d/a.bin", PAYLOAD)
        zf.writestr("b.txt", b"bee")
    written = safe_extract(archive, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == ["b.txt", "d/a.bin"]
    assert (tmp_path / "out/d/a.bin").read_bytes() == PAYLOAD
    assert read_member(archive, "b.txt") == b"bee"
    assert list(iter_members(archive)) == [("d/a.bin", PAYLOAD), ("b.txt", b"bee")]


def test_read_member_refuses_bad_names_and_reports_missing(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "a.tar.gz", lambda t: add_link(t, "ok/l", "first.txt", tarfile.SYMTYPE))
    with pytest.raises(DataIntegrityError, match=re.escape("'..' escapes")):
        read_member(archive, "../etc/passwd")
    with pytest.raises(DataIntegrityError, match="absolute"):
        read_member(archive, "/etc/passwd")
    with pytest.raises(DataIntegrityError, match="no regular-file member 'ok/missing'"):
        read_member(archive, "ok/missing")
    with pytest.raises(DataIntegrityError, match="no regular-file member 'ok/l'"):
        read_member(archive, "ok/l")  # a link is not a regular file


def test_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "x.tar.gz"
    path.write_bytes(b"<html>quota exceeded</html>")  # what a failed Google Drive download looks like
    with pytest.raises(DataIntegrityError, match="not a tar or zip archive"):
        safe_extract(path, tmp_path / "out")
