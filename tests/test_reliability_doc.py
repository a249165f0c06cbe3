"""docs/reliability.md names, for each guarantee, the test that checks it: every name it gives must exist.

A test renamed or removed would otherwise leave a guarantee the docs still claim is checked. Names are
written `test_x.py`, `test_x.py::test_name`, or `::test_name` for another test of the file named just
before; a test's name is matched as a function definition in that file (read as text: no import).
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAME = re.compile(r"`((?:tests/)?(test_\w+\.py)?(?:::(\w+))?)`")


def _named(text: str) -> list[tuple[str, str | None]]:
    """(test file, test function or None) for each name in ``text``, ``::name`` resolved to the last file."""
    named, last = [], None
    for match in NAME.finditer(text):
        file, function = match.group(2), match.group(3)
        if not file and not function:
            continue
        last = file or last
        assert last is not None, f"{match.group(0)} names no file"
        named.append((last, function))
    return named


def missing(text: str) -> list[str]:
    """The names in ``text`` with no such test file or no such test function in it."""
    gone = []
    for file, function in _named(text):
        path = REPO / "tests" / file
        if not path.is_file():
            gone.append(file)
        elif function and not re.search(rf"^(?:async )?def {function}\(", path.read_text(), re.MULTILINE):
            gone.append(f"{file}::{function}")
    return gone


def test_every_test_the_reliability_doc_names_exists() -> None:
    text = (REPO / "docs/reliability.md").read_text()
    assert len(_named(text)) > 40
    assert missing(text) == []


def test_a_renamed_or_removed_test_is_found() -> None:
    text = "`test_repro.py::test_summary_names_times_and_counts`, `::test_summary_names`, `test_nope.py`"
    assert _named(text) == [
        ("test_repro.py", "test_summary_names_times_and_counts"),
        ("test_repro.py", "test_summary_names"),
        ("test_nope.py", None),
    ]
    assert missing(text) == ["test_repro.py::test_summary_names", "test_nope.py"]
