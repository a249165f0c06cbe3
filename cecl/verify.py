"""``python -m cecl.verify`` (``make verify``): re-hash the DVC cache and the workspace outputs in dvc.lock.

DVC trusts its cache: ``dvc status``, ``repro``, ``checkout``, ``push`` and ``pull`` never re-hash an
object, so one flipped byte in ``.dvc/cache`` is restored in place of the good file and spread to the
remote (only a remote with ``verify = true`` re-hashes what it downloads). The cache is content
addressed, as git's object store is: an object's name is the MD5 of its bytes
(``files/md5/ab/cdef...``; a directory's listing is ``<md5>.dir``), so checking it needs nothing but
the bytes, as ``git fsck`` does. The workspace outputs recorded in dvc.lock are checked against the
MD5 recorded there (a folder's MD5 is that of its listing, computed as DVC writes it). Every mismatch
is named on its own line; the exit status is 1 when there is any. Outputs not in the workspace (a fresh
clone) are counted, not errors. The run-cache (``.dvc/cache/runs``) holds YAML records, not content-
addressed objects, and is not checked here.

:func:`check_cache` with a ``seen`` record is what ``python -m cecl.repro`` runs before ``dvc repro``:
it re-hashes only objects whose size, mtime or inode changed since they last passed (DVC writes objects
read-only, so a changed object is one something else rewrote), and refuses the run on a mismatch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

OBJECT_NAME = re.compile(r"^[0-9a-f]{30}(\.dir)?$")
SEEN_FILE = Path(".dvc/tmp/cecl-verified.json")


@dataclass
class Report:
    """What a check found: mismatches (one line each), and counts of what was checked."""

    mismatches: list[str] = field(default_factory=list)
    checked: int = 0
    bytes: int = 0
    missing: int = 0


def md5_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def cache_root(root: Path) -> Path:
    """The MD5 object store of ``root``'s DVC cache (``cache.dir`` honoured, as DVC resolves it)."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo
    from dvc.scm import SCMError as DvcSCMError
    from scmrepo.exceptions import SCMError

    try:
        with Repo(str(root)) as repo:
            return Path(repo.cache.local.path)
    except (NotDvcRepoError, SCMError, DvcSCMError):  # a workspace outside git: DVC's default store
        return root / ".dvc" / "cache" / "files" / "md5"


def cache_objects(store: Path) -> Iterator[tuple[Path, str]]:
    """Each object in the store and the MD5 its name promises."""
    if not store.is_dir():
        return
    for prefix in sorted(p for p in store.iterdir() if p.is_dir() and len(p.name) == 2):
        for obj in sorted(prefix.iterdir()):
            if obj.is_file() and OBJECT_NAME.match(obj.name):
                yield obj, prefix.name + obj.name.removesuffix(".dir")


