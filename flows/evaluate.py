"""Prefect flow `evaluate`: a registered model (default `models:/mvg@candidate`, mvg.names) against the held-out
cases of the store, beside the copy-the-prompt and identity baselines, in the layout of the paper's
Tables 2 and 3; then the `champion` alias moves to it if it beats its baselines and is at least as
good as the champion (mvg.promotion).

Every dataset is a task; the tables (markdown and CSV), the per-case rows and one montage per dataset
are artifacts of an MLflow evaluation run and files in `$MVG_HOME/reports/evaluate-<model>-<run id>/`,
the model's primary scores and its baselines' on the same cases are tags of its registry version
(`eval.<dataset>.<metric>`, `baseline.<dataset>.<metric>`: what promotion reads), and the tables
are Prefect table artifacts.

A test case whose store shards are damaged is reported as failed (`failed` in the summary,
`failed.csv` in the run, each reason naming dataset, case, role and slice) and the other cases are
scored; a dataset none of whose test cases could be read is left out of the tables. The count is a
version tag too (`eval.failed_cases`), and a version evaluated with failed cases is not promoted.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image
from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from flows.promote import FAILED_CASES_TAG, promote_flow
from mvg.cards import refresh_cards
from mvg.evaluation import BASELINE_BY_TASK, MODEL, DatasetEvaluation, NoCaseScored, evaluate_dataset, tables, to_csv, to_markdown
from mvg.loading import load_model, local_model
from mvg.names import CANDIDATE, EVALUATION_EXPERIMENT, alias_uri, version_uri
from mvg.promotion import PRIMARY_METRIC, PromotionRule
from mvg.reports import reports_folder
from mvg.tracking import (
    client,
    ensure_experiment,
    flatten,
    logged_model_id,
    record_evaluation,
    resolve_version,
    tracking_uri,
)
from storage.home import chosen_store
from storage.store import ZarrStore

PAPER_NAMES = {"miou": "mIoU", "psnr": "PSNR"}  # promotion metric -> the evaluation's column


@task(cache_policy=NO_CACHE)
def evaluate_dataset_task(
    model_folder: str, store: str, dataset: str, draws: int, shots: int, seed: int, max_cases: int | None, bar: int | None = None,
) -> DatasetEvaluation:
    """`bar`: show a progress bar of the dataset's test cases on that line of the terminal (the
    datasets run at once, each on its own line); None: none."""
    model = load_model(model_folder)
    stored = ZarrStore(store).dataset(dataset)
    cases = len(stored.cases("test")[:max_cases])
    with tqdm(total=cases, unit="case", desc=f"evaluate {dataset}", position=bar or 0, disable=bar is None) as progress:
        return evaluate_dataset(model, stored, draws=draws, shots=shots, seed=seed, max_cases=max_cases, on_case=lambda _: progress.update())


def gather(futures: list) -> tuple[list[DatasetEvaluation], list[dict]]:
    """The datasets' evaluations, and every test case that could not be read (dataset, task, case,
    reason). A dataset none of whose test cases could be read is left out; if every one is, that
    is an error."""
    evaluations, failed = [], []
    for future in futures:
        try:
            evaluation = future.result()
        except NoCaseScored as error:
            failed += error.failed
            continue
        evaluations.append(evaluation)
        failed += evaluation.failed
    if not evaluations:
        raise ValueError("no dataset could be evaluated: " + "; ".join(row["reason"] for row in failed))
    return evaluations, failed


def primary_scores(evaluations: list[DatasetEvaluation], baseline: bool = False) -> dict[str, float]:
    """dataset -> the model's primary metric (mIoU or PSNR; for inpainting the whole image's), mean
    over draws; with `baseline`, that of the task's baseline (copy-prompt or identity) instead."""
    scores = {}
    for evaluation in evaluations:
        column = PAPER_NAMES[PRIMARY_METRIC[evaluation.task]]
        value = evaluation.summary[BASELINE_BY_TASK[evaluation.task] if baseline else MODEL][column].mean
        if not math.isnan(value):
            scores[evaluation.dataset] = value
    return scores


def scores_by_metric(evaluations: list[DatasetEvaluation], baseline: bool = False) -> dict[str, dict[str, float]]:
    """dataset -> {primary metric: value}: `primary_scores` in the shape the version's tags keep."""
    scores = primary_scores(evaluations, baseline)
    return {e.dataset: {PRIMARY_METRIC[e.task]: scores[e.dataset]} for e in evaluations if e.dataset in scores}


