"""Training on Ray Train (V2): the per-worker loop and its launch.

Every worker builds the episode sampler for its rank and runs `TrainingState.optimizer_step` on its
model wrapped in DDP (NCCL on GPUs, gloo on CPUs). Every `checkpoint_every` steps all ranks report
to Ray; rank 0 attaches the checkpoint (weights, optimizer, schedule, step, and every rank's random
streams), Ray keeps the newest `keep_checkpoints`. A failed worker group is restarted up to
`max_failures` times and resumes from the newest checkpoint, so at most `checkpoint_every` steps
are lost; launching again with the same run name and storage path resumes the same way.

Only rank 0 talks to MLflow, into the run the flow opened: parameters and tags once, metrics every
`log_every` steps, a montage of sample predictions every `sample_every` steps. It also writes a
progress line to stderr every `log_every` steps (mvg.progress), which Ray forwards to the driver.

Ray starts locally unless `RAY_ADDRESS` names a cluster (then the store and the Ray storage path
must be on a file system every node sees).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer, get_device, prepare_model

from mvg.config import TASKS, MVGConfig
from mvg.episodes import Episode, EpisodeSampler, collate
from mvg.model import MVG
from mvg.montage import prediction_montage
from mvg.progress import TrainingProgress
from mvg.step import HybridObjective
from mvg.tracking import RunLogger
from mvg.train import Meter, TrainingState, due, load_checkpoint, save_checkpoint
from storage.location import Location

# ray.train.report waits for the controller's poll (2 s by default), which would stall every
# report of a fast model; a tenth of a second costs the controller next to nothing.
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1", "MLFLOW_DISABLE_TELEMETRY": "true"}


@dataclass(frozen=True)
class Scaling:
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: int = 1

    def ray(self) -> ScalingConfig:
        resources = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            resources["GPU"] = self.gpus_per_worker
        return ScalingConfig(num_workers=self.workers, use_gpu=self.gpus_per_worker > 0, resources_per_worker=resources)


@dataclass(frozen=True)
class TrainJob:
    config: MVGConfig
    stores: tuple[str, ...]
    run_name: str
    storage_path: str  # Ray's results root, a path or a URL: checkpoints live at <storage_path>/<run_name>/
    scaling: Scaling = Scaling()
    stop_at: int | None = None  # stop early at this step; the schedule still spans config.optim.steps
    checkpoint_every: int = 50
    log_every: int = 10
    sample_every: int = 100  # sample-prediction montage to MLflow; 0: never
    keep_checkpoints: int = 2
    max_failures: int = 3
    seed: int = 0
    tracking_uri: str | None = None  # with mlflow_run_id: rank 0 logs into that run
    mlflow_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)  # store versions, git commit
    cases: dict[str, tuple[str, ...]] | None = None  # dataset -> the only training cases (and datasets); None: all

    @property
    def steps(self) -> int:
        return min(self.stop_at or self.config.optim.steps, self.config.optim.steps)

    def loop_config(self) -> dict:
        """What every worker receives (plain values: it crosses process and machine borders)."""
        values = asdict(self)
        values["config"] = self.config.to_dict()
        values["steps"] = self.steps
        values["stores"] = [Location.of(store).url for store in self.stores]  # absolute: workers run in Ray's trial dir
        return values


@dataclass
class FitOutcome:
    step: int
    metrics: dict
    checkpoint: Path  # directory holding checkpoint.pt, on this machine
    stored: str = ""  # where Ray keeps that checkpoint: a path, or a URL in an object store


def runtime_env_vars() -> dict[str, str]:
    """RAY_ENV less what this process's environment already sets. Inside a Ray job the driver's
    environment holds the job's env_vars, and Ray refuses to merge a runtime env that sets any of
    them again, even to the same value; the job's own then reach every worker anyway."""
    return {key: value for key, value in RAY_ENV.items() if key not in os.environ}


