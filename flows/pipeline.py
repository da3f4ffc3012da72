"""Prefect flow `pipeline`: the whole job on one machine, phantoms -> ingest -> train -> evaluate ->
promote. Every stage is a flow of its own: it runs alone (`mvg ingest`, `mvg train`, ...) and shows
as a subflow of the pipeline run in the Prefect UI.

A re-run reuses what is done: phantom folders written with the same settings, cases whose source
did not change (the ingest flow skips them), a training run that already finished under the same
run name (the train flow registers nothing twice). Evaluation and promotion run again; they take
seconds. `fresh=True` starts over: phantoms and store are written again and a new training run
(`<run_name>-<time>`) trains and registers a new version; the MLflow history is kept.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.artifacts import create_markdown_artifact
from tqdm.auto import tqdm

from flows.evaluate import evaluate_flow
from flows.ingest import ingest_flow
from flows.promote import promote_flow
from flows.train import train_flow
from mvg.budget import Budget, budget
from mvg.config import preset as preset_config
from mvg.distributed import Scaling
from mvg.evaluation import to_markdown
from mvg.names import CHAMPION
from mvg.tracking import tracking_uri
from storage.home import chosen_store, mvg_home
from storage.phantoms import PHANTOM_TASKS, phantoms_written, write_phantoms

# the demo's phantoms: stored at tiny-cpu's own size, so nothing is resized between store and model
DEMO_CASES, DEMO_SIZE, DEMO_SLICES = 8, 64, 32
# the demo's training, in wall-clock minutes (the calibration included): about what the floor of
# steps below takes on an idle 2-core machine; a faster machine trains more steps in the same time
DEMO_MINUTES = 17.0
# ... but never fewer steps than this: the fewest measured after which tiny-cpu beats its baseline
# on every phantom figure (at 3,000 steps: the seven organs 0.523 against copy-prompt's 0.470,
# denoising 29.07 dB against the identity's 28.61). At 2,000 steps the organs still lost (0.428),
# at 800 they scored 0.166 and denoising lost by 0.1 dB, and at 416 the model painted no lungs at
# all. A slow machine's demo runs over its budget instead, and says by how much.
DEMO_MIN_STEPS = 3000

# what `fresh` deletes under MVG_HOME: the data, never the tracking history
REWRITTEN_WHEN_FRESH = ("phantoms", "store", "previews")  # under MVG_HOME: the demo's own


@flow(name="phantoms", log_prints=True)
def phantoms_flow(
    root: str | None = None,
    tasks: list[str] | None = None,
    cases: int = 8,
    size: int = 128,
    slices: int = 32,
    seed: int = 0,
) -> list[str]:
    """Synthetic datasets in nnU-Net v2 layout, one folder per task under `root`
    (default $MVG_HOME/phantoms); a folder already written with the same settings is reused."""
    root_path = Path(root) if root else mvg_home() / "phantoms"
    folders = []
    for task in tasks or PHANTOM_TASKS:
        out = root_path / f"phantom-{task}"
        if phantoms_written(out, task, cases, seed, size, slices):
            print(f"phantom-{task}: {cases} case(s) already written in {out}")
        else:
            with tqdm(total=cases, unit="case", desc=f"phantoms {task}") as bar:
                write_phantoms(task, out, cases, seed, size, slices, progress=lambda done: bar.update(done - bar.n))
        folders.append(str(out))
    return folders


@task(cache_policy=NO_CACHE)
def budget_task(preset: str, store: str, scaling: Scaling, minutes: float, run_name: str, min_steps: int) -> Budget:
    """The demo's steps: those that fit `minutes` here (at least `min_steps`), or those run
    `run_name` was started with."""
    planned = budget(preset_config(preset), [store], scaling, minutes, tracking_uri(), run_name, min_steps)
    if planned.steps_per_s is None:
        print(f"run {run_name} was started with {planned.steps} steps: it keeps them")
    elif planned.bought is not None:
        print(f"WARNING: calibrated at {planned.steps_per_s:.2f} steps/s, the {minutes:g} minute budget buys only "
              f"{planned.bought} steps, fewer than the {min_steps} the demo's model needs to beat its baselines: "
              f"training {planned.steps} steps, about {planned.over_budget_s / 60:.1f} minutes over the budget "
              f"(--steps N trains exactly N)")
    else:
        print(f"calibrated at {planned.steps_per_s:.2f} steps/s in {planned.calibration_s:.0f} s: "
              f"{planned.steps} steps fit the {minutes:g} minute training budget")
    return planned


def start_over(home: Path, run_name: str) -> str:
    """Delete the demo's phantoms, store and previews under `home`; return the name of a new
    training run. A store elsewhere (`MVG_STORE`, `store=`) may be shared: it is kept, and the
    phantoms' cases in it are re-ingested only if they changed."""
    for name in REWRITTEN_WHEN_FRESH:
        shutil.rmtree(home / name, ignore_errors=True)
    return f"{run_name}-{time.strftime('%Y%m%d-%H%M%S')}"


