"""The Makefile: every declared .PHONY target has a recipe and a `## ` line, and `make help` lists each."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RULE = re.compile(r"^(?P<name>[a-zA-Z_-]+):(?!=)(?P<rest>.*)$")


def phony_targets(text: str) -> list[str]:
    names: list[str] = []
    for line in text.splitlines():
        if line.startswith(".PHONY:"):
            names += line.split(":", 1)[1].split()
    return names


def problems(text: str) -> list[str]:
    """One line per declared target without a rule, a recipe, or a `## ` description on its rule line."""
    lines = text.splitlines()
    rules = {}
    for i, line in enumerate(lines):
        if found := RULE.match(line):
            rules[found.group("name")] = (found.group("rest"), lines[i + 1] if i + 1 < len(lines) else "")
    found_problems = []
    for name in phony_targets(text):
        if name not in rules:
            found_problems.append(f"{name}: declared .PHONY but has no rule")
            continue
        rest, following = rules[name]
        if not following.startswith("\t"):
            found_problems.append(f"{name}: no recipe")
        if "## " not in rest or not rest.split("## ", 1)[1].strip():
            found_problems.append(f"{name}: no `## ` line for make help")
    return found_problems


def test_every_declared_target_has_a_recipe_and_a_help_line() -> None:
    assert problems((ROOT / "Makefile").read_text(encoding="utf-8")) == []


def test_the_check_finds_a_target_without_recipe_or_help() -> None:
    text = ".PHONY: a b c\na: ## does a\n\techo a\nb: install ## does b\n\nc: install\n\techo c\n"
    assert problems(text) == ["b: no recipe", "c: no `## ` line for make help"]
    assert problems(".PHONY: gone\n") == ["gone: declared .PHONY but has no rule"]


def test_make_help_lists_every_target_with_one_line() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    result = subprocess.run(
        ["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    shown = {line.split()[0]: line.split(None, 1)[1] for line in result.stdout.splitlines() if line.strip()}
    targets = phony_targets((ROOT / "Makefile").read_text(encoding="utf-8"))
    assert set(targets) == set(shown), sorted(set(targets) ^ set(shown))
    assert all(len(text) > 10 for text in shown.values()), shown
    default = subprocess.run(["make", "--no-print-directory", "-n"], cwd=ROOT, capture_output=True, text=True)
    assert "expand" in default.stdout, "plain `make` should print the help, not install"
