"""Where each stage reads and writes, relative to the repository root; the only place paths are formatted."""

from __future__ import annotations

from pathlib import Path

from cecl.data.biased_mnist import rho_dir_name

DATA_DIR = Path("data/biased_mnist")
MODELS_DIR = Path("models")
PROBE_DIR = Path("probe")
REPORTS_DIR = Path("reports")
SWEEP_DIR = Path("sweep")
CHECKPOINT_DIR = Path("checkpoints")


def rho_name(rho: float) -> str:
    """``rho_0.99``: the folder name of one training rho, the same rule as the data folders."""
    return rho_dir_name(rho)


def stage_name(stage: str, rho: float, method: str) -> str:
    """The DVC matrix stage name, e.g. ``pretrain@0.99-cecl`` (also the MLflow run name)."""
    return f"{stage}@{rho:g}-{method}"


def model_dir(rho: float, method: str) -> Path:
    return MODELS_DIR / rho_name(rho) / method


def probe_dir(rho: float, method: str) -> Path:
    return PROBE_DIR / rho_name(rho) / method


def checkpoint_path(rho: float, method: str) -> Path:
    return CHECKPOINT_DIR / "pretrain" / f"{rho_name(rho)}-{method}" / "last.pt"