def _stamp(path: Path) -> list[int]:
    """What changes when anything rewrites a file (ctime cannot be set back, unlike the mtime DVC trusts)."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def check_cache(store: Path, seen: Path | None = None, always: frozenset[str] = frozenset()) -> Report:
    """Re-hash every object against its name; with ``seen``, only objects not verified unchanged before
    and those in ``always`` (paths relative to ``store``)."""
    report = Report()
    known: dict[str, list[int]] = {}
    if seen is not None and seen.is_file():
        try:
            known = json.loads(seen.read_text())
        except (OSError, json.JSONDecodeError):
            known = {}
    passed: dict[str, list[int]] = {}
    for obj, expected in cache_objects(store):
        key = obj.relative_to(store).as_posix()
        stamp = _stamp(obj)
        if known.get(key) == stamp and key not in always:
            passed[key] = stamp
            continue
        actual = md5_of(obj)
        report.checked += 1
        report.bytes += stamp[0]
        if actual == expected:
            passed[key] = stamp
        else:
            report.mismatches.append(f"cache object {obj}: md5 {actual}, its name says {expected}")
    if seen is not None:
        seen.parent.mkdir(parents=True, exist_ok=True)
        seen.write_text(json.dumps(passed, sort_keys=True))
    return report


def restore_objects(root: Path, store: Path) -> frozenset[str]:
    """The cache objects (relative to ``store``) of dvc.lock's outputs missing from the workspace: what
    ``dvc repro`` or ``dvc checkout`` is about to copy into it (a folder's listing and its files)."""
    wanted: set[str] = set()
    for _stage, relpath, md5 in lock_outputs(root):
        if (root / relpath).exists():
            continue
        key = f"{md5[:2]}/{md5[2:]}"
        wanted.add(key)
        listing = store / key
        if md5.endswith(".dir") and listing.is_file():
            try:
                entries = json.loads(listing.read_text())
            except (OSError, ValueError):
                continue  # a damaged listing fails its own hash
            wanted.update(
                f"{e['md5'][:2]}/{e['md5'][2:]}" for e in entries if isinstance(e, dict) and "md5" in e
            )
    return frozenset(wanted)


def cache_refusal(root: Path) -> str | None:
    """One line refusing a run when a cache object DVC could restore fails its hash, else None.

    The objects of dvc.lock's outputs missing from the workspace are always re-hashed (what a checkout
    restores next, bit rot included); the others only when new or changed on disk since they last passed
    (``SEEN_FILE``), so a repeated run re-reads almost nothing.
    """
    if not (root / ".dvc").is_dir():
        return None
    store = cache_root(root)
    report = check_cache(store, root / SEEN_FILE, restore_objects(root, store))
    if not report.mismatches:
        return None
    more = f" (and {len(report.mismatches) - 1} more)" if len(report.mismatches) > 1 else ""
    return (
        f"{report.mismatches[0]}{more}; DVC would restore it as a result: remove the bad object(s) and run "
        "again (make verify lists every mismatch)"
    )


def dir_md5(folder: Path) -> str:
    """A folder's MD5 as DVC 3 records it: the MD5 of its listing's JSON (``[{"md5", "relpath"}]``,
    sorted by path components), the bytes of its ``.dir`` object."""
    files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.relative_to(folder).parts)
    listing = [{"md5": md5_of(p), "relpath": p.relative_to(folder).as_posix()} for p in files]
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest() + ".dir"


def lock_outputs(root: Path) -> Iterator[tuple[str, str, str]]:
    """(stage, output path, recorded md5) for every output in dvc.lock."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return
    for stage, entry in ((yaml.safe_load(lock.read_text()) or {}).get("stages") or {}).items():
        for out in entry.get("outs") or []:
            if out.get("md5"):
                yield stage, out["path"], out["md5"]


def check_workspace(root: Path) -> Report:
    """Re-hash the workspace outputs recorded in dvc.lock against their recorded MD5."""
    report = Report()
    for stage, relpath, expected in lock_outputs(root):
        path = root / relpath
        if not path.exists():
            report.missing += 1
            continue
        is_dir = expected.endswith(".dir")
        if path.is_dir() != is_dir:
            report.mismatches.append(
                f"output {relpath} ({stage}): a {'file' if is_dir else 'folder'} in dvc.lock"
            )
            continue
        actual = dir_md5(path) if is_dir else md5_of(path)
        report.checked += 1
        if actual != expected:
            report.mismatches.append(f"output {relpath} ({stage}): md5 {actual}, dvc.lock says {expected}")
    return report


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cecl.verify", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository (default: here)")
    args = parser.parse_args(argv)
    if not (args.root / ".dvc").is_dir():
        print(f"error: verify: {args.root} is not a DVC repository (no .dvc/)", file=sys.stderr)
        return 2
    started = time.monotonic()
    cache = check_cache(cache_root(args.root))
    outputs = check_workspace(args.root)
    for line in cache.mismatches + outputs.mismatches:
        print(f"MISMATCH {line}", flush=True)
    bad = len(cache.mismatches) + len(outputs.mismatches)
    print(
        f"[verify] {cache.checked} cache object(s) ({cache.bytes / 2**20:.1f} MiB) and {outputs.checked} "
        f"workspace output(s) re-hashed in {time.monotonic() - started:.1f} s"
        + (f"; {outputs.missing} output(s) of dvc.lock not in the workspace" if outputs.missing else "")
        + (f": {bad} mismatch(es)" if bad else ": all match"),
        flush=True,
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
