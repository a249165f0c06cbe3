"""How `make test` splits the suite over pytest-xdist workers (``-n 2 --dist loadfile``).

Each test file goes to one worker, so a file's module fixtures (the end-to-end lab, a sweep) are built
once. The longest files are collected first, so they start at once on different workers instead of one
of them starting last and running alone.

Why not ``--dist loadgroup``: with pytest 9.2, pytest-xdist 3.8's loadgroup sets ``item._nodeid``, which
pytest no longer reads, so groups are ignored and tests are spread one by one; every module fixture was
then built twice (measured: the end-to-end lab, 200 s, built twice in one run).
"""

from __future__ import annotations

import pytest

# Longest first (seconds of one file on 2 cores, measured with --durations): the end-to-end lab and its
# launched clone, the paper profile on stand-ins, the sweep console's runs, the launcher's toy pipelines.
FIRST = ("test_pipeline_e2e.py", "test_profiles.py", "test_sweep_console.py", "test_launcher.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: file order kept otherwise
