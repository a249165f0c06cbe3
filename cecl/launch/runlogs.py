"""Per-launch log folders: each launch writes its logs under a name that carries its start time and pid.

``make repro`` (``python -m cecl.repro``) and ``make repro JOBS=N`` (``python -m cecl.launch``) used to
write fixed names (``logs/launch/<stage>.log``), so a launch's logs replaced the previous one's, and the
log of a failure was gone once the next launch ran the stage again. Now each launch gets its own
``logs/<kind>/<UTC start time>-p<pid>/``: names sort by start time, two launches never share one (one
launch per workspace at a time, cecl/launch/single.py; and the folder is created exclusively), and the
launch prints where. Standard library only: ``cecl.repro`` imports it before anything heavy.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

LOGS = Path("logs")


def launch_id(now: float | None = None, pid: int | None = None) -> str:
    """``20261208T000146Z-p12345``: the UTC start time to the second, then the launching process's pid."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-p{os.getpid() if pid is None else pid}"


def new_launch_dir(root: Path, kind: str, ident: str | None = None) -> Path:
    """Create ``root/logs/<kind>/<launch id>/`` and return it relative to ``root``; never an existing
    folder (FileExistsError), so no launch writes into another's logs."""
    folder = LOGS / kind / (ident or launch_id())
    (root / folder).parent.mkdir(parents=True, exist_ok=True)
    (root / folder).mkdir()
    return folder
