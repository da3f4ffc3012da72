"""Training runs swept on Ray Tune: one trial per run, each the project's Ray Train loop.

Every trial is a small driver (`run_trial`) that launches `mvg.distributed.fit` for its TrainJob, as
Ray's Train-inside-Tune guide lays it out: the Train workers hold the CPUs and GPUs, the driver
holds only a token of memory (Tune refuses a trial that asks for nothing, and a CPU of its own would
halve a two-core laptop). Tune starts as many trials at once as the cluster has room for whole
worker groups (`concurrency`): one after another on a laptop, side by side on several GPUs. A
finished trial's driver process takes the next trial (Tune's `reuse_actors`), so a sequential sweep
does not start and import a new one per trial (two minutes each on a busy two-core machine).

Failures, at two levels: Ray Train restarts a failed worker group from its newest checkpoint
(`TrainJob.max_failures`); a trial that fails all the same (or whose driver dies) is retried by
Tune's FailureConfig (`retries`), and since its Train run keeps its name, it goes on from that run's
newest checkpoint. A trial that fails every attempt is reported, with its error and attempts, and
the other trials carry on (no fail-fast).
"""

from __future__ import annotations

import contextlib
import functools
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune

from mvg.config import MVGConfig
from mvg.distributed import Scaling, TrainJob, ensure_ray, fit
from storage.location import Location

DRIVER_RESOURCES = {"memory": 1}  # one byte: a trial's driver must ask for something, not a CPU
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class TrialResult:
    name: str
    step: int | None  # the step it trained to; None when it failed
    checkpoint: str | None  # where Ray keeps its final checkpoint (a path or a URL)
    error: str | None  # its last failure, one line (None when it finished)
    failures: int  # failed attempts: Tune retried each one but the last of a failed trial
    wall_s: float = 0.0  # seconds its last attempt ran (Tune's time_total_s): a registered model's training time

    @property
    def finished(self) -> bool:
        return self.error is None and self.checkpoint is not None


def concurrency(scaling: Scaling, trials: int, resources: Mapping[str, float] | None = None) -> int:
    """How many trials fit the cluster at once: whole worker groups of every resource they use
    (at least one, at most `trials`). `resources`: the cluster's (default: Ray's own count)."""
    resources = ray.cluster_resources() if resources is None else resources
    needs = {"CPU": scaling.workers * scaling.cpus_per_worker}
    if scaling.gpus_per_worker:
        needs["GPU"] = scaling.workers * scaling.gpus_per_worker
    fits = min(int(resources.get(name, 0) // need) for name, need in needs.items())
    return max(1, min(fits, trials))


def run_trial(config: dict, jobs: Mapping[str, TrainJob], on_step: Callable[[str, int, int], None] | None) -> None:
    """A Tune trial: train its job on Ray Train, report the final step and checkpoint to Tune."""
    name = config["trial"]
    outcome = fit(jobs[name], on_step=functools.partial(on_step, name) if on_step else None)
    tune.report({"step": outcome.step, "checkpoint": outcome.stored})


class TrialLog(tune.Callback):
    """Says what happens to each trial as it happens (Tune's own tables are off), and counts the
    failed attempts of each."""

    def __init__(self):
        self.failures: dict[str, int] = {}
        self.errors: dict[str, str] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        print(f"trial {trial.config['trial']}: started")

    def on_trial_complete(self, iteration, trials, trial, **info):
        step = (trial.last_result or {}).get("step")
        print(f"trial {trial.config['trial']}: finished at step {step}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        name = self._failed(trial)
        print(f"trial {name}: attempt {trial.num_failures} failed ({self.errors[name]}); Tune retries it")

    def on_trial_error(self, iteration, trials, trial, **info):
        name = self._failed(trial)
        print(f"trial {name}: failed after {trial.num_failures} attempt(s): {self.errors[name]}")

    def _failed(self, trial) -> str:
        name = trial.config["trial"]
        self.failures[name] = trial.num_failures
        # Tune appends every failure to the trial's local error file at once (its copy in the
        # storage path, which `get_pickled_error` reads, is synced later)
        error = Path(trial.error_file).read_text() if trial.error_file and Path(trial.error_file).exists() else ""
        self.errors[name] = error_line(error)
        return name


def sweep(
    jobs: Mapping[str, TrainJob],
    name: str,
    storage_path: str,
    retries: int = 1,
    on_step: Callable[[str, int, int], None] | None = None,
    concurrent: int | None = None,
) -> dict[str, TrialResult]:
    """Train every job (trial name -> job) as a Tune trial of the experiment `name` (under
    `storage_path`); trial name -> its result, failed trials included. `on_step(trial, step,
    rank)` runs in every Train worker after every step (progress hooks, fault injection in tests)."""
    if not jobs:
        return {}
    ensure_ray()
    scalings = {job.scaling for job in jobs.values()}
    if len(scalings) != 1:
        raise ValueError("the trials of one sweep share their scaling")
    log = TrialLog()
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(run_trial, jobs=dict(jobs), on_step=on_step), DRIVER_RESOURCES),
        param_space={"trial": tune.grid_search(list(jobs))},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent or concurrency(scalings.pop(), len(jobs)), reuse_actors=True),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=tune.FailureConfig(max_failures=retries),
            callbacks=[log],
            verbose=0,
        ),
    )
    results = {}
    for result in tuner.fit():
        trial = result.config["trial"]
        metrics = result.metrics or {}
        error = log.errors.get(trial, error_line(result.error)) if result.error else None
        results[trial] = TrialResult(
            trial, metrics.get("step"), metrics.get("checkpoint"), error, log.failures.get(trial, 0), metrics.get("time_total_s", 0.0),
        )
    return {trial: results[trial] for trial in jobs}


