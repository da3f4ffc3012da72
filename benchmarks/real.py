"""Real data: one `tiny-cpu` model trained for a fixed wall-clock budget on every real dataset at
once (segmentation, synthesis, inpainting and denoising together, as the paper trains), then every
dataset's test split painted through the evaluation code of the `evaluate` flow, beside the
copy-the-prompt and identity baselines, in the layout of the paper's Tables 2 and 3.

    python -m benchmarks.real [--data ../shared/data] [--minutes 30] [--work DIR] [--out ...]
    make bench-real

The store is built with the built-in recipes (`storage.recipes`, as `make real-store` does) at the
model's own size. Prompts come from each dataset's training split at the same relative depth, with
`--draws` prompt draws (default 3). Training runs the single-process loop with the preset's
schedule stretched to the number of steps that fits `--minutes` at the speed measured by a short
calibration run; the JSON records the episodes the budget bought and the episodes per second.

Each dataset is judged against the issue's targets (`TARGETS`): the JSON and the printed table say
model | baseline | difference | target | met, every figure from this one run.

    python -m benchmarks.real --reevaluate RUN.json --set model.slot_inference=vote --out NEW.json

evaluates the weights a run kept beside its JSON (the folder `RUN`) again, with inference options
changed by `--set`, and writes the run's training record with the new figures: a paired comparison
of inference choices on the same weights, free of the spread between trainings.

    python -m benchmarks.real --steps 6900 --stop-after 2000 --set optim.lr=1.4e-3 --out SCREEN.json

is an early-loss screen: the run follows the schedule of `--steps` (warm-up and decay as the full
run's) but stops after `--stop-after` steps and writes only its training record, no evaluation and
no weights, for `benchmarks.early_loss` to set beside full runs of the same schedule.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from PIL import Image

from benchmarks.common import budgeted, machine, scratch, write_result
from flows.cli import parse_overrides
from mvg.config import preset
from mvg.evaluation import BASELINE_BY_TASK, MASKED, MODEL, DatasetEvaluation, evaluate_dataset, tables, to_markdown
from mvg.tracking import tracking_uri
from mvg.train import CHECKPOINT_FILE, load_trained, save_checkpoint, train
from storage.recipes import build_real_store
from storage.store import ZarrStore

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MIN_TEST_CASES = 5  # datasets with fewer test volumes or images are scored but carry no target


@dataclass(frozen=True)
class Target:
    """`metric` of the model must reach the baseline's plus `margin` (or `absolute`, when given)."""

    metric: str
    margin: float = 0.0
    absolute: float | None = None

    def required(self, baseline: float) -> float:
        return self.absolute if self.absolute is not None else baseline + self.margin

    def describe(self) -> str:
        return f">= {self.absolute:g}" if self.absolute is not None else f">= baseline {self.margin:+g}"


# dataset -> the figures it must reach (issue 12, section 3); other segmentation datasets with at least
# MIN_TEST_CASES test cases must beat copy-prompt by 0.20 mIoU
TARGETS: dict[str, tuple[Target, ...]] = {
    "acdc": (Target("mIoU", absolute=0.55),),
    "ldct-mayo": (Target("PSNR", 1.0),),
    "brats2013": (Target("PSNR", 3.0), Target("SSIM", 1e-9)),
    "brats-local": (Target(f"PSNR{MASKED}", 10.0), Target("PSNR", -0.5)),
}
DEFAULT_SEGMENTATION_TARGET = (Target("mIoU", 0.20),)


def targets_for(evaluation: DatasetEvaluation) -> tuple[Target, ...]:
    if evaluation.dataset in TARGETS:
        return TARGETS[evaluation.dataset]
    tested = len({row["case"] for row in evaluation.rows})
    if evaluation.task == "segmentation" and tested >= MIN_TEST_CASES:
        return DEFAULT_SEGMENTATION_TARGET
    return ()


