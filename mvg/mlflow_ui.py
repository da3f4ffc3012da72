"""How a person opens what MLflow recorded: a link when a tracking server is configured (an
http(s) URI), else the `mlflow ui` command that serves the local store, and the page to open then.
A link to 127.0.0.1:5000 when nothing serves there points at nothing."""

from __future__ import annotations

from mvg.tracking import client

LOCAL_UI = "http://127.0.0.1:5000"


def served(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def ui_command(tracking_uri: str) -> str:
    """The command that serves a local tracking store (SQLite, a folder) in a browser."""
    return f"mlflow ui --backend-store-uri {tracking_uri} --port 5000"


def run_page(tracking_uri: str, run_id: str) -> str:
    """Where to see a run: its link on the tracking server, or for a local store the `mlflow ui`
    command and the link it then serves."""
    experiment = client(tracking_uri).get_run(run_id).info.experiment_id
    path = f"/#/experiments/{experiment}/runs/{run_id}"
    if served(tracking_uri):
        return f"{tracking_uri.rstrip('/')}{path}"
    return f"{ui_command(tracking_uri)}, then open {LOCAL_UI}{path}"
