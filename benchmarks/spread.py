"""The spread of several real-benchmark runs of one recipe (seeds), figure by figure.

    python -m benchmarks.spread benchmarks/results/real.json RUN.json ... [--out SPREAD.json]

One 30-minute run of `benchmarks.real` is one draw of the training's randomness: initial weights,
the episodes drawn and the MIM masks all follow `--seed`. A recipe change is worth keeping only
where it moves a figure by more than runs of one recipe differ, so this puts the runs' figures side
by side: per target, every run's model figure, their mean, standard deviation and range, the
baseline (the same in every run: evaluation draws its prompts with a fixed seed), and whether the
mean meets the target and in how many runs it was met.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from benchmarks.common import read_result, write_result
from benchmarks.real import MET_LABELS


def spread(results: list[dict]) -> list[dict]:
    """One row per (dataset, metric) judged in the first run: the runs' model figures and their summary.
    Every run must judge the same figures (one recipe's seeds, one benchmark)."""
    if not results:
        raise ValueError("no runs to compare")
    keys = [_figures(result) for result in results]
    for key, result in zip(keys[1:], results[1:], strict=True):
        if set(key) != set(keys[0]):
            raise ValueError(f"run of seed {_seed(result)} judges other figures than the first: {sorted(set(key) ^ set(keys[0]))}")
    rows = []
    for figure, first in keys[0].items():
        runs = [key[figure] for key in keys]
        values = [run["model"] for run in runs]
        mean = statistics.fmean(values)
        required = first["required"]
        rows.append({
            "dataset": first["dataset"], "metric": first["metric"], "seeds": [_seed(result) for result in results],
            "model": values, "mean": mean, "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values),
            "baseline_method": first["baseline_method"], "baseline": statistics.fmean(run["baseline"] for run in runs),
            "target": first["target"], "required": required,
            "mean_met": None if required is None else bool(mean >= required),
            "runs_met": sum(bool(run["met"]) for run in runs) if required is not None else None,
        })
    return rows


def spread_table(rows: list[dict]) -> str:
    lines = [
        "| dataset | metric | runs | mean ± std | range | baseline | target | mean met | runs met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        met = MET_LABELS[row["mean_met"]]
        runs_met = "-" if row["runs_met"] is None else f"{row['runs_met']} of {len(row['model'])}"
        lines.append(
            f"| {row['dataset']} | {row['metric']} | {', '.join(f'{v:.3f}' for v in row['model'])} "
            f"| {row['mean']:.3f} ± {row['std']:.3f} | {row['min']:.3f} to {row['max']:.3f} "
            f"| {row['baseline_method']} {row['baseline']:.3f} | {row['target']} | {met} | {runs_met} |"
        )
    return "\n".join(lines)


def _figures(result: dict) -> dict[tuple[str, str], dict]:
    return {(row["dataset"], row["metric"]): row for row in result["targets"]}


def _seed(result: dict) -> int:
    return result.get("training", {}).get("seed", 0)  # runs before `--seed` trained with seed 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="JSON results of benchmarks.real, one per seed")
    parser.add_argument("--out", type=Path, help="write the spread here as JSON")
    args = parser.parse_args()
    results = [read_result(path) for path in args.runs]
    rows = spread(results)
    print(spread_table(rows))
    if args.out:
        write_result(args.out, {"benchmark": "real-spread", "runs": [str(path) for path in args.runs], "figures": rows})


if __name__ == "__main__":
    main()
