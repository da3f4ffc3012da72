"""Prefect flow `ablation`: a study's variants trained at an equal budget as Ray Tune trials, each
evaluated by the evaluation flow's protocol beside its baselines, and compared in the paper's layout.

    study -> checked plan (variants x seeds [x datasets]) -> budget in steps (calibrated when in minutes)
      -> MLflow: a parent run per study, a child run per variant, a grandchild per trial (its training)
      -> Ray Tune: one trial per training run, each the project's Ray Train loop (mvg.sweep)
      -> every finished trial's model scored on the test split, prompts from the training split
      -> table (variants x datasets, mean ± std over seeds) as markdown + CSV, a bar chart PNG,
         the long-form scores; MLflow artifacts of the parent run and Prefect artifacts

Everything a user can get wrong (study, variants file, overrides and their types, datasets, budget,
the variant to register) is checked by `plan` before any run, trial or server starts. A trial that
fails every attempt Tune gives it is listed with its error (`failed` in the summary, `trials.csv`)
and its variant is compared on the seeds that finished. Nothing is registered unless
`register_variant` names a variant (or "best": the highest mean margin over the baselines); its
model then becomes a version of `mvg` with the alias `candidate`, as `mvg train` registers one, with
its model card (mvg.cards) and the ablation's scores of it recorded as `mvg evaluate` records them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.evaluate import PAPER_NAMES, evaluate_dataset_task, record_on_version
from mvg.ablation import BEST, DEFAULT_PRESET, DEFAULT_SEEDS, Plan, Trial, describe_cases, plan, steps_for
from mvg.cards import Training, record_training, store_datasets
from mvg.comparison import Comparison, Score, bar_chart, compare
from mvg.distributed import Scaling, TrainJob
from mvg.evaluation import BASELINE_BY_TASK, MODEL, DatasetEvaluation, to_csv, to_markdown
from mvg.names import ABLATION_EXPERIMENT
from mvg.promotion import PRIMARY_METRIC
from mvg.pyfunc import log_mvg_model
from mvg.studies import Study
from mvg.sweep import TrialResult, local_checkpoint, steps_per_second, sweep
from mvg.tracking import client, ensure_experiment, flatten, git_commit, store_versions, tracking_uri
from mvg.train import load_trained
from storage.home import ray_storage


@task(cache_policy=NO_CACHE)
def calibrate_task(checked: Plan, scaling: Scaling, minutes: float) -> int:
    """The steps every variant trains: what the preset (with the common overrides) trains in
    `minutes` on one worker's resources."""
    cases = checked.training_cases if checked.restricted else None
    rate = steps_per_second(checked.base, [checked.store], scaling, cases)
    steps = steps_for(minutes, rate)
    print(f"calibrated at {rate:.2f} steps/s on one worker: every variant trains {steps} steps ({minutes:g} min each)")
    return steps


@task(cache_policy=NO_CACHE)
def sweep_task(jobs: dict[str, TrainJob], name: str, storage: str, retries: int, on_step, concurrent: int | None) -> dict[str, TrialResult]:
    # no Prefect retries: Tune retries a failed trial, Ray Train a failed worker group
    return sweep(jobs, name, storage, retries=retries, on_step=on_step, concurrent=concurrent)


