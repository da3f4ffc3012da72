"""A training budget in wall-clock minutes turned into steps, for the demo: the steps a preset
trains in that time on this machine, measured by a short calibration run, so the demo ends in its
budget on a slow machine and trains longer on a fast one (the schedule needs its length up front).

A floor (`min_steps`) keeps a slow machine from training a model too short to be worth
evaluating: the budget then runs over, and the caller is told by how much (`Budget.over_budget_s`).

A run launched again under the same name keeps the steps it was first given: MLflow keeps one
value per parameter, and a finished run is reused rather than trained again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from mvg.ablation import steps_for, with_steps
from mvg.config import MVGConfig
from mvg.distributed import Scaling
from mvg.names import TRAINING_EXPERIMENT
from mvg.sweep import steps_per_second
from mvg.tracking import client

# The calibration: 30 steps, paced by the fastest window of 10 past the first (mvg.sweep).
CALIBRATION_STEPS, CALIBRATION_WINDOW = 30, 10
# What the measured pace leaves out, kept out of the budget: starting Ray Train's worker group,
# checkpoints, MLflow logging and sample montages between steps, registering the model. Checked
# on two fresh-clone demos of 4 minutes (2 cores): calibration start to registered model took
# 236 s (628 steps) and 251 s (703 steps), so the training ends within 5 % of its budget.
LAUNCH_S = 20.0
STEP_OVERHEAD = 0.10  # a tenth of the pace: the checkpoints and logs inside the training loop


@dataclass(frozen=True)
class Budget:
    steps: int
    warmup_steps: int
    steps_per_s: float | None  # the calibrated pace; None when the steps came from an earlier launch
    calibration_s: float
    bought: int | None = None  # the steps the minutes bought, where a floor raised them to `steps`

    @property
    def over_budget_s(self) -> float:
        """The seconds the floor adds to the budget at the calibrated pace (0 when it bought enough)."""
        if self.bought is None or self.steps_per_s is None:
            return 0.0
        return (self.steps - self.bought) / (self.steps_per_s * (1 - STEP_OVERHEAD))

    def overrides(self) -> dict[str, dict]:
        return {"optim": {"steps": self.steps, "warmup_steps": self.warmup_steps}}


def steps_within(minutes: float, steps_per_s: float, spent_s: float) -> int:
    """The steps that fit what is left of `minutes` after `spent_s` (the calibration) and the
    launch, at `steps_per_s` less the loop's overhead; at least 10."""
    left_s = minutes * 60 - spent_s - LAUNCH_S
    return steps_for(max(left_s, 1.0) / 60, steps_per_s * (1 - STEP_OVERHEAD))


def earlier_schedule(tracking_uri: str, run_name: str) -> tuple[int, int] | None:
    """(steps, warm-up steps) a training run called `run_name` was started with, or None."""
    mlflow = client(tracking_uri)
    experiment = mlflow.get_experiment_by_name(TRAINING_EXPERIMENT)
    if experiment is None:
        return None
    escaped = run_name.replace("'", "\\'")
    found = mlflow.search_runs([experiment.experiment_id], f"attributes.run_name = '{escaped}'", max_results=1)
    params = found[0].data.params if found else {}
    if "optim.steps" not in params or "optim.warmup_steps" not in params:
        return None
    return int(params["optim.steps"]), int(params["optim.warmup_steps"])


def budget(
    config: MVGConfig,
    stores: Sequence[str],
    scaling: Scaling,
    minutes: float,
    tracking_uri: str,
    run_name: str,
    min_steps: int = 0,
) -> Budget:
    """The steps of `config` that train in `minutes` (the calibration included) with `scaling`, at
    least `min_steps`, or those an earlier launch of `run_name` was given."""
    if minutes <= 0:
        raise ValueError(f"the training budget must be positive, got {minutes} minutes")
    if min_steps < 0:
        raise ValueError(f"the floor of training steps cannot be negative, got {min_steps}")
    earlier = earlier_schedule(tracking_uri, run_name)
    if earlier is not None:
        return Budget(*earlier, steps_per_s=None, calibration_s=0.0)
    started = time.monotonic()
    pace = steps_per_second(config, stores, scaling, steps=CALIBRATION_STEPS, window=CALIBRATION_WINDOW)
    spent = time.monotonic() - started
    bought = steps_within(minutes, pace, spent)
    budgeted = with_steps(config, max(bought, min_steps))
    floored = bought if bought < min_steps else None
    return Budget(budgeted.optim.steps, budgeted.optim.warmup_steps, pace, spent, bought=floored)