@flow(name="pipeline", log_prints=True)
def pipeline_flow(
    cases: int = DEMO_CASES,
    size: int = DEMO_SIZE,
    slices: int = DEMO_SLICES,
    preset: str = "tiny-cpu",
    steps: int | None = None,
    run_name: str = "demo",
    ingest_workers: int = 2,
    draws: int = 1,
    rule: str = "every",
    tolerance: float = 0.0,
    fresh: bool = False,
    store: str | None = None,
    minutes: float = DEMO_MINUTES,
    min_steps: int = DEMO_MIN_STEPS,
    progress: bool = False,
) -> dict:
    """Phantoms of every task -> the Zarr store -> `preset` trained on Ray (run `run_name`) ->
    registered `mvg@candidate` -> evaluated beside the baselines -> `@champion` if it beats them and is
    as good as the champion. The training runs `steps`, else the steps that fit `minutes` on this
    machine but at least `min_steps` (mvg.budget); `progress`: progress bars of ingest and evaluation on stderr."""
    home = mvg_home()
    if fresh:
        run_name = start_over(home, run_name)
    store = chosen_store(store)
    sources = phantoms_flow(str(home / "phantoms"), cases=cases, size=size, slices=slices)

    ingested = {}
    for source in sources:
        # a failed case fails that ingest run, not the pipeline: the good cases are in the store
        state = ingest_flow(source, store=store, workers=ingest_workers, size=size, progress=progress, return_state=True)
        result = state.result(raise_on_failure=False)
        if not isinstance(result, dict):
            raise RuntimeError(f"ingest of {source} crashed: {result}")
        ingested[result["dataset"]] = {key: result[key] for key in ("ingested", "skipped", "failed")}

    scaling = Scaling(workers=1, cpus_per_worker=os.cpu_count() or 1)
    overrides = {"optim": {"steps": steps}} if steps else budget_task(preset, store, scaling, minutes, run_name, min_steps).overrides()
    training = train_flow(
        preset=preset,
        overrides=overrides,
        store=store,
        workers=scaling.workers,
        cpus_per_worker=scaling.cpus_per_worker,
        run_name=run_name,
    )
    evaluation = evaluate_flow(model_uri=training["model_uri"], store=store, draws=draws, promote=False, progress=progress)
    promotion = promote_flow(training["model_uri"], rule=rule, tolerance=tolerance)

    summary = {
        "home": str(home),
        "store": store,
        "tracking_uri": tracking_uri(),
        "ingested": ingested,
        "training": {key: training[key] for key in ("run_name", "run_id", "step", "model_uri", "model_reused")},
        "loss_curves": training.get("loss_curves"),
        "evaluation_run_id": evaluation["run_id"],
        "montages": evaluation.get("montages", []),
        "tables": evaluation["tables"],
        "promotion": promotion,
    }
    create_markdown_artifact(key="pipeline-summary", markdown=summary_markdown(summary), description="pipeline results")
    return summary


def summary_markdown(summary: dict) -> str:
    tables = "\n\n".join(to_markdown(rows) for rows in summary["tables"].values() if rows)
    promotion = summary["promotion"]
    verdict = f"promoted to `@{CHAMPION}`" if promotion["promoted"] else "not promoted"
    return (
        f"# Pipeline results\n\n"
        f"Model `{summary['training']['model_uri']}` (run `{summary['training']['run_name']}`, step "
        f"{summary['training']['step']}): {verdict}, {promotion['reason']}.\n\n{tables}\n\n"
        f"Store `{summary['store']}`; tracking `{summary['tracking_uri']}`.\n"
    )
