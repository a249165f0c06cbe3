"""The repository's files as git's HEAD records them, for tests that check committed results against
committed docs.

``make repro`` rewrites the tracked results (probe/**/metrics.json, reports/, sweep/, dvc.lock), as DVC
is meant to; on another CPU the numbers move by round-off. A test that compared the README's generated
blocks with the working tree's results would then fail after a user's own rerun. So such tests read
both sides from ``git archive HEAD`` (what CI and a fresh clone see), and only fall back to the working
tree where there is no git checkout (a source tarball). ``make compare`` is how a user checks a rerun.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, check=False)


def in_git_checkout(root: Path) -> bool:
    """Whether ``root`` is the top of a git work tree with a HEAD commit."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top.returncode != 0 or Path(top.stdout.decode().strip()).resolve() != root.resolve():
        return False
    return _git(root, "rev-parse", "--verify", "--quiet", "HEAD").returncode == 0


def committed_tree(root: Path, dest: Path, paths: Sequence[str]) -> Path:
    """``paths`` (files or folders, relative to ``root``) as HEAD records them, extracted under ``dest``;
    the working tree's copies where ``root`` is not a git checkout. Paths HEAD lacks are skipped."""
    dest.mkdir(parents=True, exist_ok=True)
    if in_git_checkout(root):
        listed = _git(root, "ls-tree", "-r", "--name-only", "HEAD", "--", *paths)
        if listed.returncode != 0:
            raise RuntimeError(f"git ls-tree failed in {root}: {listed.stderr.decode().strip()}")
        if not listed.stdout.strip():
            return dest
        archive = _git(root, "archive", "--format=tar", "HEAD", "--", *paths_in_head(listed.stdout, paths))
        if archive.returncode != 0:
            raise RuntimeError(f"git archive failed in {root}: {archive.stderr.decode().strip()}")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(dest, filter="data")
        return dest
    for relative in paths:
        source = root / relative
        if source.is_dir():
            shutil.copytree(source, dest / relative, dirs_exist_ok=True)
        elif source.is_file():
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / relative)
    return dest


def paths_in_head(listing: bytes, paths: Sequence[str]) -> list[str]:
    """The entries of ``paths`` that have at least one file in ``listing`` (``git ls-tree`` output)."""
    files = listing.decode().splitlines()
    return [p for p in paths if any(f == p or f.startswith(p.rstrip("/") + "/") for f in files)]