def error_line(error: BaseException | str | None) -> str:
    """The line of a (remote) error that says what went wrong: its last one, the innermost
    exception's `Type: message` (Ray's wrappers put the worker's traceback before it)."""
    lines = [line.strip() for line in ANSI.sub("", str(error or "")).splitlines() if line.strip()]
    if lines:
        return lines[-1]
    return type(error).__name__ if isinstance(error, BaseException) else "unknown error"


@contextlib.contextmanager
def local_checkpoint(stored: str) -> Iterator[Path]:
    """The checkpoint folder at `stored` (`TrialResult.checkpoint`) on this machine for the block:
    itself on a local or shared file system, else a download from the object store."""
    location = Location.of(stored)
    if location.is_local:
        yield Path(location.path)
        return
    with tempfile.TemporaryDirectory(prefix="mvg-checkpoint-") as scratch:
        location.fs.get(location.path.rstrip("/") + "/", scratch, recursive=True)
        yield Path(scratch)


def steps_per_second(
    config: MVGConfig,
    stores: Sequence[str],
    scaling: Scaling,
    cases: Mapping[str, Sequence[str]] | None = None,
    steps: int = 40,
    window: int = 10,
) -> float:
    """Training speed of `config`, measured as a Ray task holding one Train worker's resources (so
    on the kind of machine the trials train on): the plain loop over `steps`, at the pace of its
    fastest `window` of steps past the first (the first pays for start-up, and the others may
    share the machine with Ray's own start-up). DDP keeps every worker at about one worker's pace."""
    ensure_ray()
    measure = ray.remote(num_cpus=scaling.cpus_per_worker, num_gpus=scaling.gpus_per_worker)(_measure)
    options = (scaling.cpus_per_worker, bool(scaling.gpus_per_worker), cases, steps, window)
    return ray.get(measure.remote(config.to_dict(), list(stores), *options))


def _measure(config: dict, stores: list[str], threads: int, gpu: bool, cases, steps: int, window: int) -> float:
    import torch

    from mvg.train import train

    torch.set_num_threads(max(1, threads))  # Ray sets OMP_NUM_THREADS=1
    measured = MVGConfig.from_dict(config).with_overrides(optim={"steps": steps})
    result = train(measured, stores, log_every=window, device="cuda" if gpu else "cpu", cases=cases)
    optim = measured.optim
    return max(row["episodes_per_s"] for row in result.history[1:]) / (optim.batch_size * optim.accumulate)