def record_on_version(uri: str, name: str, version: str, evaluations: list[DatasetEvaluation], run_id: str, failed_cases: int) -> None:
    """Keep an evaluation on a registry version: the primary scores and the baselines' as its tags
    (what promotion reads), how many test cases went unscored, and its card rewritten. The
    ablation flow records its registered variant's evaluation here too."""
    record_evaluation(uri, name, version, scores_by_metric(evaluations), run_id, baselines=scores_by_metric(evaluations, baseline=True))
    client(uri).set_model_version_tag(name, version, FAILED_CASES_TAG, str(failed_cases))  # promotion refuses above 0
    refresh_cards(uri, name, version)


@flow(name="evaluate", log_prints=True)
def evaluate_flow(
    model_uri: str = alias_uri(CANDIDATE),
    store: str | None = None,
    datasets: list[str] | None = None,
    draws: int = 1,
    shots: int = 1,
    seed: int = 0,
    max_cases: int | None = None,
    promote: bool = True,
    rule: str = "every",
    tolerance: float = 0.0,
    progress: bool = False,
) -> dict:
    """Score `model_uri` on the test cases of `datasets` (default: every stored dataset with test
    cases) beside the baselines (module docstring); `progress`: a bar per dataset on stderr."""
    store = chosen_store(store)
    PromotionRule(rule, tolerance)  # a bad rule fails before any model is loaded
    available = ZarrStore(store).datasets()
    chosen = datasets or [name for name in available if ZarrStore(store).dataset(name).cases("test")]
    missing = sorted(set(chosen) - set(available))
    if missing:
        raise ValueError(f"no stored dataset {', '.join(missing)} in {store} (found: {', '.join(available) or 'none'})")
    uri = tracking_uri()
    version = resolve_version(uri, model_uri)
    with local_model(model_uri) as folder:  # one download, however many datasets; a bad URI fails here
        load_model(folder)
        futures = [
            evaluate_dataset_task.submit(str(folder), store, name, draws, shots, seed, max_cases, index if progress else None)
            for index, name in enumerate(chosen)
        ]
        evaluations, failed = gather(futures)
    layout = tables(evaluations)
    for row in failed:
        print(f"failed: {row['reason']}")

    mlflow = client(uri)
    experiment = ensure_experiment(mlflow, EVALUATION_EXPERIMENT)
    label = f"{version[0]}-v{version[1]}" if version else Path(model_uri).name
    run = mlflow.create_run(experiment, run_name=f"evaluate-{label}")
    run_id = run.info.run_id
    for key, value in flatten({"model_uri": model_uri, "draws": draws, "shots": shots, "seed": seed, "store": store}).items():
        mlflow.log_param(run_id, key, value)
    # MLflow 3: metrics of a run can belong to a logged model, and then show on its registry version
    model_id = logged_model_id(uri, *version) if version else None
    for evaluation in evaluations:
        for row in evaluation.summary_rows():
            if not math.isnan(row["mean"]):
                key = f"{row['dataset']}.{row['method']}.{row['metric']}".replace(" ", "_").replace("(", "").replace(")", "")
                mlflow.log_metric(run_id, key, row["mean"], model_id=model_id)
    mlflow.log_metric(run_id, "failed_cases", len(failed))
    # the tables, cases and montages stay on disk too, where a person finds them without mlflow ui
    folder = reports_folder(f"evaluate-{label}-{run_id[:8]}")
    for name, rows in layout.items():
        if rows:
            to_csv(rows, folder / f"{name}.csv")
            (folder / f"{name}.md").write_text(to_markdown(rows) + "\n")
    to_csv([row for e in evaluations for row in e.rows], folder / "cases.csv")
    if failed:
        to_csv(failed, folder / "failed.csv")
    for evaluation in evaluations:
        Image.fromarray(evaluation.montage).save(folder / f"montage-{evaluation.dataset}.png")
    mlflow.log_artifacts(run_id, str(folder))
    for name, rows in layout.items():
        if rows:  # a table artifact in Prefect; the command prints the tables itself, once
            create_table_artifact(key=f"evaluate-{name}", table=rows, description=f"{name} of {model_uri}")

    summary = {
        "model_uri": model_uri, "run_id": run_id, "tables": layout, "failed": failed, "reports": str(folder),
        "montages": [str(folder / f"montage-{e.dataset}.png") for e in evaluations],
        "scores": primary_scores(evaluations), "baselines": primary_scores(evaluations, baseline=True),
    }
    mlflow.set_terminated(run_id, "FINISHED")
    if version:
        name, number = version
        record_on_version(uri, name, number, evaluations, run_id, failed_cases=len(failed))
        summary["version"] = number
        if promote:
            summary |= promote_flow(version_uri(number, name), rule, tolerance)
    return summary
