"""dvc.lock's stage entries: in the order one serial ``dvc repro`` writes them, and only dvc.yaml's stages.

DVC appends a stage's entry to dvc.lock when the stage first finishes, so parallel stages leave their
entries in completion order; the content of every entry is DVC's own. A serial run keeps the entries
that existed before it in place and appends the new ones in its plan order, so :func:`serial_order`
reorders only. DVC also never drops the entry of a stage that dvc.yaml no longer defines (a profile that
drops a foreach item, a renamed stage), so dvc.lock keeps results no run can reproduce;
:func:`prune_stale` removes them. Both work under DVC's repository lock with DVC's own YAML round-trip
(formatting kept). DVC has no option for either, hence these small functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def stage_names(root: Path) -> list[str]:
    """The stage entries of dvc.lock, in file order ([] when there is no dvc.lock)."""
    import yaml

    path = root / "dvc.lock"
    if not path.exists():
        return []
    return list((yaml.safe_load(path.read_text()) or {}).get("stages", {}))


def serial_order(root: Path, before: Sequence[str], plan: Sequence[str]) -> bool:
    """Reorder dvc.lock to ``before`` (entries present before the launch) then new ones in ``plan``
    order (then anything else); returns whether the file changed."""
    from dvc.repo import Repo
    from dvc.utils.serialize import modify_yaml

    path = root / "dvc.lock"
    if not path.exists():
        return False
    with Repo(str(root)) as repo, repo.lock, modify_yaml(str(path)) as data:
        stages = data.get("stages") or {}
        current = list(stages)
        wanted = [s for s in before if s in stages]
        wanted += [s for s in plan if s in stages and s not in wanted]
        wanted += [s for s in current if s not in wanted]
        if wanted == current:
            return False
        entries = {name: stages[name] for name in current}
        for name in current:
            del stages[name]
        for name in wanted:
            stages[name] = entries[name]
    return True


def prune_stale(root: Path) -> list[str]:
    """Remove dvc.lock's entries of stages ``root``'s dvc.yaml no longer defines (foreach items expanded
    with the current params); returns their names, [] when nothing changed (the file is not rewritten).

    Call while no DVC process of this workspace runs (under the launch lock): it takes DVC's repository
    lock, and raises DVC's own error when dvc.yaml or params cannot be read.
    """
    from dvc.dvcfile import PROJECT_FILE, load_file
    from dvc.repo import Repo
    from dvc.utils.serialize import modify_yaml

    path = root / "dvc.lock"
    if not path.exists() or not (root / PROJECT_FILE).exists():
        return []
    with Repo(str(root)) as repo, repo.lock:
        defined = set(load_file(repo, str(root / PROJECT_FILE)).stages.keys())
        if not [name for name in stage_names(root) if name not in defined]:
            return []
        with modify_yaml(str(path)) as data:
            stages = data.get("stages") or {}
            stale = [name for name in stages if name not in defined]
            for name in stale:
                del stages[name]
    return stale


def pruned_note(stale: Sequence[str], most: int = 3) -> str:
    """One line naming what :func:`prune_stale` removed (the first ``most`` names, then a count)."""
    shown = ", ".join(stale[:most]) + (f" (+{len(stale) - most} more)" if len(stale) > most else "")
    entries = "entry" if len(stale) == 1 else "entries"
    return f"dvc.lock: pruned {len(stale)} {entries} of stages no longer in dvc.yaml: {shown}"


def prune_note(root: Path) -> str | None:
    """:func:`prune_stale` for a launch: the one line saying what was pruned, or None (nothing stale, or
    dvc.yaml / params unreadable: then ``dvc repro`` itself names the problem)."""
    from dvc.exceptions import DvcException

    try:
        stale = prune_stale(root)
    except DvcException:
        return None
    return pruned_note(stale) if stale else None
