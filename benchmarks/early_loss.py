"""Real-benchmark runs' training losses over a window of early steps, side by side: a screen of
recipes by how fast they fit, at a fraction of a full run's cost.

    python -m benchmarks.early_loss benchmarks/results/real.json SCREEN.json ... [--window 1000 2000] [--out F]

The three seeds of the release rank on the test split (ACDC 0.574 / 0.532 / 0.447) as their
segmentation episodes' training loss over steps 1,000-2,000 ranks them, and the image tasks'
losses barely differ between them: a lever meant to make the seeds agree must speed up that fit,
and the first 2,000 steps of a run already show whether it does. A screen
(`benchmarks.real --stop-after 2000`) trains just those steps on the full run's schedule; this
sets it beside the full runs' records. Each row is one run; each task's figure is the mean of the
logged training losses (each the mean over the 100 steps before it) in the window. Only runs on
one schedule are compared: the learning rate at a step depends on the schedule's length.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from benchmarks.common import read_result, write_result
from mvg.config import TASKS


def window_losses(result: dict, first: int, last: int) -> dict[str, float]:
    """Each task's mean logged training loss over the rows at steps `first`..`last` of a run's
    record; a task with no episodes in the window is left out."""
    history = result["training"]["history"]
    if history[-1]["step"] < last:
        raise ValueError(f"trained up to step {history[-1]['step']}, short of the window's steps {first}-{last}")
    rows = [row for row in history if first <= row["step"] <= last]
    if not rows:
        raise ValueError(f"no training loss logged within steps {first}-{last} (its rows are at steps {history[0]['step']}, ...)")
    losses = {}
    for task in TASKS:
        values = [row[f"loss_{task}"] for row in rows if f"loss_{task}" in row]
        if values:
            losses[task] = statistics.fmean(values)
    return losses


def schedule_of(result: dict) -> int:
    """The steps a run's schedule spans: a screen's record says so, a full run trained all of them."""
    return result["training"].get("schedule_steps", result["training"]["steps"])


def early_losses(named: dict[str, dict], first: int, last: int) -> list[dict]:
    """One row per run: its name, seed, peak lr, schedule and each task's loss over the window."""
    schedules = {name: schedule_of(result) for name, result in named.items()}
    if len(set(schedules.values())) > 1:
        raise ValueError(f"runs on different schedules do not compare step by step: {schedules}")
    rows = []
    for name, result in named.items():
        try:
            losses = window_losses(result, first, last)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        rows.append({"run": name, "seed": result["training"].get("seed", 0), "lr": result["config"]["optim"]["lr"],
                     "schedule_steps": schedules[name], "losses": losses})
    return rows


def early_loss_table(rows: list[dict]) -> str:
    tasks = [task for task in TASKS if any(task in row["losses"] for row in rows)]
    lines = [
        f"| run | seed | peak lr | {' | '.join(tasks)} |",
        "| --- | --- | --- |" + " --- |" * len(tasks),
    ]
    for row in rows:
        figures = " | ".join(f"{row['losses'][task]:.4f}" if task in row["losses"] else "-" for task in tasks)
        lines.append(f"| {row['run']} | {row['seed']} | {row['lr']:g} | {figures} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="JSON results of benchmarks.real: full runs or screens")
    parser.add_argument("--window", nargs=2, type=int, default=(1000, 2000), metavar=("FIRST", "LAST"), help="steps averaged over")
    parser.add_argument("--out", type=Path, help="write the rows here as JSON")
    args = parser.parse_args()
    first, last = args.window
    stems_unique = len({path.stem for path in args.runs}) == len(args.runs)
    named = {path.stem if stems_unique else str(path): read_result(path) for path in args.runs}
    try:
        rows = early_losses(named, first, last)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    print(f"training loss per task, mean over steps {first}-{last}:\n{early_loss_table(rows)}")
    if args.out:
        write_result(args.out, {"benchmark": "real-early-loss", "window": [first, last],
                                "runs": [str(path) for path in args.runs], "rows": rows})


if __name__ == "__main__":
    main()
