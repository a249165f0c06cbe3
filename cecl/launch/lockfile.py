"""Put dvc.lock's stage entries in the order one serial ``dvc repro`` writes them.

DVC appends a stage's entry to dvc.lock when the stage first finishes, so parallel stages leave their
entries in completion order; the content of every entry is DVC's own. A serial run keeps the entries
that existed before it in place and appends the new ones in its plan order, so this reorders only,
under DVC's repository lock and with DVC's own YAML round-trip (formatting kept). DVC has no option for
this, hence this small function.
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
