"""``python -m cecl.stage <stage> [args]``: the command of every DVC stage in dvc.yaml.

Runs ``stages/<stage>.py`` exactly as ``python -m stages.<stage> [args]`` would. Under ``make repro``
(``python -m cecl.repro``) and the one-host launcher (``python -m cecl.launch``) a warm stage server is
running, and the stage then runs in a process forked from it, with torch, MLflow and the project already
imported (cecl/warm.py: about 6 s saved per stage); anywhere else (plain ``dvc repro``, a cluster node, a
shell) it runs in this process, cold. Both give the
same outputs byte for byte (tests/test_warm.py). This module imports only the standard library, so the
warm path costs one interpreter start.
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Sequence

from cecl import warm

STAGES = ("prepare", "pretrain", "probe", "transfer", "floor", "sweep", "aggregate")


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in STAGES:
        got = repr(argv[0]) if argv else "nothing"
        print(f"error: cecl.stage: expected a stage name ({', '.join(STAGES)}), got {got}", file=sys.stderr)
        return 2
    module, args = f"stages.{argv[0]}", list(argv[1:])
    path = warm.usable()
    if path is not None:
        try:
            return warm.request(path, module, args)
        except OSError:
            pass  # no server listening (it ended or never started): run cold
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
