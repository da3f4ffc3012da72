"""An ablation planned: a study's variants as the training trials they need, at one budget, on a
checked store.

Every variant of a study trains the same number of steps (the equal budget), with the same warm-up
and schedule. A trial is one training run: a variant, a seed and, for an isolated variant, one
dataset. Its name (`<variant>-s<seed>` or `<variant>-<dataset>-s<seed>`) names its Ray Train run
and its MLflow run. `plan` checks everything a user can get wrong before anything runs.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mvg.config import MVGConfig
from mvg.config import preset as preset_config
from mvg.episodes import EpisodeSampler
from mvg.overrides import OverrideError, checked_config
from mvg.studies import Study, study_named
from storage.home import chosen_store
from storage.store import ZarrStore

BEST = "best"  # register: the variant with the highest mean margin over the baselines
# the defaults of a study's request (the `ablation` flow's too: one home for them)
DEFAULT_PRESET = "tiny-cpu"
DEFAULT_SEEDS = 1
BUDGET_KEYS = ("steps", "warmup_steps")  # optim settings the study's budget sets for every variant


def with_steps(config: MVGConfig, steps: int) -> MVGConfig:
    """`config` trained for `steps`: the warm-up the preset's, at least 2 % of the steps (as the
    benchmarks stretch it), and never more than a fifth of them (a short ablation still decays)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    warmup = min(max(config.optim.warmup_steps, steps // 50), max(1, steps // 5))
    return config.with_overrides(optim={"steps": steps, "warmup_steps": warmup})


def steps_for(minutes: float, steps_per_second: float) -> int:
    """The steps that fit `minutes` at the measured speed (at least 10)."""
    if minutes <= 0:
        raise ValueError(f"the budget must be positive, got {minutes} minutes")
    return max(10, int(minutes * 60 * steps_per_second))


# ---------------------------------------------------------------------------- trials


@dataclass(frozen=True)
class Trial:
    name: str  # <variant>-s<seed> or <variant>-<dataset>-s<seed>: its Ray run and MLflow run
    variant: str
    seed: int
    config: MVGConfig
    cases: dict[str, tuple[str, ...]] | None  # dataset -> its training cases; None: every case of every dataset
    scored_on: tuple[str, ...]  # the datasets its model is evaluated on


def plan_trials(
    study: Study,
    base: MVGConfig,
    training_cases: Mapping[str, Sequence[str]],
    evaluated: Sequence[str],
    seeds: int,
    restricted: bool,
) -> list[Trial]:
    """Every training run of the study. `base`: the preset with the common overrides and the
    budget; `training_cases`: dataset -> its training cases (the datasets trained on);
    `evaluated`: the datasets scored (those with test cases); `restricted`: the datasets were
    chosen (not the whole store), so even a full-data trial lists its cases. Bad variant
    overrides are refused here, before anything runs."""
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    trials = []
    for variant in study.variants:
        config = checked_config(base, variant.overrides, f"variant {variant.name!r}: ")
        for seed in range(seeds):
            chosen = {name: subset(cases, variant.data_fraction, name, seed) for name, cases in training_cases.items() if cases}
            if variant.isolated:
                for dataset in evaluated:
                    trials.append(Trial(f"{variant.name}-{dataset}-s{seed}", variant.name, seed, config, {dataset: chosen[dataset]}, (dataset,)))
            else:
                everything = variant.data_fraction == 1.0 and not restricted
                trials.append(Trial(f"{variant.name}-s{seed}", variant.name, seed, config, None if everything else chosen, tuple(evaluated)))
    return trials


def subset(cases: Sequence[str], fraction: float, dataset: str, seed: int) -> tuple[str, ...]:
    """`fraction` of `cases` (at least one), drawn per dataset and seed. Smaller fractions are the
    first cases of the same draw, so for one seed 1 % lies within 10 %, 10 % within 50 %, ..."""
    ordered = sorted(cases)
    keep = max(1, round(fraction * len(ordered)))
    if keep >= len(ordered):
        return tuple(ordered)
    order = np.random.default_rng([seed, zlib.crc32(dataset.encode())]).permutation(len(ordered))
    return tuple(sorted(ordered[i] for i in order[:keep]))


def describe_cases(trial: Trial) -> dict[str, int]:
    """dataset -> how many training cases the trial uses (its MLflow params)."""
    return {name: len(cases) for name, cases in (trial.cases or {}).items()}


# ---------------------------------------------------------------------------- the checked study


@dataclass(frozen=True)
class Plan:
    study: Study
    base: MVGConfig  # the preset with the common overrides
    store: str
    training_cases: dict[str, tuple[str, ...]]  # dataset -> its training cases
    evaluated: tuple[str, ...]  # datasets with test cases among those trained on
    restricted: bool  # datasets were chosen, not the whole store
    seeds: int

    def trials(self, steps: int | None = None) -> list[Trial]:
        base = with_steps(self.base, steps) if steps else self.base
        return plan_trials(self.study, base, self.training_cases, self.evaluated, self.seeds, self.restricted)


def plan(
    study: str,
    preset: str = DEFAULT_PRESET,
    store: str | None = None,
    variants_file: str | None = None,
    overrides: dict | None = None,
    datasets: list[str] | None = None,
    seeds: int = DEFAULT_SEEDS,
    steps: int | None = None,
    budget_minutes: float | None = None,
    register: str | None = None,
) -> Plan:
    """The checked study: everything is refused here, naming what is wrong, before anything runs."""
    if steps is not None and budget_minutes is not None:
        raise ValueError("give the budget as steps or as minutes, not both")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if budget_minutes is not None and budget_minutes <= 0:
        raise ValueError(f"the budget must be positive, got {budget_minutes} minutes")
    chosen = study_named(study, variants_file)
    base = checked_config(preset_config(preset), overrides or {}, "--set ")
    for variant in chosen.variants:
        fixed = sorted(set(variant.overrides.get("optim", {})) & set(BUDGET_KEYS))
        if fixed:
            raise OverrideError(f"variant {variant.name!r}: optim.{fixed[0]}: the study's budget sets the steps of every variant (--steps, --budget-minutes)")
    names = [variant.name for variant in chosen.variants]
    if len(set(names)) != len(names):
        raise ValueError(f"study {chosen.name}: variant names repeat: {names}")
    if register not in (None, BEST, *names):
        raise ValueError(f"--register {register}: no such variant (variants: {', '.join(names)}; or {BEST})")
    if register not in (None, BEST) and next(v for v in chosen.variants if v.name == register).isolated:
        raise ValueError(f"--register {register}: an isolated variant is one model per dataset, none of which is the study's model")
    root = chosen_store(store)
    available = ZarrStore(root).datasets()
    if not available:
        raise ValueError(f"the store {root} holds no datasets: ingest some first (mvg ingest SOURCE, or make demo)")
    missing = sorted(set(datasets or ()) - set(available))
    if missing:
        raise ValueError(f"no stored dataset {', '.join(missing)} in {root} (found: {', '.join(available)})")
    training = {name: tuple(ZarrStore(root).dataset(name).cases("train")) for name in (datasets or available)}
    evaluated = tuple(name for name in training if ZarrStore(root).dataset(name).cases("test"))
    if not evaluated:
        raise ValueError(f"none of the datasets {', '.join(training)} has test cases to compare the variants on")
    checked = Plan(chosen, base, root, training, evaluated, bool(datasets), seeds)
    for trial in checked.trials(steps):  # each trial's episodes can be drawn (crop, prompts, cases ...)
        try:
            EpisodeSampler((root,), trial.config.data, trial.config.objective, datasets=list(trial.cases) if trial.cases else None, cases=trial.cases)
        except (KeyError, ValueError) as error:
            raise ValueError(f"trial {trial.name}: {error.args[0] if error.args else error}") from None
    return checked
