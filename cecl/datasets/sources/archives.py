"""Getting raw dataset files safely: digests, resumable downloads, and archive reading that cannot escape.

Every dataset family that reads a published archive (CIFAR, Caltech, UTKFace, CelebA, ...) goes
through these helpers, so the rules are the same everywhere:

* a file is used only after its digest matched the published one, unless the user turned
  verification off (then ONE warning says so, and the manifest records ``verified: false``);
* a download is written to ``<dest>.part`` and moved to ``dest`` only once complete and verified, so
  a partial file is never at ``dest``; an interrupted download resumes with an HTTP Range request;
* an archive member never lands outside the target folder (absolute names, ``..``, links pointing
  out, device files are refused), and a refused archive writes nothing.

Library code throughout (hashlib, urllib, tarfile, zipfile); tarfile's ``data`` filter is used where
Python has it, and the same checks are also done here first, because the filter only exists from
3.11.4 / 3.12, does not cover zip files, and we want one-line errors that name the member.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath

from cecl.datasets.errors import DataIntegrityError, DataUnavailable

CHUNK = 1 << 20  # 1 MiB: digests and downloads are streamed, never held whole in memory


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# ----------------------------------------------------------------------------- digests


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """Hex digest of the file ``path`` (``md5``, ``sha256``, any hashlib name), read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def warn_unverified(what: object, reason: str) -> None:
    """The one warning line for data used without a digest check (stand-ins, private copies)."""
    warnings.warn(_one_line(f"{what}: not verified ({reason})"), UserWarning, stacklevel=3)


def verify_file(path: Path, expected: str | None, algorithm: str = "md5", *, verify: bool = True) -> bool:
    """Check ``path`` against the published digest ``expected``.

    Returns True when verified; False (after one warning) when ``verify`` is False or there is no
    published digest. A mismatch raises DataIntegrityError, one line naming the file and both digests.
    """
    if not verify or expected is None:
        warn_unverified(path, "verification turned off" if not verify else f"no published {algorithm}")
        return False
    got = file_digest(path, algorithm)
    if got.lower() != expected.lower():
        raise DataIntegrityError(f"{path}: {algorithm} {got} does not match the published {expected}")
    return True


# ----------------------------------------------------------------------------- downloads


def part_path(dest: Path) -> Path:
    """Where a download of ``dest`` is written until complete and verified."""
    return dest.with_suffix(dest.suffix + ".part")


