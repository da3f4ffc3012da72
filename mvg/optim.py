"""Optimiser and learning-rate schedule of the paper (4.1): AdamW, weight decay 0.05, peak lr 1e-3,
linear warm-up then cosine decay; bf16 autocast on CUDA."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import nn

from mvg.config import OptimConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: biases, norms and the learned embeddings / mask token are left alone,
    as in MAE and timm's recipes (decaying them drags positions and roles towards zero)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 or name.endswith(("_embed", "mask_token")) else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the peak learning rate at `step`: linear from 0 over the warm-up, then a
    cosine down to 0 at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / max(1, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, optim: OptimConfig) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.AdamW(parameter_groups(model, optim.weight_decay), lr=optim.lr, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, optim.warmup_steps, optim.steps))
    return optimizer, schedule


def autocast(device: torch.device, optim: OptimConfig):
    """bf16 autocast on CUDA when the config asks for it; full precision elsewhere."""
    if device.type == "cuda" and optim.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