def fit(job: TrainJob, on_step: Callable[[int, int], None] | None = None) -> FitOutcome:
    """Run (or resume) the job on Ray Train and wait for it. `on_step(step, rank)` runs on every
    worker after every step (progress hooks, fault injection in tests)."""
    ensure_ray()
    loop_config = job.loop_config()
    if on_step is not None:
        loop_config["on_step"] = on_step
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=job.scaling.ray(),
        run_config=RunConfig(
            name=job.run_name,
            storage_path=str(job.storage_path),
            checkpoint_config=CheckpointConfig(num_to_keep=job.keep_checkpoints),
            failure_config=FailureConfig(max_failures=job.max_failures),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {job.run_name!r} finished without a checkpoint")
    checkpoint = local_copy(result.checkpoint, job)
    step = load_checkpoint(checkpoint)["step"]
    return FitOutcome(step, dict(result.metrics or {}), checkpoint, stored_location(result.checkpoint, job))


def ensure_ray() -> None:
    """Connect to the cluster RAY_ADDRESS names, else start a local Ray (its dashboard stays: Ray
    Train's placement-group cleaner polls the state API it serves); nothing if already connected."""
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, runtime_env={"env_vars": runtime_env_vars()})
        sigterm_without_native_alarm()


def sigterm_without_native_alarm() -> None:
    """Leave SIGTERM to Ray's Python handler alone (a bare sys.exit, which Ray's blocking calls
    and Prefect's crash report unwind from). `ray.init` also puts Ray's native failure handler in
    front of it, and that one arms a 3 s alarm that aborts the process: a stopped command whose
    unwinding took longer (a busy machine) died mid-way, before the stop of what it had started,
    and Ray's agents lived on. Setting the Python handler again takes the native one off SIGTERM;
    crashes (SIGSEGV, SIGABRT) keep it."""
    if threading.current_thread() is threading.main_thread():  # Python's rule for handlers
        handler = signal.getsignal(signal.SIGTERM)
        if handler is not None:  # None: set outside Python, nothing to set again
            signal.signal(signal.SIGTERM, handler)


def stored_location(checkpoint: ray.train.Checkpoint, job: TrainJob) -> str:
    """The checkpoint in Ray's storage as another machine would name it: the path itself on a
    local or shared file system, else the object store's URL (Ray's path has no scheme)."""
    storage = Location.of(job.storage_path)
    if storage.is_local:
        return checkpoint.path
    return f"{storage.url.split('://', 1)[0]}://{checkpoint.path.lstrip('/')}"


def local_copy(checkpoint: ray.train.Checkpoint, job: TrainJob) -> Path:
    """The final checkpoint as a local folder: itself on a local (or shared) file system, else
    downloaded from the object store, for registration to read."""
    if Location.of(job.storage_path).is_local:
        return Path(checkpoint.path)
    return Path(checkpoint.to_directory(tempfile.mkdtemp(prefix=f"mvg-{job.run_name}-")))


# Ray Train logs every report and every checkpoint at INFO in each worker, and Ray forwards it all to
# the driver: two long lines per checkpoint that bury the run's own progress (our rank 0 logs the step,
# loss and rate, and MLflow has the checkpoints). One logger is named by its module's file path.
RAY_TRAIN_CHATTER = ("ray.train.v2._internal.execution.context", "ray.train.v2._internal.execution.storage")


def quiet_ray_train_chatter() -> None:
    for module in RAY_TRAIN_CHATTER:
        spec = importlib.util.find_spec(module)
        for name in (module, spec.origin if spec else None):
            if name:
                logging.getLogger(name).setLevel(logging.WARNING)


