"""How `make test` splits the suite over pytest-xdist workers (``-n 2 --dist loadgroup``).

Each test file is one group, so a file's module fixtures (the end-to-end lab, a sweep) are built once,
on one worker. The files that start a local Ray cluster share one group: two clusters starting at once
on one machine contend for Ray's default ports and /tmp/ray (a sweep stage failed that way once), so
they run one after the other.
"""

from __future__ import annotations

import pytest

# test_pipeline_e2e.py too: its tiny profile's sweep stage starts Ray.
RAY_FILES = {"test_sweep.py", "test_sweep_console.py", "test_launcher.py", "test_pipeline_e2e.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        name = item.path.name
        item.add_marker(pytest.mark.xdist_group("ray" if name in RAY_FILES else name))
