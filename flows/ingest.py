"""Prefect flow `ingest`: a dataset folder (or manifest) -> published cases in the Zarr store.

Thin orchestration over `storage.ingest`: every case is a Prefect task (visible in the UI, retried
on unexpected errors such as a killed worker) whose work runs on a Dask cluster, a LocalCluster by
default or an existing scheduler by address. The flow publishes a table artifact of every case and
ends Failed, with the same summary, when any case failed.
"""

from __future__ import annotations

import re

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.states import Completed, Failed
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm.auto import tqdm

from storage.home import chosen_store
from storage.ingest import DEFAULT_SIZE, CaseResult, CatalogWriter, IngestOptions, IngestReport, dask_client, ingest_case
from storage.layouts import CaseSource, plan_dataset
from storage.specs import DatasetSpec


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def ingest_case_task(
    case: CaseSource, spec: DatasetSpec, directory: str, declared: dict | None, options: IngestOptions
) -> CaseResult:
    from distributed import get_client

    # The thread only waits: the CPU work and the case's memory live on a Dask worker.
    return get_client().submit(ingest_case, case, spec, directory, declared, options, pure=False).result()


def artifact_key(name: str) -> str:
    """Prefect artifact keys allow only lower-case letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")


def report_markdown(report: IngestReport) -> str:
    counts = report.counts()
    return (
        f"Ingest of **{report.dataset}** into `{report.directory}`: "
        f"{counts['ingested']} ingested, {counts['skipped']} unchanged, {counts['failed']} failed."
    )


@flow(name="ingest", task_runner=ThreadPoolTaskRunner(max_workers=32), log_prints=True)
def ingest_flow(
    source: str,
    spec: str | None = None,
    store: str | None = None,
    workers: int = 2,
    dask_address: str | None = None,
    size: int = DEFAULT_SIZE,
    name: str | None = None,
    input_channel: int | None = None,
    target_channel: int | None = None,
    progress: bool = False,
    root: str | None = None,
):
    """Ingest `source` (nnU-Net v2 / MSD folder or a manifest) with built-in spec `spec` if given.

    `name` stores it under another dataset name; `input_channel` / `target_channel` pick the
    channels of multi-channel cases (BraTS t1n, t1c, t2w, t2f: 0 -> 2 is t1n -> t2w). `root` is the
    folder a manifest's paths start from and must stay inside, in place of the manifest's own.
    """
    plan = plan_dataset(source, spec, root)
    overrides = {"name": name, "input_channel": input_channel, "target_channel": target_channel}
    plan.spec = plan.spec.with_overrides(**{k: v for k, v in overrides.items() if v is not None})
    writer = CatalogWriter(chosen_store(store), plan)
    options = IngestOptions(size=size)
    print(f"{plan.spec.name}: {len(plan.cases)} case(s) planned, {len(plan.problems)} unplannable, {workers} worker(s)")
    with dask_client(workers, dask_address), tqdm(
        total=len(plan.cases), unit="case", desc=f"ingest {plan.spec.name}", disable=not progress
    ) as bar:
        futures = {
            ingest_case_task.with_options(task_run_name=f"ingest-{case.case}").submit(
                case, plan.spec, str(writer.directory), plan.declared_labels, options
            ): case.case
            for case in plan.cases
        }
        for future in as_completed(list(futures)):
            try:
                result = future.result()
            except Exception as error:  # noqa: BLE001 - retries exhausted: the case fails, the rest go on
                result = CaseResult(futures[future], "failed", f"{type(error).__name__}: {error}")
            writer.add(result)
            bar.update()
            bar.set_postfix(failed=writer.failures)
    report = writer.finish()
    for failure in report.failed:
        print(f"FAILED {failure.case}: {failure.reason}")
    create_table_artifact(
        key=artifact_key(f"ingest-{plan.spec.name}"), table=report.rows(), description=report_markdown(report)
    )
    summary = {"dataset": report.dataset, "directory": report.directory, **report.counts(), "rows": report.rows()}
    if report.failed:
        return Failed(message=f"{len(report.failed)} of {len(report.results)} case(s) failed", data=summary)
    return Completed(message=report_markdown(report), data=summary)
