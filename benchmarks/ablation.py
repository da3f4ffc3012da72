"""The paper's ablations on your data and compute: one study of the `ablation` flow, its comparison as
JSON (the table, every trial's primary scores and baselines, the trials and their failures).

    python -m benchmarks.ablation --study objective --store mvg-home/real-store --budget-minutes 30 \\
        [--seeds 3] [--datasets acdc jsrt] [--set model.depth=6] [--out benchmarks/results/ablation-objective.json]
    python -m benchmarks.ablation --study custom --variants my-recipes.yaml --steps 1200 --store ...

Studies: colouring (Table 4), unified (Table 5), objective (Tables 6-7), data-scale (Figure 7) and
custom (a variants file; README, "Ablations"). Everything is also in MLflow (experiment
`mvg-ablation`): the table, its bar chart and the trials' training runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.common import machine, write_result
from flows.ablate import ablation_flow, report
from flows.cli import given, parse_overrides
from mvg.ablation import plan
from mvg.studies import STUDY_NAMES

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", required=True, choices=STUDY_NAMES)
    parser.add_argument("--variants", help="--study custom: the variants file")
    parser.add_argument("--store", required=True, help="store root (a folder or s3://bucket/prefix)")
    parser.add_argument("--preset", help="default: tiny-cpu")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget-minutes", type=float, help="training minutes per variant")
    budget.add_argument("--steps", type=int, help="training steps per variant")
    parser.add_argument("--seeds", type=int, help="trainings per variant (default: 1)")
    parser.add_argument("--datasets", nargs="+")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--workers", type=int, help="Ray Train workers per trial (default: 1)")
    parser.add_argument("--gpus-per-worker", type=float)
    parser.add_argument("--cpus-per-worker", type=int, help="default: this machine's cores / workers")
    parser.add_argument("--draws", type=int, help="prompt draws per dataset (default: 1)")
    parser.add_argument("--max-cases", type=int)
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/ablation-<study>.json")
    args = parser.parse_args()

    # only what was given: the flow's signature owns the defaults
    request = given(
        preset=args.preset, store=args.store, variants_file=args.variants, overrides=parse_overrides(args.set),
        datasets=args.datasets, seeds=args.seeds, steps=args.steps, budget_minutes=args.budget_minutes,
    )
    scaling = given(workers=args.workers, gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
                    draws=args.draws, max_cases=args.max_cases)
    plan(args.study, **request)  # a bad study or override fails before Prefect, Ray or MLflow start
    started = time.perf_counter()
    summary = ablation_flow(args.study, **request, **scaling)
    print(report(summary))
    results = {
        "machine": machine(),
        "request": {"study": args.study, **request, **scaling},
        "wall_s": round(time.perf_counter() - started, 1),
        **{key: summary[key] for key in ("study", "title", "steps", "seeds", "table", "scores", "trials", "failed", "best", "run_id", "tracking_uri")},
    }
    write_result(args.out or RESULTS / f"ablation-{args.study}.json", results)


if __name__ == "__main__":
    main()
