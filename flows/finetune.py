"""Prefect flow `finetune`: a registered model trained on a few cases of a new dataset, registered as
a new version of the same model with its lineage.

Each source is a dataset already in the store (by name) or a dataset folder / manifest, ingested
first. The new version carries tags `lineage.parent` (the model it came from), `lineage.parent_run_id`,
`finetune.datasets` and `finetune.cases`, and gets the alias `finetuned` (not `candidate`: a model
adapted to one dataset should not replace the general one unless evaluation says so).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import flow

from flows.ingest import ingest_flow
from mvg.cards import Training, record_training, recorded_training, run_wall_s, store_datasets
from mvg.finetune import FinetuneSettings, few_shot_cases, finetune
from mvg.loading import load_model_and_config
from mvg.mlflow_ui import run_page
from mvg.names import CHAMPION, FINETUNED, REGISTERED_MODEL, alias_uri, version_uri
from mvg.progress import TrainingProgress
from mvg.pyfunc import log_mvg_model
from mvg.reports import write_loss_curves
from mvg.tracking import RunLogger, client, git_commit, open_run, resolve_version, store_versions, tracking_uri
from storage.home import chosen_store
from storage.ingest import DEFAULT_SIZE
from storage.store import ZarrStore


def stored_datasets(sources: list[str], store: str, spec: str | None, size: int) -> list[str]:
    """The store's dataset name of each source, ingesting the sources that are folders or manifests."""
    names = []
    for source in sources:
        if source in ZarrStore(store).datasets():
            names.append(source)
        elif Path(source).exists():
            state = ingest_flow(source, spec=spec, store=store, size=size, return_state=True)
            summary = state.result(raise_on_failure=False)
            if not isinstance(summary, dict):
                raise ValueError(f"{source}: could not be ingested: {summary}")
            names.append(summary["dataset"])
        else:
            known = ", ".join(ZarrStore(store).datasets()) or "none"
            raise ValueError(f"{source}: neither a dataset in the store {store} (found: {known}) nor a dataset folder or manifest")
    return names


@flow(name="finetune", log_prints=True)
def finetune_flow(
    sources: list[str],
    model_uri: str = alias_uri(CHAMPION),
    store: str | None = None,
    cases: int = 1,
    steps: int = 200,
    lr: float = 1e-4,
    warmup_steps: int = 10,
    seed: int = 0,
    spec: str | None = None,
    size: int = DEFAULT_SIZE,
    run_name: str | None = None,
    alias: str = FINETUNED,
) -> dict:
    settings = FinetuneSettings(cases, steps, lr, warmup_steps, seed)
    store = chosen_store(store)
    model, trained_config = load_model_and_config(model_uri)  # a bad URI fails before anything is ingested
    datasets = stored_datasets(sources, store, spec, size)
    chosen = few_shot_cases(store, datasets, settings.cases)
    config = settings.config(trained_config)

    uri_version = resolve_version(tracking_uri(), model_uri)  # None for a folder or checkpoint
    name = uri_version[0] if uri_version else REGISTERED_MODEL
    parent = version_uri(uri_version[1], uri_version[0]) if uri_version else model_uri
    run = open_run(
        run_name or f"finetune-{'-'.join(datasets)}-{time.strftime('%Y%m%d-%H%M%S')}",
        params={**config.to_dict(), "finetune": {"parent": parent, "cases": json.dumps(chosen)}},
    )
    logger = RunLogger(run.tracking_uri, run.run_id)
    lineage = {"lineage.parent": parent, "finetune.datasets": ",".join(datasets), "finetune.cases": json.dumps(chosen)}
    if uri_version:
        lineage["lineage.parent_run_id"] = client(run.tracking_uri).get_model_version(*uri_version).run_id or ""
    logger.log_setup({}, {"git_commit": git_commit(), **store_versions([store]), **lineage})
    print(f"fine-tuning {parent} on {json.dumps(chosen)} for {steps} steps: {run_page(run.tracking_uri, run.run_id)}")
    progress = TrainingProgress(config.optim.steps, config.optim.batch_size * config.optim.accumulate, label="finetune")

    def on_log(row: dict) -> None:
        progress(row)
        logger.log_metrics(row, row["step"])

    try:
        result = finetune(model, trained_config, store, chosen, settings, on_log=on_log)
    except BaseException:
        client(run.tracking_uri).set_terminated(run.run_id, status="FAILED")
        raise
    version = log_mvg_model(result.model, config, run.run_id, registered_name=name, alias=alias, uri=run.tracking_uri, step=result.step)
    registry = client(run.tracking_uri)
    for key, value in lineage.items():
        registry.set_model_version_tag(name, version.version, key, value)
    inherited = recorded_training(run.tracking_uri, *uri_version) if uri_version else None
    record_training(run.tracking_uri, name, version.version, Training(
        inherited.preset if inherited else "unknown",
        {"optim": {"steps": config.optim.steps, "lr": config.optim.lr, "warmup_steps": config.optim.warmup_steps}},
        {d: v for d, v in store_datasets(store_versions([store])).items() if d in datasets},
        result.step, result.step * config.optim.batch_size * config.optim.accumulate,
        run_wall_s(run.tracking_uri, run.run_id), run.run_id, parent,
    ))
    registry.set_terminated(run.run_id, status="FINISHED")
    print(f"registered {name} version {version.version} as @{alias}, fine-tuned from {parent}")
    curves = write_loss_curves(run.tracking_uri, run.run_id, run.name)
    return {
        "loss_curves": str(curves) if curves else None,
        "run_id": run.run_id,
        "model_uri": version.model_uri,
        "version": version.version,
        "alias": alias,
        "parent": parent,
        "cases": chosen,
        "final_loss": result.history[-1]["loss"] if result.history else None,
    }

