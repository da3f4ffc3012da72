"""The training loop of one worker, in plain PyTorch: the part Ray Train's workers run (mvg.distributed).

`TrainingState` holds everything that decides the future of a run -- model, optimizer, schedule,
step, and per rank the episode sampler's RNG, the masking RNG and torch's RNG -- so a resumed run
continues exactly where the interrupted one stopped (the resume test checks bit-for-bit equality
with an uninterrupted run). `optimizer_step` is one step of the hybrid objective: micro-batches
with gradient accumulation, bf16 autocast on CUDA, gradient clipping, AdamW on warm-up + cosine.

`train` is the single-process loop (tests, benchmarks' baseline, debugging); the distributed loop
in `mvg.distributed` is the same steps with DDP, Ray checkpoints and MLflow logging around them.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mvg.config import TASKS, MVGConfig
from mvg.episodes import EpisodeSampler, collate
from mvg.model import MVG
from mvg.optim import autocast, make_optimizer
from mvg.step import HybridObjective

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainingState:
    config: MVGConfig
    model: MVG
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    sampler: EpisodeSampler
    masking: torch.Generator  # draws the MIM block masks
    device: torch.device
    seed: int
    rank: int = 0
    step: int = 0

    @classmethod
    def create(
        cls,
        config: MVGConfig,
        stores: Sequence[str | Path],
        device: str | torch.device = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        initial_weights: dict[str, torch.Tensor] | None = None,
        cases: Mapping[str, Sequence[str]] | None = None,
    ) -> TrainingState:
        """`initial_weights`: a trained model's state dict to go on from (fine-tuning) instead of a
        fresh initialisation; `cases`: dataset -> the only cases to train on (and then only
        those datasets)."""
        device = torch.device(device)
        sampler = EpisodeSampler(
            stores, config.data, config.objective, seed=seed, rank=rank, world_size=world_size,
            datasets=list(cases) if cases else None, cases=cases,
        )
        config = with_colour_table(config, sampler)
        torch.manual_seed(seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
        model = MVG(config)
        if initial_weights is not None:
            model.load_state_dict(initial_weights)
        model = model.to(device).train()
        torch.manual_seed(seed * 1000 + rank + 1)  # then each rank its own dropout / drop-path draws
        optimizer, schedule = make_optimizer(model, config.optim)
        masking = torch.Generator().manual_seed(seed * 1000 + rank)
        return cls(config, model, optimizer, schedule, sampler, masking, device, seed, rank)

    # ------------------------------------------------------------------ checkpoints

    def shared_state(self) -> dict:
        """What all ranks hold in common (DDP keeps weights and optimizer identical)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "step": self.step,
            "config": self.config.to_dict(),
        }

    def rank_state(self) -> dict:
        """What differs per rank: the random streams."""
        return {"sampler": self.sampler.state_dict(), "masking": self.masking.get_state(), "torch_rng": torch.get_rng_state()}

    def checkpoint(self, rank_states: list[dict] | None = None) -> dict:
        return {**self.shared_state(), "ranks": rank_states if rank_states is not None else [self.rank_state()]}

    def restore(self, checkpoint: dict) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.schedule.load_state_dict(checkpoint["schedule"])
        self.step = checkpoint["step"]
        ranks = checkpoint["ranks"]
        if self.rank < len(ranks):
            state = ranks[self.rank]
            self.sampler.load_state_dict(state["sampler"])
            self.masking.set_state(state["masking"])
            torch.set_rng_state(state["torch_rng"])  # dropout and stochastic depth draw from it
        else:
            # more workers than when the checkpoint was written: this rank's streams never
            # existed, so it starts fresh ones, distinct from its first life's by the step
            self.sampler.rng = np.random.default_rng([self.seed, self.rank, 0, self.step])
            self.masking.manual_seed(self.seed * 1000 + self.rank + self.step * 7919)

    # ------------------------------------------------------------------ one optimizer step

    def optimizer_step(self, trainable: nn.Module) -> StepOutcome:
        """One optimizer step over `config.optim.accumulate` micro-batches. `trainable` is the
        `HybridObjective` of this state's model, possibly wrapped in DDP: gradients are synchronised
        only on the last micro-batch."""
        optim = self.config.optim
        losses, task_index = [], []
        self.optimizer.zero_grad(set_to_none=True)
        for micro in range(optim.accumulate):
            episodes = [self.sampler.sample() for _ in range(optim.batch_size)]
            batch = {k: v.to(self.device, non_blocking=True) for k, v in collate(episodes).items()}
            with _sync_gradients(trainable, micro == optim.accumulate - 1):
                with autocast(self.device, optim):
                    episode_losses = trainable(batch, self.masking)
                (episode_losses.mean() / optim.accumulate).backward()
            losses.append(episode_losses.detach().float())
            task_index.append(batch["task_index"])
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), optim.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        self.step += 1
        return StepOutcome(self.step, torch.cat(losses).cpu(), torch.cat(task_index).cpu())


def _sync_gradients(trainable: nn.Module, sync: bool):
    """DDP's `no_sync` on micro-batches before the last: accumulate locally, all-reduce once."""
    if sync or not hasattr(trainable, "no_sync"):
        return contextlib.nullcontext()
    return trainable.no_sync()


