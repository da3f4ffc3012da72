"""Few-shot adaptation (paper 4.4: one instance of MSD-Spleen, one of MSD-Lung): continue training a
trained model on a few cases of a new dataset, at a small learning rate, for a few hundred steps.

It is the training loop of `mvg.train` started from the trained weights and restricted to the chosen
cases; the optimizer and schedule start fresh (a short warm-up, then cosine to zero).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mvg.config import MVGConfig
from mvg.model import MVG
from mvg.train import TrainResult, train
from storage.store import ZarrStore


@dataclass(frozen=True)
class FinetuneSettings:
    cases: int = 1  # training cases per dataset (paper: one)
    steps: int = 200
    lr: float = 1e-4  # a tenth of tiny-cpu's: adapt, do not forget
    warmup_steps: int = 10
    seed: int = 0

    def __post_init__(self):
        for name in ("cases", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"fine-tuning needs {name} >= 1, not {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"fine-tuning needs a learning rate > 0, not {self.lr}")

    def config(self, trained: MVGConfig) -> MVGConfig:
        """The trained model's config with this fine-tuning's optimisation settings."""
        return trained.with_overrides(optim={"steps": self.steps, "lr": self.lr, "warmup_steps": min(self.warmup_steps, self.steps)})


def few_shot_cases(store: str | Path, datasets: Sequence[str], count: int) -> dict[str, list[str]]:
    """dataset -> its first `count` training cases (sorted by name, so the choice is reproducible
    and recorded); a dataset with fewer training cases gives all it has."""
    chosen = {}
    for name in datasets:
        cases = sorted(ZarrStore(store).dataset(name).cases("train"))
        if not cases:
            raise ValueError(f"dataset {name} in {store} has no training cases to fine-tune on")
        chosen[name] = cases[:count]
    return chosen


def finetune(
    model: MVG,
    config: MVGConfig,
    store: str | Path,
    cases: Mapping[str, Sequence[str]],
    settings: FinetuneSettings,
    on_log: Callable[[dict], None] | None = None,
    device: str | torch.device = "cpu",
    log_every: int = 10,
) -> TrainResult:
    """`model` (trained with `config`) trained on for `settings.steps` steps on `cases` of `store`."""
    return train(
        settings.config(config),
        [store],
        log_every=log_every,
        on_log=on_log,
        device=device,
        seed=settings.seed,
        initial_weights=model.state_dict(),
        cases=cases,
    )
