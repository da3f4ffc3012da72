"""Prefect flow `train`: a config preset + overrides -> a Ray Train run tracked in MLflow -> the
registered model `mvg` with alias `candidate` (mvg.names).

The flow opens the MLflow run (found again by name, so re-running a run name resumes it), runs the
trainer on Ray (local, or the cluster at RAY_ADDRESS), logs the trained model into the run, registers
it and publishes a markdown artifact with the run link, the final losses and the model version.
A run that already finished and registered its model is not trained or registered twice.
"""

from __future__ import annotations

import time

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from mvg.cards import Training, record_training, run_wall_s, store_datasets
from mvg.config import preset as preset_config
from mvg.distributed import FitOutcome, Scaling, TrainJob, fit
from mvg.episodes import EpisodeSampler
from mvg.mlflow_ui import run_page
from mvg.names import CANDIDATE, REGISTERED_MODEL, alias_uri, version_uri
from mvg.pyfunc import log_mvg_model
from mvg.reports import write_loss_curves
from mvg.tracking import TrackedRun, client, git_commit, open_run, registered_version, store_versions
from mvg.train import load_trained
from storage.home import chosen_store, ray_storage
from storage.store import ZarrStore


@task(cache_policy=NO_CACHE)
def fit_task(job: TrainJob) -> FitOutcome:
    # no Prefect retries: Ray's FailureConfig restarts failed workers from the newest checkpoint
    return fit(job)


@task(cache_policy=NO_CACHE)
def register_task(run: TrackedRun, outcome: FitOutcome, name: str, alias: str, card: Training | None = None) -> dict:
    """Log the checkpoint's model into the run and register it, unless this run already
    registered the model of this very step (a re-run of a finished run); `card`: the training
    facts of the version's model card (mvg.cards)."""
    existing = registered_version(run.tracking_uri, name, run.run_id, outcome.step)
    if existing is not None:
        client(run.tracking_uri).set_registered_model_alias(name, alias, existing)
        return model_summary(name, existing, reused=True)
    model, config, step = load_trained(outcome.checkpoint)
    version = log_mvg_model(model, config, run.run_id, registered_name=name, alias=alias, uri=run.tracking_uri, step=step)
    if card is not None:
        record_training(run.tracking_uri, name, version.version, card)
    return model_summary(name, version.version, reused=False)


def model_summary(name: str, version: str, reused: bool) -> dict:
    return {"model_name": name, "model_version": str(version), "model_uri": version_uri(version, name), "model_reused": reused}


def summary_markdown(run: TrackedRun, outcome: FitOutcome, summary: dict, alias: str) -> str:
    losses = "\n".join(f"| {key} | {value:.4f} |" for key, value in sorted(outcome.metrics.items()) if key.startswith("loss"))
    return (
        f"# Training run `{run.name}`\n\n"
        f"MLflow run `{run.run_id}` (tracking `{run.tracking_uri}`): {run_page(run.tracking_uri, run.run_id)}\n\n"
        f"Trained to step **{outcome.step}**; checkpoint `{outcome.checkpoint}`.\n\n"
        f"Registered model **{summary['model_name']}** version **{summary['model_version']}** as `@{alias}`"
        f"{' (already registered by this run)' if summary['model_reused'] else ''}: `{alias_uri(alias, summary['model_name'])}`\n\n"
        f"| final loss | value |\n| --- | --- |\n{losses}\n"
    )


def loss_curves(run: TrackedRun, run_name: str) -> dict:
    """The run's loss curves written to the reports folder (and the run): their path, for the summary."""
    curves = write_loss_curves(run.tracking_uri, run.run_id, run_name)
    return {} if curves is None else {"loss_curves": str(curves)}


@flow(name="train", log_prints=True)
def train_flow(
    preset: str = "tiny-cpu",
    overrides: dict[str, dict] | None = None,
    store: str | None = None,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: int = 1,
    run_name: str | None = None,
    stop_at: int | None = None,
    checkpoint_every: int = 50,
    log_every: int = 10,
    sample_every: int = 100,
    max_failures: int = 3,
    seed: int = 0,
    alias: str = CANDIDATE,
    storage: str | None = None,
) -> dict:
    """Train `preset` with `overrides` ({"optim": {"steps": 200}, ...}) on every dataset of the
    store; `stop_at` stops early (the same run name later goes on from there). `storage`: Ray
    Train's checkpoints (default `$MVG_RAY_STORAGE`, else `$MVG_HOME/ray`)."""
    config = preset_config(preset).with_overrides(**(overrides or {}))
    stores = (chosen_store(store),)
    # fail here, with the reason, rather than in every Ray worker and each of its restarts
    if not ZarrStore(stores[0]).datasets():
        raise ValueError(f"the store {stores[0]} holds no datasets: ingest some first (mvg ingest SOURCE)")
    EpisodeSampler(stores, config.data, config.objective)
    run_name = run_name or f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = open_run(run_name, params=config.to_dict())
    mlflow = client(run.tracking_uri)
    print(f"MLflow run {run.name} ({'resumed' if run.resumed else 'new'}): {run_page(run.tracking_uri, run.run_id)}")
    summary = {"run_name": run_name, "run_id": run.run_id}
    done = registered_version(run.tracking_uri, REGISTERED_MODEL, run.run_id, config.optim.steps) if run.resumed else None
    if done is not None:  # this run already trained and registered its model: nothing to do
        mlflow.set_terminated(run.run_id, status="FINISHED")
        print(f"run {run_name} already finished: {REGISTERED_MODEL} version {done}")
        metrics = mlflow.get_run(run.run_id).data.metrics
        summary |= loss_curves(run, run_name)
        return summary | {"step": config.optim.steps, "metrics": metrics} | model_summary(REGISTERED_MODEL, done, reused=True)
    job = TrainJob(
        config,
        stores,
        run_name,
        storage or ray_storage(),
        Scaling(workers, gpus_per_worker, cpus_per_worker),
        stop_at=stop_at,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
        sample_every=sample_every,
        max_failures=max_failures,
        seed=seed,
        tracking_uri=run.tracking_uri,
        mlflow_run_id=run.run_id,
        tags={"git_commit": git_commit(), **store_versions(stores)},
    )
    try:
        outcome = fit_task(job)
    except BaseException:
        mlflow.set_terminated(run.run_id, status="FAILED")
        raise
    summary |= {"step": outcome.step, "metrics": outcome.metrics, "checkpoint": str(outcome.checkpoint)}
    summary |= loss_curves(run, run_name)
    if outcome.step < config.optim.steps:  # stopped early on purpose: the run goes on later
        mlflow.set_terminated(run.run_id, status="KILLED")
        print(f"stopped at step {outcome.step} of {config.optim.steps}; run again with run name {run_name} to go on")
        return summary
    card = Training(
        preset, overrides or {}, store_datasets(job.tags), outcome.step,
        outcome.step * config.optim.batch_size * config.optim.accumulate * workers,
        run_wall_s(run.tracking_uri, run.run_id), run.run_id,
    )
    summary |= register_task(run, outcome, REGISTERED_MODEL, alias, card)
    mlflow.set_terminated(run.run_id, status="FINISHED")
    markdown = summary_markdown(run, outcome, summary, alias)
    create_markdown_artifact(key="train-summary", markdown=markdown, description=f"training run {run_name}")
    print(markdown)
    return summary