def judge(evaluation: DatasetEvaluation) -> list[dict]:
    """One row per target of the dataset (or one unjudged row of its primary metric): model,
    baseline, difference, what is required and whether it is met."""
    baseline = BASELINE_BY_TASK[evaluation.task]
    targets = targets_for(evaluation) or (Target("mIoU" if evaluation.task == "segmentation" else "PSNR"),)
    rows = []
    for target in targets:
        model = evaluation.summary[MODEL][target.metric]
        base = evaluation.summary[baseline][target.metric]
        judged = bool(targets_for(evaluation))
        rows.append({
            "dataset": evaluation.dataset, "task": evaluation.task, "metric": target.metric,
            "model": model.mean, "model_std": model.std, "baseline_method": baseline,
            "baseline": base.mean, "difference": model.mean - base.mean,
            "target": target.describe() if judged else "none (too few test cases)",
            "required": target.required(base.mean) if judged else None,
            "met": bool(model.mean >= target.required(base.mean)) if judged and not math.isnan(model.mean) else None,
        })
    return rows


MET_LABELS = {True: "yes", False: "**no**", None: "-"}  # a target met, missed, or none to judge


def quality_table(rows: list[dict]) -> str:
    lines = ["| dataset | metric | model | baseline | difference | target | met |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        spread = "" if math.isnan(row["model_std"]) else f" ± {row['model_std']:.3f}"
        met = MET_LABELS[row["met"]]
        lines.append(
            f"| {row['dataset']} | {row['metric']} | {row['model']:.3f}{spread} | {row['baseline_method']} "
            f"{row['baseline']:.3f} | {row['difference']:+.3f} | {row['target']} | {met} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the folder holding the public datasets")
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget (wall clock)")
    parser.add_argument("--steps", type=int, help="train this many steps instead of --minutes (equal-budget comparisons)")
    parser.add_argument("--preset", default="tiny-cpu", help="config preset")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (weights, episodes, masks): several seeds size a recipe's spread")
    parser.add_argument("--draws", type=int, default=3, help="prompt draws per test case")
    parser.add_argument("--work", type=Path, help="keep the store here and reuse it (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/real.json"))
    parser.add_argument("--name", help="MLflow run name")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MVG_HOME/mlflow.db)")
    parser.add_argument("--stop-after", type=int, metavar="STEPS",
                        help="an early-loss screen: stop after this many steps of the schedule; write the training record only")
    parser.add_argument("--reevaluate", type=Path, metavar="RUN.json",
                        help="no training: evaluate the weights kept beside RUN.json again, with --set applied to their config")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: no such folder; point --data at the folder holding the public datasets")
    if args.stop_after is not None and (args.stop_after < 1 or args.reevaluate is not None):
        raise SystemExit("--stop-after takes a positive number of steps to train, and no --reevaluate")
    if args.reevaluate is not None and not (args.reevaluate.with_suffix("") / CHECKPOINT_FILE).is_file():
        raise SystemExit(f"{args.reevaluate}: no weights beside it ({args.reevaluate.with_suffix('') / CHECKPOINT_FILE})")
    mlflow.set_tracking_uri(args.tracking_uri or tracking_uri())
    mlflow.set_experiment("real-benchmark")
    overrides = parse_overrides(args.set)
    run_name = args.name or (f"reevaluate-{args.reevaluate.stem}" if args.reevaluate else f"real-{args.minutes:g}min")

    with scratch(args.work, "mvg-bench-real-") as work, mlflow.start_run(run_name=run_name):
        mlflow.log_params({s.partition("=")[0]: s.partition("=")[2] for s in args.set})
        reevaluated = None if args.reevaluate is None else _trained_before(args.reevaluate, overrides)
        if reevaluated is not None:
            mlflow.log_params({"reevaluated": str(args.reevaluate), "steps": reevaluated[2]["steps"]})
        config = preset(args.preset).with_overrides(**overrides) if reevaluated is None else reevaluated[1]
        started = time.perf_counter()
        store = work / "store"
        built = build_real_store(args.data, store, config.data.resize)  # at the size the model was trained at
        ingest_s = time.perf_counter() - started
        print(f"store: {len(built)} datasets in {ingest_s:.0f} s", flush=True)
        model, config, training = _train(args, config, store) if reevaluated is None else reevaluated
        if args.stop_after is not None:
            write_result(args.out, {"benchmark": "real-screen", "machine": machine(), "config": config.to_dict(),
                                    "datasets": built, "training": training})
            return
        _evaluate(args, model, config, training, store, built, ingest_s)


