"""The sweep's search space: which methods are swept, their grids, trial labels and overrides.

One ``tune.grid_search`` per swept axis of a method; an axis a method's grid does not list is absent
from the trial config, so the trial trains with the method's option from params.yaml. Also here: the
``CECL_SWEEP_CRASH`` test hook (:class:`CrashSpec`), which makes chosen grid points crash, to exercise
retries and error reporting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ray import tune

from cecl.config import Params

CRASH_ENV = "CECL_SWEEP_CRASH"
# The name Tune optimises: the per-epoch monitor's value on the validation split, i.e. the dataset
# evaluator's primary metric (BiasedMNIST: unbiased accuracy; Fashion-MNIST: accuracy).
OBJECTIVE = "val_accuracy"
AXES = ("temperature", "weight")
METHOD_ORDER = ("cecl", "supcon", "simclr")


def sweep_methods(params: Params) -> list[str]:
    """The methods with a grid in params.sweep.grids: CECL first, then the baselines."""
    return sorted(params.sweep.grids, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99)


def search_space(params: Params, method: str) -> dict[str, Any]:
    """One grid_search per swept axis of ``method``; unswept axes are absent (the method's default)."""
    axes = params.sweep.grids[method]
    space: dict[str, Any] = {"method": method}
    for axis in AXES:
        if axis in axes:
            space[axis] = tune.grid_search(sorted(set(axes[axis])))
    return space


def grid_size(params: Params, method: str) -> int:
    return math.prod(len(set(values)) for values in params.sweep.grids[method].values())


def overrides_of(config: dict[str, Any]) -> dict[str, float]:
    """The method-option overrides of a trial config (what ``run_setup`` re-validates)."""
    return {axis: float(config[axis]) for axis in AXES if axis in config}


def trial_label(config: dict[str, Any]) -> str:
    """``cecl tau=0.1 w=0.5`` / ``supcon tau=0.1``: the trial's name in MLflow and logs."""
    label = config["method"]
    if "temperature" in config:
        label += f" tau={float(config['temperature']):g}"
    if "weight" in config:
        label += f" w={float(config['weight']):g}"
    return label


def config_key(config: dict[str, Any]) -> tuple[str, float | None, float | None]:
    """A hashable identity of a grid point (Ray's trial ids change when a sweep is restored)."""
    temperature, weight = config.get("temperature"), config.get("weight")
    return (
        config["method"],
        None if temperature is None else float(temperature),
        None if weight is None else float(weight),
    )


# ---------------------------------------------------------------- the test hook


@dataclass(frozen=True)
class CrashSpec:
    """Test hook: crash trials of ``method`` at ``temperature`` (and ``weight``, when given).

    ``always=False``: crash once, right after reporting the first epoch of a fresh start, so Ray's
    retry resumes from that epoch's checkpoint and succeeds. ``always=True``: crash on every attempt
    before reporting anything, so the trial ends with status ERROR.
    """

    method: str
    temperature: float
    weight: float | None = None
    always: bool = False

    def matches(self, config: dict[str, Any]) -> bool:
        if config["method"] != self.method or not math.isclose(
            float(config.get("temperature", math.nan)), self.temperature
        ):
            return False
        return self.weight is None or math.isclose(float(config.get("weight", -1.0)), self.weight)


def parse_crash_specs(text: str | None) -> tuple[CrashSpec, ...]:
    """``"cecl:0.1:0.5,simclr:0.5:always"`` -> specs (``method:tau[:w][:always]``, comma-separated).

    Read by the driver from the ``CECL_SWEEP_CRASH`` environment variable and shipped to the trials.
    """
    specs = []
    for item in (text or "").split(","):
        parts = [p.strip() for p in item.strip().split(":") if p.strip()]
        if not parts:
            continue
        always = parts[-1] == "always"
        if always:
            parts.pop()
        if len(parts) not in (2, 3):
            raise ValueError(f"{CRASH_ENV}: expected method:tau[:w][:always], got {item!r}")
        weight = float(parts[2]) if len(parts) == 3 else None
        specs.append(CrashSpec(parts[0], float(parts[1]), weight, always))
    return tuple(specs)