@flow(name="ablation", log_prints=True)
def ablation_flow(
    study: str = "objective",
    preset: str = DEFAULT_PRESET,
    store: str | None = None,
    variants_file: str | None = None,
    overrides: dict[str, dict] | None = None,
    steps: int | None = None,
    budget_minutes: float | None = None,
    datasets: list[str] | None = None,
    seeds: int = DEFAULT_SEEDS,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: int | None = None,
    concurrent: int | None = None,
    retries: int = 1,
    max_failures: int = 3,
    checkpoint_every: int = 50,
    log_every: int = 10,
    draws: int = 1,
    shots: int = 1,
    eval_seed: int = 0,
    max_cases: int | None = None,
    register_variant: str | None = None,
    run_name: str | None = None,
    storage: str | None = None,
    on_step: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Train every variant of `study` (a built-in study, or `custom` from `variants_file`) on top
    of `preset` + `overrides` for `steps` (default: the preset's), or for the steps `budget_minutes`
    buys one variant; `seeds` trainings each; compare them on `datasets` (default: every stored one
    with test cases). `cpus_per_worker`: default this machine's cores / `workers` (on a laptop one
    trial at a time has every core). `retries`: Tune's retries of a failed trial; `max_failures`:
    Ray Train's restarts of a failed worker group within one attempt. `on_step(trial, step, rank)`: runs in
    every Train worker after every step (fault injection in tests)."""
    checked = plan(
        study, preset=preset, store=store, variants_file=variants_file, overrides=overrides, datasets=datasets,
        seeds=seeds, steps=steps, budget_minutes=budget_minutes, register=register_variant,
    )
    scaling = Scaling(workers, gpus_per_worker, cpus_per_worker or max(1, (os.cpu_count() or 1) // workers))
    if budget_minutes is not None:
        steps = calibrate_task(checked, scaling, budget_minutes)
    steps = steps or checked.base.optim.steps
    trials = checked.trials(steps)
    name = run_name or f"ablation-{checked.study.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"{checked.study.title}: {len(checked.study.variants)} variant(s) x {seeds} seed(s) = {len(trials)} trial(s) of {steps} steps")

    runs = TrackedStudy.open(name, checked, trials, steps, {"draws": draws, "shots": shots, "eval_seed": eval_seed, "max_cases": max_cases})
    jobs = {
        trial.name: TrainJob(
            trial.config, (checked.store,), f"{name}-{trial.name}", storage or ray_storage(), scaling,
            checkpoint_every=min(checkpoint_every, steps), log_every=min(log_every, steps), sample_every=steps,
            max_failures=max_failures, seed=trial.seed, tracking_uri=runs.uri, mlflow_run_id=runs.trial_runs[trial.name],
            tags={"git_commit": runs.commit, "ablation.study": checked.study.name, **runs.versions}, cases=trial.cases,
        )
        for trial in trials
    }
    try:
        results = sweep_task(jobs, name, storage or ray_storage(), retries, on_step, concurrent)
        evaluations, failed = evaluate_trials(trials, results, checked.store, draws, shots, eval_seed, max_cases)
    except BaseException:
        runs.close("FAILED")
        raise
    scores = [score(trial, evaluation) for trial in trials for evaluation in evaluations.get(trial.name, [])]
    comparison = compare(scores, [v.name for v in checked.study.variants], seeds)
    rows = comparison.rows()
    runs.log_results(trials, results, evaluations, comparison)
    summary = {
        "study": checked.study.name, "title": checked.study.title, "run_name": name, "run_id": runs.parent, "steps": steps,
        "seeds": seeds, "tracking_uri": runs.uri, "table": rows, "markdown": to_markdown(rows),
        "scores": [s.row() for s in scores], "failed": failed,
        "trials": [trial_row(trial, results[trial.name], runs.trial_runs[trial.name]) for trial in trials],
        "best": comparison.best(),
    }
    summary["artifacts"], chart = runs.log_artifacts(checked.study, summary, comparison)
    summary["artifact_uri"] = client(runs.uri).get_run(runs.parent).info.artifact_uri
    if register_variant:
        single_model = [v.name for v in checked.study.variants if not v.isolated]
        chosen = comparison.best(among=single_model) if register_variant == BEST else register_variant
        facts = CardFacts(checked, overrides or {}, scaling.workers, evaluations, failed)
        summary["registered"] = register_chosen(chosen, trials, results, runs, facts)
    runs.close("FINISHED")
    publish(checked.study, summary, chart)
    return safe_json(summary)


# ---------------------------------------------------------------------------- evaluation


def evaluate_trials(
    trials: list[Trial], results: dict[str, TrialResult], store: str, draws: int, shots: int, seed: int, max_cases: int | None
) -> tuple[dict[str, list[DatasetEvaluation]], list[dict]]:
    """Every finished trial's model on each dataset it is scored on, all at once; what failed
    (trials that did not finish, evaluations that raised) as rows of trial, variant, seed, reason."""
    failed = [
        {"trial": t.name, "variant": t.variant, "seed": t.seed, "stage": "training", "reason": f"{results[t.name].error} ({results[t.name].failures} attempt(s))"}
        for t in trials if not results[t.name].finished
    ]
    evaluations: dict[str, list[DatasetEvaluation]] = {}
    with contextlib.ExitStack() as stack:
        futures = []
        for trial in (t for t in trials if results[t.name].finished):
            folder = stack.enter_context(local_checkpoint(results[trial.name].checkpoint))
            for dataset in trial.scored_on:
                futures.append((trial, evaluate_dataset_task.submit(str(folder), store, dataset, draws, shots, seed, max_cases)))
        for trial, future in futures:
            try:
                evaluations.setdefault(trial.name, []).append(future.result())
            except Exception as error:  # noqa: BLE001 - one unreadable dataset or model leaves the others scored
                failed.append({"trial": trial.name, "variant": trial.variant, "seed": trial.seed, "stage": "evaluation", "reason": str(error)})
    for row in failed:
        print(f"failed: trial {row['trial']} ({row['stage']}): {row['reason']}")
    return evaluations, failed


def score(trial: Trial, evaluation: DatasetEvaluation) -> Score:
    """The trial's primary score on the dataset and its baseline's (the metric promotion reads)."""
    metric = PAPER_NAMES[PRIMARY_METRIC[evaluation.task]]
    baseline = BASELINE_BY_TASK[evaluation.task]
    return Score(
        trial.variant, trial.seed, evaluation.dataset, evaluation.task, metric,
        evaluation.summary[MODEL][metric].mean, evaluation.summary[baseline][metric].mean, baseline,
    )


def trial_row(trial: Trial, result: TrialResult, run_id: str) -> dict:
    return {
        "trial": trial.name, "variant": trial.variant, "seed": trial.seed, "status": "finished" if result.finished else "failed",
        "step": result.step, "failed_attempts": result.failures, "error": result.error or "", "checkpoint": result.checkpoint or "",
        "run_id": run_id, "training_cases": sum(describe_cases(trial).values()) or "all",
    }


# ---------------------------------------------------------------------------- MLflow


def metric_key(*parts: str) -> str:
    """An MLflow metric name (the evaluation flow's spelling: no spaces or parentheses)."""
    return ".".join(parts).replace(" ", "_").replace("(", "").replace(")", "")


@dataclass
class TrackedStudy:
    """The study's MLflow runs: the parent, one child per variant, one grandchild per trial (where
    rank 0 of its Ray Train run logs the training)."""

    uri: str
    parent: str
    variant_runs: dict[str, str]
    trial_runs: dict[str, str]
    commit: str
    versions: dict[str, str]

    @classmethod
    def open(cls, name: str, checked: Plan, trials: list[Trial], steps: int, evaluation: dict) -> TrackedStudy:
        uri = tracking_uri()
        mlflow = client(uri)
        experiment = ensure_experiment(mlflow, ABLATION_EXPERIMENT)
        commit, versions = git_commit(), store_versions([checked.store])
        parent = mlflow.create_run(experiment, run_name=name, tags={"ablation.study": checked.study.name, "git_commit": commit, **versions}).info.run_id
        params = {
            "study": checked.study.name, "title": checked.study.title, "preset": checked.base.name, "steps": steps,
            "seeds": checked.seeds, "store": checked.store, "datasets": ",".join(checked.evaluated),
            "variants": ",".join(v.name for v in checked.study.variants), **evaluation,
        }
        log_params(mlflow, parent, params)
        variant_runs = {}
        for variant in checked.study.variants:
            run = mlflow.create_run(experiment, run_name=variant.name, tags={"mlflow.parentRunId": parent, "ablation.variant": variant.name})
            variant_runs[variant.name] = run.info.run_id
            log_params(mlflow, run.info.run_id, variant.describe() or {"overrides": "none (the preset)"})
        trial_runs = {}
        for trial in trials:
            tags = {"mlflow.parentRunId": variant_runs[trial.variant], "ablation.variant": trial.variant, "ablation.seed": str(trial.seed)}
            run = mlflow.create_run(experiment, run_name=trial.name, tags=tags)
            trial_runs[trial.name] = run.info.run_id
            log_params(mlflow, run.info.run_id, {f"training_cases.{d}": n for d, n in describe_cases(trial).items()})
        return cls(uri, parent, variant_runs, trial_runs, commit, versions)

    def log_results(self, trials: list[Trial], results: dict[str, TrialResult], evaluations: dict, comparison: Comparison) -> None:
        """Trials: every evaluation metric, their status; variants: their scores over seeds;
        the parent: the baselines' scores."""
        mlflow = client(self.uri)
        for trial in trials:
            run = self.trial_runs[trial.name]
            for evaluation in evaluations.get(trial.name, []):
                for row in evaluation.summary_rows():
                    if not math.isnan(row["mean"]):
                        mlflow.log_metric(run, metric_key("eval", row["dataset"], row["method"], row["metric"]), row["mean"])
            mlflow.set_terminated(run, "FINISHED" if results[trial.name].finished else "FAILED")
        for variant, run in self.variant_runs.items():
            for dataset, metric, _ in comparison.columns:
                cell = comparison.cells.get((variant, dataset))
                if cell is not None and not math.isnan(cell.mean):
                    mlflow.log_metric(run, metric_key(dataset, metric), cell.mean)
                    if not math.isnan(cell.std):
                        mlflow.log_metric(run, metric_key(dataset, metric, "std"), cell.std)
            finished = any(results[t.name].finished for t in trials if t.variant == variant)
            mlflow.set_terminated(run, "FINISHED" if finished else "FAILED")
        for dataset, metric, method in comparison.columns:
            if not math.isnan(comparison.baselines[dataset].mean):
                mlflow.log_metric(self.parent, metric_key(dataset, method, metric), comparison.baselines[dataset].mean)

    def log_artifacts(self, study: Study, summary: dict, comparison: Comparison) -> tuple[list[str], bytes]:
        """The table (markdown, CSV), its bar chart, the long-form scores and the trials into the
        parent run; the artifacts' names and the chart's PNG."""
        mlflow = client(self.uri)
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            stem = f"ablation-{study.name}"
            (folder / f"{stem}.md").write_text(f"# {study.title}\n\n{summary['markdown']}")
            to_csv(summary["table"], folder / f"{stem}.csv")
            bar_chart(comparison, study.title, folder / f"{stem}.png")
            if summary["scores"]:
                to_csv(summary["scores"], folder / "scores.csv")
            to_csv(summary["trials"], folder / "trials.csv")
            if summary["failed"]:
                to_csv(summary["failed"], folder / "failed.csv")
            mlflow.log_artifacts(self.parent, str(folder))
            return sorted(path.name for path in folder.iterdir()), (folder / f"{stem}.png").read_bytes()

    def close(self, status: str) -> None:
        mlflow = client(self.uri)
        for run in (*self.trial_runs.values(), *self.variant_runs.values(), self.parent):
            if mlflow.get_run(run).info.status == "RUNNING":
                mlflow.set_terminated(run, status)


def log_params(mlflow, run_id: str, params: dict) -> None:
    for key, value in flatten(params).items():
        mlflow.log_param(run_id, key, value[:6000])  # MLflow's limit on a param's value


@dataclass(frozen=True)
class CardFacts:
    """What the registered version's model card tells beyond the trial itself: the checked study,
    its common overrides (--set), the workers of each trial and every trial's evaluation."""

    checked: Plan
    overrides: Mapping[str, object]
    workers: int
    evaluations: Mapping[str, list[DatasetEvaluation]]
    failed: list[dict]  # rows of evaluate_trials: trial, stage, reason

    def training(self, trial: Trial, result: TrialResult, runs: TrackedStudy) -> Training:
        """The trial's training as `mvg train` records it: the preset, every override that made the
        trial (common, the variant's, the study's budget), the datasets it trained on."""
        variant = next(v for v in self.checked.study.variants if v.name == trial.variant)
        optim = trial.config.optim
        budget = {"optim.steps": optim.steps, "optim.warmup_steps": optim.warmup_steps}
        trained_on = trial.cases or self.checked.training_cases
        return Training(
            preset=self.checked.base.name,
            overrides={**flatten(self.overrides), **variant.describe(), **budget},
            datasets={d: v for d, v in store_datasets(runs.versions).items() if d in trained_on},
            steps=result.step or 0,
            episodes=(result.step or 0) * optim.batch_size * optim.accumulate * self.workers,
            wall_s=result.wall_s,
            run_id=runs.trial_runs[trial.name],
        )

    def failed_cases(self, trial: Trial) -> int:
        """Test cases the trial's evaluation left unscored. A dataset whose evaluation raised counts
        as one at least: its scores are missing, and promotion must not judge the version on the
        other datasets alone."""
        within = sum(len(evaluation.failed) for evaluation in self.evaluations.get(trial.name, []))
        raised = sum(1 for row in self.failed if row["trial"] == trial.name and row["stage"] == "evaluation")
        return within + raised


def register_chosen(variant: str | None, trials: list[Trial], results: dict[str, TrialResult], runs: TrackedStudy, facts: CardFacts) -> dict:
    """The variant's first finished trial's model, logged into that trial's run and registered as
    `mvg` @candidate (asked for with --register), with its model card: the training facts, then
    the trial's scores beside their baselines where the ablation evaluated it."""
    finished = [t for t in trials if t.variant == variant and results[t.name].finished] if variant else []
    if not finished:
        print(f"nothing registered: {'no variant was scored on every dataset' if variant is None else f'no trial of {variant} finished'}")
        return {}
    trial = finished[0]
    with local_checkpoint(results[trial.name].checkpoint) as folder:
        model, config, step = load_trained(folder)
    # the registered model and its alias: the training flow's, log_mvg_model's defaults
    info = log_mvg_model(model, config, runs.trial_runs[trial.name], uri=runs.uri, step=step)
    record_training(runs.uri, info.name, info.version, facts.training(trial, results[trial.name], runs))
    evaluations = facts.evaluations.get(trial.name, [])
    if evaluations:  # the eval run of these scores is the trial's own run, where log_results put them
        record_on_version(runs.uri, info.name, info.version, evaluations, runs.trial_runs[trial.name], facts.failed_cases(trial))
    aliases = list(client(runs.uri).get_model_version(info.name, info.version).aliases)
    print(f"registered {info.model_uri} ({trial.name}) as {', '.join('@' + a for a in aliases)}")
    return {"variant": variant, "trial": trial.name, "model_uri": info.model_uri, "version": info.version, "aliases": aliases}


# ---------------------------------------------------------------------------- Prefect


def publish(study: Study, summary: dict, chart: bytes) -> None:
    """The table as a Prefect table artifact, the chart as an image artifact (a data URL, so it
    shows wherever the Prefect UI runs), and a markdown summary with both and the failures."""
    key = f"ablation-{study.name}".lower()
    create_table_artifact(key=key, table=summary["table"], description=study.title)
    image = f"data:image/png;base64,{base64.b64encode(chart).decode()}"
    create_image_artifact(image_url=image, key=f"{key}-chart", description=f"{study.title}: bar chart")
    failed = "".join(f"- trial {row['trial']} ({row['stage']}): {row['reason']}\n" for row in summary["failed"])
    markdown = (
        f"# {study.title}\n\n{summary['steps']} steps per trial, {summary['seeds']} seed(s); MLflow run "
        f"`{summary['run_id']}` (experiment `{ABLATION_EXPERIMENT}`, tracking `{summary['tracking_uri']}`).\n\n{summary['markdown']}\n"
        f"![bar chart]({image})\n\n" + (f"## Failed\n\n{failed}" if failed else "")
    )
    create_markdown_artifact(key=f"{key}-summary", markdown=markdown, description=study.title)
    print(f"\n{study.title}\n{summary['markdown']}")


def report(summary: dict) -> str:
    """What `mvg ablate` prints: the table, the failures, where the results are, what was registered."""
    lines = [f"\n{summary['title']} ({summary['steps']} steps per trial, {summary['seeds']} seed(s))", summary["markdown"]]
    for row in summary["failed"]:
        lines.append(f"failed: trial {row['trial']} ({row['stage']}): {row['reason']}")
    lines.append(f"MLflow run {summary['run_name']} ({summary['run_id']}, experiment {ABLATION_EXPERIMENT}, tracking {summary['tracking_uri']})")
    lines.append(f"artifacts: {summary.get('artifact_uri', '-')}: {', '.join(summary.get('artifacts', []))}")
    if summary.get("registered"):
        registered = summary["registered"]
        lines.append(f"registered {registered['model_uri']} ({registered['trial']}) as {', '.join('@' + a for a in registered['aliases'])}")
    return "\n".join(lines)


def safe_json(value: object) -> object:
    """Plain JSON values (NaN as None), for Prefect results and the benchmark's JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): safe_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [safe_json(v) for v in value]
    return value if isinstance(value, (str, int, float, bool)) or value is None else json.dumps(value, default=str)