def _open(url: str, start: int, timeout: float):
    """The HTTP response for ``url``, asking for bytes ``start``.. when resuming (urllib only)."""
    request = urllib.request.Request(url, headers={"User-Agent": "cecl-pipeline"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(request, timeout=timeout)


def _fetch_into(url: str, part: Path, timeout: float) -> None:
    """Download ``url`` into ``part``, appending when the server honours the Range request.

    A server that ignores Range answers 200 with the whole file: then the part is restarted from
    byte 0 instead of being appended to (which would corrupt it). A 416 means the part already holds
    the whole file (the caller's digest check decides). A short body (fewer bytes than the declared
    length) raises, keeping the part for the next resume.
    """
    start = part.stat().st_size if part.is_file() else 0
    try:
        response = _open(url, start, timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:
            return
        raise
    with response:
        resumed = start > 0 and response.status == 206 and _range_start(response) == start
        mode = "ab" if resumed else "wb"
        declared = response.headers.get("Content-Length")
        written = 0
        with part.open(mode) as f:
            for block in iter(lambda: response.read(CHUNK), b""):
                f.write(block)
                written += len(block)
    if declared is not None and written < int(declared):
        raise OSError(f"connection closed after {written} of {declared} bytes")


def _range_start(response) -> int | None:
    """The first byte of a 206 response (``Content-Range: bytes START-END/TOTAL``), None if unreadable."""
    value = response.headers.get("Content-Range", "")
    try:
        unit, spec = value.split(" ", 1)
        return int(spec.split("-", 1)[0]) if unit == "bytes" else None
    except ValueError:
        return None


def download(
    url: str,
    dest: Path,
    expected: str | None,
    algorithm: str = "md5",
    *,
    verify: bool = True,
    timeout: float = 60,
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed if present), verify, then move it.

    A failed transfer raises DataUnavailable (one line) and keeps the part for a later resume; a
    digest mismatch deletes the part (its bytes are wrong, resuming would keep them) and raises
    DataIntegrityError. ``dest`` only ever holds a complete, verified (or knowingly unverified) file.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    try:
        _fetch_into(url, part, timeout)
    except (OSError, ValueError) as err:  # URLError, HTTPError, timeouts, resets are OSErrors
        raise DataUnavailable(
            _one_line(f"could not download {url} to {dest} ({type(err).__name__}: {err}); partial file kept")
        ) from err
    try:
        verify_file(part, expected, algorithm, verify=verify)
    except DataIntegrityError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return dest


def locate_or_download(
    root: Path,
    filename: str,
    *,
    url: str | None,
    expected: str | None,
    algorithm: str = "md5",
    allow_download: bool,
    verify: bool,
    how_to_get: str,
) -> Path:
    """``root/filename`` when present (verified), else downloaded there when allowed and ``url`` given.

    Otherwise DataUnavailable: one line naming the missing file and ``how_to_get`` it.
    """
    path = Path(root) / filename
    if path.is_file():
        verify_file(path, expected, algorithm, verify=verify)
        return path
    if allow_download and url:
        return download(url, path, expected, algorithm, verify=verify)
    raise DataUnavailable(_one_line(f"{path} not found: {how_to_get}"))


# ----------------------------------------------------------------------------- archives


def _check_name(archive: Path, name: str) -> PurePosixPath:
    """A member name as a safe relative path; absolute names, drives and '..' parts are refused."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if not name or posix.is_absolute() or PureWindowsPath(name).drive or PureWindowsPath(name).root:
        raise DataIntegrityError(f"{archive}: refusing member {name!r}: absolute path")
    if ".." in posix.parts:
        raise DataIntegrityError(f"{archive}: refusing member {name!r}: '..' escapes the target folder")
    return posix


def _inside(base: PurePosixPath, link: str) -> bool:
    """Whether ``link``, relative to the folder ``base`` inside the target, stays inside the target."""
    if PurePosixPath(link).is_absolute() or PureWindowsPath(link).drive:
        return False
    depth = len(base.parts)
    for part in PurePosixPath(link.replace("\\", "/")).parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return False
    return True


def _check_tar_member(archive: Path, member: tarfile.TarInfo) -> PurePosixPath:
    """The member's safe relative path; device files and links pointing outside are refused."""
    name = _check_name(archive, member.name)
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        raise DataIntegrityError(f"{archive}: refusing member {member.name!r}: device or fifo")
    if member.issym() and not _inside(name.parent, member.linkname):
        raise DataIntegrityError(
            f"{archive}: refusing member {member.name!r}: symlink to {member.linkname!r} outside the target"
        )
    if member.islnk() and not _inside(PurePosixPath(), member.linkname):  # hardlinks: archive-relative
        raise DataIntegrityError(
            f"{archive}: refusing member {member.name!r}: hardlink to {member.linkname!r} outside the target"
        )
    return name


def _zip_is_link(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _check_zip_member(archive: Path, info: zipfile.ZipInfo) -> PurePosixPath:
    """The member's safe relative path; zip symlinks are refused (zipfile would write them as files)."""
    name = _check_name(archive, info.filename)
    if _zip_is_link(info):
        raise DataIntegrityError(f"{archive}: refusing member {info.filename!r}: symlink")
    return name


def _kind(archive: Path) -> str:
    """``zip`` or ``tar`` (any compression tarfile reads); anything else is a DataIntegrityError."""
    archive = Path(archive)
    if not archive.is_file():
        raise FileNotFoundError(f"{archive} not found")
    if zipfile.is_zipfile(archive):
        return "zip"
    if tarfile.is_tarfile(archive):
        return "tar"
    raise DataIntegrityError(f"{archive}: not a tar or zip archive")


def _wanted(archive: Path, names: list[str], members: Iterable[str] | None) -> set[str]:
    if members is None:
        return set(names)
    wanted = {str(m) for m in members}
    missing = sorted(wanted - set(names))
    if missing:
        raise DataIntegrityError(f"{archive}: no member {missing[0]!r}")
    return wanted


def _extract_tar(archive: Path, tmp: Path, members: Iterable[str] | None) -> None:
    with tarfile.open(archive, "r:*") as tar:
        infos = tar.getmembers()
        for info in infos:
            _check_tar_member(archive, info)
        wanted = _wanted(archive, [i.name for i in infos], members)
        chosen = [i for i in infos if i.name in wanted]
        if hasattr(tarfile, "data_filter"):
            try:
                tar.extractall(tmp, members=chosen, filter="data")
            except tarfile.FilterError as err:  # a case our own checks did not name
                raise DataIntegrityError(_one_line(f"{archive}: refusing member: {err}")) from None
        else:  # pragma: no cover - Python < 3.11.4: our checks above are the only guard
            tar.extractall(tmp, members=chosen)


def _extract_zip(archive: Path, tmp: Path, members: Iterable[str] | None) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_zip_member(archive, info)
        wanted = _wanted(archive, [i.filename for i in infos], members)
        for info in infos:
            if info.filename in wanted:
                zf.extract(info, tmp)


def _move_tree(tmp: Path, target: Path) -> list[Path]:
    """Move everything under ``tmp`` into ``target`` (replacing files of the same name); returns them."""
    moved: list[Path] = []
    for path in sorted(tmp.rglob("*")):
        dest = target / path.relative_to(tmp)
        if path.is_dir() and not path.is_symlink():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(path, dest)
        moved.append(dest)
    return moved


def safe_extract(archive: Path, target: Path, members: Iterable[str] | None = None) -> list[Path]:
    """Extract ``archive`` (tar, any compression, or zip) into ``target``; returns the files written.

    Every member is checked before anything is written; extraction goes into a temporary folder
    inside ``target``'s parent and is moved into place afterwards, so a refused or broken archive
    leaves ``target`` as it was. ``members``: only these names (all when None).
    """
    archive, target = Path(archive), Path(target)
    kind = _kind(archive)
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.extract-", dir=target.parent))
    try:
        (_extract_zip if kind == "zip" else _extract_tar)(archive, tmp, members)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:  # innermost first: the folders made for the temp folder, if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    try:
        target.mkdir(parents=True, exist_ok=True)
        return _move_tree(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_member(archive: Path, name: str) -> bytes:
    """The bytes of the regular-file member ``name``, read without extracting (tar or zip).

    The name is checked as for extraction; a missing member, or one that is not a regular file,
    is a DataIntegrityError naming it.
    """
    return read_members(archive, [name])[name]


def read_members(archive: Path, names: Iterable[str]) -> dict[str, bytes]:
    """Several regular-file members by name in ONE pass over the archive (a .tar.gz has no index:
    reading members one by one would decompress it once per member)."""
    archive, wanted = Path(archive), [str(n) for n in names]
    for name in wanted:
        _check_name(archive, name)
    found: dict[str, bytes] = {}
    for name, data in iter_members(archive, only=set(wanted)):
        found[name] = data
        if len(found) == len(set(wanted)):
            break  # the rest of the archive need not be decompressed
    missing = [n for n in wanted if n not in found]
    if missing:
        raise DataIntegrityError(f"{archive}: no regular-file member {missing[0]!r}")
    return found


def iter_members(archive: Path, only: set[str] | None = None) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each regular-file member, in archive order, streamed (one member in memory).

    Directories and (safe) links are skipped; unsafe names, links pointing outside and device files
    raise DataIntegrityError as in :func:`safe_extract`. ``only``: yield just these names.
    """
    archive = Path(archive)
    if _kind(archive) == "zip":
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:  # the central directory is cheap to check whole, before any read
                _check_zip_member(archive, info)
            for info in infos:
                if not info.is_dir() and (only is None or info.filename in only):
                    yield info.filename, zf.read(info)
        return
    with archive.open("rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:  # streaming mode
        for info in tar:
            _check_tar_member(archive, info)
            if info.isfile() and (only is None or info.name in only):
                f = tar.extractfile(info)
                if f is not None:
                    yield info.name, f.read()
