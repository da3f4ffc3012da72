"""The training loop of one worker, in plain PyTorch: what Ray Train's `train_loop_per_worker` wraps.

`train` draws episode batches from the stores, runs the hybrid objective, clips gradients, steps
AdamW on the warm-up + cosine schedule (bf16 autocast on CUDA) and checkpoints every N steps.
A checkpoint holds everything that decides the future of the run -- model, optimizer, schedule,
step, the episode sampler's RNG and the masking RNG -- so a resumed run continues exactly where the
interrupted one stopped (the resume test checks bit-for-bit equality with an uninterrupted run).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mvg.config import MVGConfig
from mvg.episodes import EpisodeSampler, collate
from mvg.model import MVG
from mvg.optim import autocast, make_optimizer
from mvg.step import episode_losses, loss_by_task

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainResult:
    model: MVG
    step: int
    history: list[dict] = field(default_factory=list)  # one row per logged step


def save_checkpoint(directory: Path, state: dict) -> Path:
    """Write aside, then rename: a run killed mid-save leaves the previous checkpoint intact."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE
    partial = directory / f".{CHECKPOINT_FILE}.{os.getpid()}"
    torch.save(state, partial)
    os.replace(partial, path)
    return path


def load_checkpoint(directory: Path | None) -> dict | None:
    path = None if directory is None else Path(directory) / CHECKPOINT_FILE
    if path is None or not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


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
    rank: int = 0,
    world_size: int = 1,
) -> TrainResult:
    """Train (or resume training) up to `steps` (default: the config's) on episodes from `stores`."""
    device = torch.device(device)
    steps = steps or config.optim.steps
    torch.manual_seed(seed)
    model = MVG(config).to(device).train()
    optimizer, schedule = make_optimizer(model, config.optim)
    sampler = EpisodeSampler(stores, config.data, config.objective, seed=seed, rank=rank, world_size=world_size)
    masking = torch.Generator().manual_seed(seed * 1000 + rank)
    step = 0
    state = load_checkpoint(Path(checkpoint_dir) if checkpoint_dir else None)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        sampler.load_state_dict(state["sampler"])
        masking.set_state(state["masking"])
        torch.set_rng_state(state["torch_rng"])  # dropout and stochastic depth draw from it
        step = state["step"]
    history: list[dict] = []
    window_started, window_episodes = time.perf_counter(), 0
    while step < steps:
        batch = {k: v.to(device) for k, v in collate([sampler.sample() for _ in range(config.optim.batch_size)]).items()}
        with autocast(device, config.optim):
            losses = episode_losses(model, batch, config.objective, masking)
        loss = losses.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
        schedule.step()
        step += 1
        window_episodes += len(losses)
        if step % log_every == 0 or step == steps:
            elapsed = time.perf_counter() - window_started
            row = {
                "step": step,
                "loss": float(loss.detach()),
                "lr": schedule.get_last_lr()[0],
                "episodes_per_s": window_episodes / max(elapsed, 1e-9),
                **{f"loss_{task}": value for task, value in loss_by_task(losses.detach(), batch["task_index"]).items()},
            }
            history.append(row)
            if on_log:
                on_log(row)
            window_started, window_episodes = time.perf_counter(), 0
        if checkpoint_dir and (step % checkpoint_every == 0 or step == steps):
            save_checkpoint(
                Path(checkpoint_dir),
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "sampler": sampler.state_dict(),
                    "masking": masking.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "step": step,
                    "config": config.to_dict(),
                },
            )
    return TrainResult(model.eval(), step, history)
