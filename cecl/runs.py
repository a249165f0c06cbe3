"""One run identity, from which every name is derived: DVC stage names, paths, MLflow names and tags.

A pretraining run is ``RunKey(dataset, method, seed)``: ``dataset`` is a named entry of params.yaml
``datasets`` (e.g. ``bmnist_rho95``), not a family. A transfer run is ``TransferKey(source, target,
method, seed)``: the encoder of ``RunKey(source, method, seed)`` probed on ``target``. This module is
the only place these strings and paths are formatted; dvc.yaml's matrix names follow the same rule
(``pretrain@bmnist_rho95-cecl-0``: DVC joins the matrix values with ``-``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path("data")
MODELS_DIR = Path("models")
PROBE_DIR = Path("probe")
TRANSFER_DIR = Path("transfer")
REPORTS_DIR = Path("reports")
SWEEP_DIR = Path("sweep")
CHECKPOINT_DIR = Path("checkpoints")
FLOORS_DIR = Path("floors")

# The floors every method must beat, probed with the final probe's protocol: the raw pixels (one per
# dataset entry) and the untrained encoder each seed starts from (its own initial weights).
FLOOR_KINDS = ("pixels", "init")

# Files inside the run folders (the contract between the stages and the report).
ENCODER_FILE = "encoder.pt"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
CURVE_FILE = "curve.csv"


def data_dir(dataset: str) -> Path:
    """Where the prepare stage of one dataset entry writes its store and manifest.json."""
    return DATA_DIR / dataset


def prepare_stage(dataset: str) -> str:
    return f"prepare@{dataset}"


@dataclass(frozen=True, order=True)
class FloorKey:
    """A floor of one dataset entry: ``pixels`` (seed None: no training, no seed) or ``init`` (a seed)."""

    dataset: str
    kind: str
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in FLOOR_KINDS:
            raise ValueError(f"floor kind must be one of {list(FLOOR_KINDS)}, got {self.kind!r}")
        if (self.seed is None) != (self.kind == "pixels"):
            raise ValueError(
                f"the {self.kind} floor takes {'no seed' if self.kind == 'pixels' else 'a seed'}"
            )

    @property
    def slug(self) -> str:
        """``bmnist_rho99-pixels`` / ``bmnist_rho99-init-0``: the matrix part of the DVC stage name."""
        return f"{self.dataset}-{self.kind}" + ("" if self.seed is None else f"-{self.seed}")

    def stage(self, kind: str = "floor") -> str:
        """``floor-pixels@bmnist_rho99`` / ``floor-init@bmnist_rho99-0``: one dvc.yaml group per floor kind,
        as DVC cannot name one group's items with and without a seed (a matrix joins every axis)."""
        return f"{kind}-{self.kind}@{self.dataset}" + ("" if self.seed is None else f"-{self.seed}")

    @property
    def out_dir(self) -> Path:
        """floors/{dataset}/pixels or floors/{dataset}/init/seed_{seed}: metrics.json and curve.csv."""
        base = FLOORS_DIR / self.dataset / self.kind
        return base if self.seed is None else base / f"seed_{self.seed}"


@dataclass(frozen=True, order=True)
class RunKey:
    """One pretraining run: a dataset entry, a method and a training seed."""

    dataset: str
    method: str
    seed: int

    @property
    def slug(self) -> str:
        """``bmnist_rho95-cecl-0``: the matrix part of the DVC stage names."""
        return f"{self.dataset}-{self.method}-{self.seed}"

    def stage(self, kind: str = "pretrain") -> str:
        """``pretrain@bmnist_rho95-cecl-0`` / ``probe@...``: the DVC stage and the MLflow run name."""
        return f"{kind}@{self.slug}"

    @property
    def model_dir(self) -> Path:
        return MODELS_DIR / self.dataset / self.method / f"seed_{self.seed}"

    @property
    def probe_dir(self) -> Path:
        return PROBE_DIR / self.dataset / self.method / f"seed_{self.seed}"

    @property
    def checkpoint(self) -> Path:
        return CHECKPOINT_DIR / "pretrain" / self.slug / "last.pt"

    def tags(self) -> dict[str, str]:
        return {"dataset": self.dataset, "method": self.method, "seed": str(self.seed)}


@dataclass(frozen=True, order=True)
class TransferKey:
    """A frozen encoder pretrained on ``source`` (same method and seed), linear probe on ``target``."""

    source: str
    target: str
    method: str
    seed: int

    @property
    def pretrained(self) -> RunKey:
        return RunKey(self.source, self.method, self.seed)

    @property
    def slug(self) -> str:
        return f"{self.source}-{self.target}-{self.method}-{self.seed}"

    def stage(self, kind: str = "transfer") -> str:
        return f"{kind}@{self.slug}"

    @property
    def out_dir(self) -> Path:
        return TRANSFER_DIR / f"{self.source}__{self.target}" / self.method / f"seed_{self.seed}"

    def tags(self) -> dict[str, str]:
        return {
            "dataset": self.target,
            "source_dataset": self.source,
            "method": self.method,
            "seed": str(self.seed),
        }
