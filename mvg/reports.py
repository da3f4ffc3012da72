"""Pictures on disk: a run's loss curves and evaluation montages as plain files under
`$MVG_HOME/reports/<run>/`, beside the copies logged to MLflow, so a curve can be looked at without
starting `mlflow ui`. The commands print the paths they wrote."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from mvg.tracking import client
from storage.home import mvg_home

LOSS_CURVES = "loss.png"


def reports_folder(run: str, home: str | Path | None = None) -> Path:
    """`$MVG_HOME/reports/<run>`, created; `run` is a run's name (or name and id), made safe as a
    folder name."""
    folder = mvg_home(home) / "reports" / (re.sub(r"[^\w.@+-]+", "_", run).strip("._") or "run")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def logged_losses(tracking_uri: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every loss metric of the run (`loss`, `loss_<task>`) as (step, value) pairs in step order:
    the whole history, a resumed run's earlier launches included."""
    mlflow = client(tracking_uri)
    keys = sorted(key for key in mlflow.get_run(run_id).data.metrics if key == "loss" or key.startswith("loss_"))
    return {key: sorted((m.step, m.value) for m in mlflow.get_metric_history(run_id, key)) for key in keys}


def plot_losses(losses: Mapping[str, Sequence[tuple[int, float]]], title: str, path: str | Path) -> Path:
    """The loss per step, overall (thick) and per task (thin), on a log scale (losses of the
    tasks differ by orders of magnitude)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: flows run on servers
    from matplotlib import pyplot

    figure, axis = pyplot.subplots(figsize=(7, 4))
    for key, points in losses.items():
        if not points:
            continue
        steps, values = zip(*points)
        overall = key == "loss"
        axis.plot(steps, values, label="all tasks" if overall else key.removeprefix("loss_"),
                  linewidth=2.2 if overall else 1.0, color="black" if overall else None, zorder=3 if overall else 2)
    if any(value > 0 for points in losses.values() for _, value in points):
        axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("training loss")
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    if losses:
        axis.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def write_loss_curves(tracking_uri: str, run_id: str, run_name: str, home: str | Path | None = None) -> Path | None:
    """The run's loss curves as `reports/<run_name>/loss.png`, also logged as the run's artifact;
    None when the run logged no loss yet."""
    losses = logged_losses(tracking_uri, run_id)
    if not losses:
        return None
    path = plot_losses(losses, f"training run {run_name}", reports_folder(run_name, home) / LOSS_CURVES)
    client(tracking_uri).log_artifact(run_id, str(path))
    return path