def _train(args: argparse.Namespace, config, store: Path) -> tuple:
    """Train within the budget (up to `--stop-after` steps of it, a screen); keep a full run's weights
    beside the result. -> (model, config, training record)."""
    config = budgeted(config, [store], args.minutes, args.steps)
    steps = config.optim.steps
    stop = min(args.stop_after or steps, steps)
    mlflow.log_params({"preset": args.preset, "steps": steps, "minutes": args.minutes, "seed": args.seed, "stop_after": stop})
    began = time.perf_counter()
    trained = train(config, [store], steps=stop, log_every=100, seed=args.seed, on_log=lambda row: print(
        f"step {row['step']}/{steps} loss {row['loss']:.4f} ({row['episodes_per_s']:.1f} episodes/s) "
        + " ".join(f"{key[5:]} {value:.4f}" for key, value in row.items() if key.startswith("loss_")), flush=True))
    train_s = time.perf_counter() - began
    if trained.step == steps:
        # the trained weights beside the result, loadable with mvg.train.load_trained: evaluation
        # choices (prompt draws, painting) can be compared again without another half hour of training
        save_checkpoint(args.out.with_suffix(""), {"model": trained.model.state_dict(), "config": config.to_dict(), "step": trained.step})
    for row in trained.history:
        mlflow.log_metrics({k: v for k, v in row.items() if k != "step"}, step=row["step"])
    episodes = trained.step * config.optim.batch_size
    mlflow.log_metrics({"train_s": train_s, "episodes": episodes, "episodes_per_s": episodes / train_s})
    training = {"budget_min": args.minutes, "seed": args.seed, "steps": trained.step, "schedule_steps": steps, "wall_s": train_s,
                "episodes": episodes, "episodes_per_s": episodes / train_s, "final_loss": trained.history[-1]["loss"],
                "history": trained.history}
    return trained.model, config, training


def _trained_before(result: Path, overrides: dict) -> tuple:
    """The weights kept beside an earlier run's JSON, with `overrides` applied to their config, and
    that run's training record, which says where they came from. -> (model, config, training record)."""
    model, config, step = load_trained(result.with_suffix(""), overrides)
    training = json.loads(result.read_text())["training"]
    if training["steps"] != step:
        raise SystemExit(f"{result}: its record says {training['steps']} steps but the weights beside it are at step {step}")
    return model, config, {**training, "reevaluated_from": str(result), "overrides": overrides}


def _evaluate(args: argparse.Namespace, model, config, training: dict, store: Path, built: list, ingest_s: float) -> None:
    """Every dataset's test split against its baseline and target; the tables, montages and JSON."""
    stored = ZarrStore(store)
    evaluations = []
    for name in stored.datasets():
        dataset = stored.dataset(name)
        if not dataset.cases("test"):
            continue  # a training-only dataset
        began_eval = time.perf_counter()
        evaluations.append(evaluate_dataset(model, dataset, draws=args.draws, seed=0))
        print(f"evaluated {name} in {time.perf_counter() - began_eval:.0f} s", flush=True)
    judged = [row for evaluation in evaluations for row in judge(evaluation)]
    layout = tables(evaluations)
    table = quality_table(judged)
    print(f"\n{table}\n\nTable 2:\n{to_markdown(layout['table2'])}\n\nTable 3:\n{to_markdown(layout['table3'])}")

    pictures = args.out.with_suffix("")
    pictures.mkdir(parents=True, exist_ok=True)
    for evaluation in evaluations:
        path = pictures / f"montage-{evaluation.dataset}.png"
        Image.fromarray(evaluation.montage).save(path)
        mlflow.log_artifact(str(path))
    for row in judged:
        key = f"{row['dataset']}.{row['metric']}".replace(" ", "_").replace("(", "").replace(")", "")
        if not math.isnan(row["model"]):
            mlflow.log_metrics({f"{key}.model": row["model"], f"{key}.baseline": row["baseline"]})
    write_result(args.out, {
        "benchmark": "real-unified",
        "machine": machine(),
        "device": "cpu",
        "gpu": None,
        "torch_threads": torch.get_num_threads(),
        "config": config.to_dict(),
        "datasets": built,
        "ingest_s": ingest_s,
        "training": training,
        "evaluation": {"draws": args.draws, "shots": 1,
                       "summary": {e.dataset: {method: {metric: {"mean": a.mean, "std": a.std} for metric, a in metrics.items()}
                                               for method, metrics in e.summary.items()} for e in evaluations}},
        "targets": judged,
        "all_met": all(row["met"] for row in judged if row["met"] is not None),
        "table2": layout["table2"],
        "table3": layout["table3"],
    })


if __name__ == "__main__":
    main()