@dataclass
class StepOutcome:
    step: int
    losses: torch.Tensor  # (episodes,) loss of each episode of the step
    task_index: torch.Tensor  # (episodes,) index into mvg.config.TASKS


@dataclass
class Meter:
    """Losses and throughput over the steps since the last report."""

    losses: list[torch.Tensor] = field(default_factory=list)
    tasks: list[torch.Tensor] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def add(self, outcome: StepOutcome) -> None:
        self.losses.append(outcome.losses)
        self.tasks.append(outcome.task_index)

    def report(self, state: TrainingState, world_size: int = 1) -> dict:
        """The row logged for this window, then a fresh window. episodes/s counts all workers,
        assuming they run at the speed of this one (DDP keeps them in lock step)."""
        losses, tasks = torch.cat(self.losses), torch.cat(self.tasks)
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        row = {
            "step": state.step,
            "loss": float(losses.mean()),
            "lr": state.schedule.get_last_lr()[0],
            "episodes_per_s": len(losses) * world_size / elapsed,
            **{f"loss_{task}": float(losses[tasks == i].mean()) for i, task in enumerate(TASKS) if bool((tasks == i).any())},
        }
        if state.device.type == "cuda":
            row["gpu_memory_gb"] = torch.cuda.max_memory_allocated(state.device) / 2**30
        self.losses, self.tasks, self.started = [], [], time.perf_counter()
        return row


def due(step: int, every: int, last: int) -> bool:
    return step % every == 0 or step == last


# ---------------------------------------------------------------------------- checkpoint files


def save_checkpoint(directory: Path, state: dict) -> Path:
    """Write aside in the same folder, then rename: a run killed or failing mid-save (a full disk)
    leaves the previous checkpoint intact, and no partial file behind to fill the disk further.
    Flushed to disk before the rename, so a machine that goes down just after it cannot leave the
    new name on a file the disk never received."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE
    partial = directory / f".{CHECKPOINT_FILE}.{os.getpid()}"
    try:
        with open(partial, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(directory: str | Path | None) -> dict | None:
    """The checkpoint in `directory`, or None. Loaded with `weights_only`: tensors, numbers,
    strings and containers only, so a checkpoint from elsewhere cannot run code."""
    path = None if directory is None else Path(directory) / CHECKPOINT_FILE
    if path is None or not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def with_colour_table(config: MVGConfig, sampler: EpisodeSampler) -> MVGConfig:
    """`config` with the pre-defined colour table its sampler colours with, so that the model and
    its checkpoints carry it to evaluation; unchanged for the other colourings. A table given in
    the config (fine-tuning goes on with its model's) is kept: its levels are what the weights know."""
    if config.objective.colouring != "predefined" or config.objective.colour_table or sampler.table is None:
        return config
    return config.with_overrides(objective={"colour_table": sampler.table.datasets})


def load_trained(directory: str | Path, overrides: dict | None = None) -> tuple[MVG, MVGConfig, int]:
    """The model (eval mode, CPU), config and step of a training checkpoint directory. `overrides`
    (`{"model": {"slot_inference": "vote"}}`) change how the trained weights are used; one that
    changes their shapes is refused by the weights' loading."""
    state = load_checkpoint(directory)
    if state is None:
        raise FileNotFoundError(f"no {CHECKPOINT_FILE} in {directory}")
    config = MVGConfig.from_dict(state["config"]).with_overrides(**(overrides or {}))
    model = MVG(config)
    model.load_state_dict(state["model"])
    return model.eval(), config, state["step"]


# ---------------------------------------------------------------------------- single process


@dataclass
class TrainResult:
    model: MVG
    step: int
    history: list[dict] = field(default_factory=list)  # one row per logged step


def train(
    config: MVGConfig,
    stores: Sequence[str | Path],
    steps: int | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 100,
    log_every: int = 10,
    on_log: Callable[[dict], None] | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    initial_weights: dict[str, torch.Tensor] | None = None,
    cases: Mapping[str, Sequence[str]] | None = None,
) -> TrainResult:
    """Train (or resume training from `checkpoint_dir`) up to `steps` (default: the config's) in
    this process, on episodes from `stores`; from `initial_weights` on `cases` only when given
    (see TrainingState.create)."""
    steps = steps or config.optim.steps
    state = TrainingState.create(config, stores, device, seed, initial_weights=initial_weights, cases=cases)
    checkpoint = load_checkpoint(checkpoint_dir)
    if checkpoint is not None:
        state.restore(checkpoint)
    trainable = HybridObjective(state.model, config.objective)
    meter, history = Meter(), []
    while state.step < steps:
        meter.add(state.optimizer_step(trainable))
        if due(state.step, log_every, steps):
            history.append(meter.report(state))
            if on_log:
                on_log(history[-1])
        if checkpoint_dir and due(state.step, checkpoint_every, steps):
            save_checkpoint(Path(checkpoint_dir), state.checkpoint())
    return TrainResult(state.model.eval(), state.step, history)
