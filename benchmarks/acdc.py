"""Real data: `tiny-cpu` trained for a fixed wall-clock budget on ACDC cardiac MRI, then evaluated
1-shot on held-out ACDC volumes beside the copy-the-prompt baseline (issue 5's learning figure).

    python -m benchmarks.acdc --data ../shared/data/acdc [--minutes 30] [--work DIR] [--out ...]
    python -m benchmarks.acdc --steps 1500 --set model.pixel_skip_channels=0 --name no-skip --work DIR

`--steps` trains a fixed number of steps instead of a wall-clock budget: the way to compare recipes
at equal budget (episodes) on a machine whose speed varies. Every run is an MLflow run (experiment
`acdc-benchmark`, `--tracking-uri`, default `$MVG_HOME/mlflow.db`) with its overrides as params, its
scores as metrics and its montage as an artifact.

Data (the SSL4MIS release of ACDC, see the shared data README): the 1,312 2-D training slices of
70 patients are the dataset `acdc-slices` (training only); the 20 ED/ES volumes of 10 other
patients are the dataset `acdc`, whose first 4 patients (8 volumes) are its training split -- the
prompt pool, also trained on -- and the other 6 patients (12 volumes) its test split. Each test
volume is painted slice by slice from a prompt volume of another patient, slice at the same
relative depth (paper 3.3), with `--draws` prompt draws.

Training runs the single-process loop with the preset's schedule stretched to the number of steps
that fits `--minutes` at the speed measured over a short calibration run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mlflow
import torch
from PIL import Image

from benchmarks.common import budgeted, machine, scratch, write_result
from flows.cli import parse_overrides
from mvg.config import preset
from mvg.tracking import tracking_uri
from mvg.evaluation import COPY_PROMPT, MODEL, evaluate_dataset
from mvg.train import train
from storage.ingest import IngestOptions, dask_client, ingest
from storage.layouts import plan_dataset
from storage.store import ZarrStore

PROMPT_POOL_PATIENTS = 4


def write_manifests(data: Path, work: Path) -> tuple[Path, Path]:
    slices = sorted((data / "slices").glob("*.h5"))
    volumes = sorted((data / "volumes").glob("*.h5"))
    if not slices or not volumes:
        raise FileNotFoundError(f"{data}: expected slices/*.h5 and volumes/*.h5 (the SSL4MIS ACDC release)")
    patients = sorted({path.name.split("_")[0] for path in volumes})
    pool = set(patients[:PROMPT_POOL_PATIENTS])

    def rows(paths: list[Path], folder: str, split_of) -> list[dict]:
        return [
            {"case": p.stem, "image": f"{folder}/{p.name}", "image_key": "image", "target": f"{folder}/{p.name}",
             "target_key": "label", "split": split_of(p)}
            for p in paths
        ]

    slice_manifest = work / "acdc-slices.json"
    slice_manifest.write_text(json.dumps(
        {"spec": "acdc", "name": "acdc-slices", "root": str(data), "cases": rows(slices, "slices", lambda p: "train")}
    ))
    volume_manifest = work / "acdc.json"
    volume_manifest.write_text(json.dumps({
        "spec": "acdc", "root": str(data),
        "cases": rows(volumes, "volumes", lambda p: "train" if p.name.split("_")[0] in pool else "test"),
    }))
    return slice_manifest, volume_manifest


def build_store(data: Path, work: Path, size: int) -> Path:
    store = work / "store"
    if {"acdc", "acdc-slices"} <= set(ZarrStore(store).datasets()):
        return store  # reused with --work
    manifests = write_manifests(data, work)
    with dask_client(workers=2) as client:
        for manifest in manifests:
            # the manifests live in the work folder and read the data folder: allow that folder
            report = ingest(plan_dataset(manifest, root=data), store, client, IngestOptions(size=size))
            if report.failed:
                raise RuntimeError(f"{manifest}: {len(report.failed)} case(s) failed: {report.failed[0].reason}")
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "acdc")
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget (wall clock)")
    parser.add_argument("--size", type=int, default=128, help="store in-plane size")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--work", type=Path, help="keep the store and checkpoint here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/acdc.json"))
    parser.add_argument("--steps", type=int, help="train this many steps (equal-budget comparisons) instead of --minutes")
    parser.add_argument("--preset", default="tiny-cpu", help="config preset the overrides apply to")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--name", help="MLflow run name (default: the overrides)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (weights, episodes, masks)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MVG_HOME/mlflow.db)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    mlflow.set_tracking_uri(args.tracking_uri or tracking_uri())
    mlflow.set_experiment("acdc-benchmark")

    with scratch(args.work, "mvg-bench-acdc-") as work, mlflow.start_run(run_name=args.name or " ".join(args.set) or args.preset):
        started = time.perf_counter()
        store = build_store(args.data, work, args.size)
        ingest_s = time.perf_counter() - started
        config = preset(args.preset).with_overrides(**parse_overrides(args.set))
        config = budgeted(config, [store], args.minutes, args.steps)
        steps = config.optim.steps
        mlflow.log_params({"preset": args.preset, "steps": steps, "seed": args.seed, **{s.partition("=")[0]: s.partition("=")[2] for s in args.set}})
        began = time.perf_counter()
        trained = train(config, [store], log_every=50, seed=args.seed, on_log=lambda row: print(
            f"step {row['step']}/{steps} loss {row['loss']:.4f} ({row['episodes_per_s']:.1f} episodes/s)", flush=True))
        train_s = time.perf_counter() - began
        torch.save(trained.model.state_dict(), args.out.with_suffix(".pt"))  # for a look at its raw paintings
        for row in trained.history:
            mlflow.log_metrics({k: v for k, v in row.items() if k != "step"}, step=row["step"])
        evaluation = evaluate_dataset(trained.model, ZarrStore(store).dataset("acdc"), draws=args.draws, seed=0)
        summary = {method: {metric: {"mean": a.mean, "std": a.std} for metric, a in metrics.items()}
                   for method, metrics in evaluation.summary.items()}
        model, copy = summary[MODEL]["mIoU"]["mean"], summary[COPY_PROMPT]["mIoU"]["mean"]
        print(f"ACDC 1-shot mIoU: model {model:.3f}, copy-prompt {copy:.3f} ({trained.step} steps, {train_s:.0f} s)")
        mlflow.log_metrics({"acdc_miou": model, "copy_prompt_miou": copy, "train_s": train_s,
                            "episodes_per_s": trained.step * config.optim.batch_size / train_s})
        montage = args.out.with_suffix(".png")
        montage.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(evaluation.montage).save(montage)
        mlflow.log_artifact(str(montage))
        write_result(args.out, {
            "benchmark": "acdc-1shot",
            "machine": machine(),
            "device": "cpu",
            "gpu": None,
            "config": config.to_dict(),
            "data": {"train_slices": len(ZarrStore(store).dataset("acdc-slices").cases("train")),
                     "prompt_pool_volumes": len(ZarrStore(store).dataset("acdc").cases("train")),
                     "test_volumes": len(ZarrStore(store).dataset("acdc").cases("test")), "store_size": args.size},
            "ingest_s": ingest_s,
            "training": {"budget_min": args.minutes, "steps": trained.step, "wall_s": train_s,
                         "episodes": trained.step * config.optim.batch_size,
                         "episodes_per_s": trained.step * config.optim.batch_size / train_s,
                         "final_loss": trained.history[-1]["loss"]},
            "evaluation": {"draws": args.draws, "shots": 1, "summary": summary,
                           "model_minus_copy_prompt_miou": model - copy},
        })


if __name__ == "__main__":
    main()
