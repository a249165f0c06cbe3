"""One sweep trial's outcome: a row of sweep/results.csv.

Its own module so that the runner (which makes outcomes) and the sinks (which record them) both import
it and not each other (they were an import cycle).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TrialOutcome:
    """One row of sweep/results.csv (temperature and weight: the values the trial trained with)."""

    method: str
    temperature: float | None
    weight: float | None
    best_val_accuracy: float | None  # best over epochs of the validation objective (OBJECTIVE)
    best_epoch: int | None
    epochs_run: int
    stopped_early: bool
    status: str  # TERMINATED | ERROR
    retries: int
    trial_id: str  # Ray's, random: tagged on the MLflow run, never written to a DVC-tracked file
    mlflow_run_id: str = ""  # likewise (results.csv and best.json stay byte-identical between equal runs)
    # The validation objective after the last epoch the trial ran: the value the heat map and the selection
    # compare, among the trials that ran the sweep's whole budget (``epochs_run == sweep.epochs``).
    final_val_accuracy: float | None = None

    def row(self) -> dict[str, Any]:
        """What results.csv and best.json record: everything but the per-execution ids."""
        return {k: v for k, v in asdict(self).items() if k not in ("trial_id", "mlflow_run_id")}

    def at_budget(self, epochs: int) -> bool:
        """Finished, with a value, after all ``epochs``: comparable with every other such trial."""
        return (
            self.status == "TERMINATED" and self.final_val_accuracy is not None and self.epochs_run == epochs
        )