def train_loop_per_worker(loop: dict) -> None:
    quiet_ray_train_chatter()
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(loop["scaling"]["cpus_per_worker"])))  # Ray sets OMP_NUM_THREADS=1
    config = MVGConfig.from_dict(loop["config"])
    device = get_device()
    cases = {name: list(chosen) for name, chosen in loop["cases"].items()} if loop.get("cases") else None
    state = TrainingState.create(config, loop["stores"], device, loop["seed"], rank, world_size, cases=cases)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state.restore(load_checkpoint(directory))
    # an all-segmentation micro-batch never touches the MIM mask token: DDP must not wait for it
    trainable = prepare_model(HybridObjective(state.model, config.objective), parallel_strategy_kwargs={"find_unused_parameters": True})
    logger = _rank_zero_logger(loop, rank, config, world_size)
    samples = _sample_episodes(loop["stores"], config, loop["seed"]) if logger and loop["sample_every"] else []
    steps, meter, on_step = loop["steps"], Meter(), loop.get("on_step")
    episodes_per_step = config.optim.batch_size * config.optim.accumulate * world_size
    progress = TrainingProgress(steps, episodes_per_step, label=loop["run_name"]) if rank == 0 else None
    while state.step < steps:
        meter.add(state.optimizer_step(trainable))
        if on_step is not None:
            on_step(state.step, rank)
        row = meter.report(state, world_size) if due(state.step, loop["log_every"], steps) else None
        if progress and row:
            progress(row)
        if logger and row:
            logger.log_metrics(row, state.step)
        if logger and samples and due(state.step, loop["sample_every"], steps):
            logger.log_image(_sample_montage(state.model, samples, device), "samples", state.step)
        if due(state.step, loop["checkpoint_every"], steps):
            _report(state, row or {"step": state.step}, rank)


def _report(state: TrainingState, metrics: dict, rank: int) -> None:
    """All ranks report; rank 0 attaches the checkpoint with every rank's random streams."""
    rank_states = [None] * dist.get_world_size() if dist.is_initialized() else None
    if rank_states is not None:
        dist.all_gather_object(rank_states, state.rank_state())
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            # the one checkpoint writer (aside, then renamed): Ray only ever copies a whole file into
            # its storage, and a failed save reports nothing, so Ray's newest checkpoint stays the last good one
            save_checkpoint(Path(directory), state.checkpoint(rank_states))
            checkpoint = Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint)


def _rank_zero_logger(loop: dict, rank: int, config: MVGConfig, world_size: int) -> RunLogger | None:
    if rank != 0 or not loop.get("mlflow_run_id"):
        return None
    logger = RunLogger(loop["tracking_uri"], loop["mlflow_run_id"])
    params = {
        **config.to_dict(),
        "scaling": loop["scaling"],
        "train": {key: loop[key] for key in ("checkpoint_every", "seed", "max_failures")},
        "global_batch": config.optim.batch_size * config.optim.accumulate * world_size,
    }
    logger.log_setup(params, {"ray.run_name": loop["run_name"], **loop["tags"]})
    return logger


def _sample_episodes(stores, config: MVGConfig, seed: int, per_task: int = 1) -> list[Episode]:
    """A fixed set of episodes (one per task present), held-out cases where there are any."""
    for split in ("test", "train"):
        try:
            sampler = EpisodeSampler(stores, config.data, config.objective, split=split, seed=seed + 7)
        except ValueError:
            continue
        chosen: dict[str, list[Episode]] = {}
        for _ in range(50 * len(TASKS)):
            episode = sampler.sample()
            chosen.setdefault(episode.task, [])
            if len(chosen[episode.task]) < per_task:
                chosen[episode.task].append(episode)
        return [e for task in TASKS for e in chosen.get(task, [])]
    return []


def _sample_montage(model: MVG, episodes: list[Episode], device: torch.device) -> np.ndarray:
    batch = collate(episodes)
    was_training = model.training
    model.eval()
    predictions = torch.cat(  # one task at a time: a model may paint segmentation and images differently
        [
            model.predict(
                batch["query_image"][i : i + 1].to(device), batch["prompt_images"][i : i + 1].to(device),
                batch["prompt_targets"][i : i + 1].to(device), episode.task,
            )
            for i, episode in enumerate(episodes)
        ]
    ).float().cpu()
    model.train(was_training)
    rows = [
        (e.prompt_images[0], e.prompt_targets[0], e.query_image, predictions[i, 0].numpy(), e.query_target)
        for i, e in enumerate(episodes)
    ]
    return prediction_montage(rows)
