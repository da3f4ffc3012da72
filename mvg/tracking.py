"""MLflow for training runs: where tracking lives, the run a flow opens, and what rank 0 logs into it.

Tracking defaults to SQLite under MVG_HOME with artifacts beside it; `MLFLOW_TRACKING_URI` points
everything at a server instead, and `MLFLOW_REGISTRY_URI`, when set, the model registry alone (as
MLflow's own clients read it). A run is found again by its name, so re-running with the same
run name continues the same MLflow run (and Ray run) instead of starting a second one.
"""

from __future__ import annotations

import http.client
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from mvg.names import TRAINING_EXPERIMENT
from storage.home import mvg_home
from storage.store import ZarrStore

MAX_BATCH = 100  # params per log_batch call (MLflow's limit)


def tracking_uri(home: str | Path | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mvg_home(home) / 'mlflow.db'}"


def registry_uri(tracking: str | None = None) -> str:
    """Where registered models live: `MLFLOW_REGISTRY_URI`, else the tracking URI (MLflow's rule;
    a deployment may keep its registry in a database apart from the runs)."""
    return os.environ.get("MLFLOW_REGISTRY_URI") or tracking or tracking_uri()


def client(uri: str | None = None) -> MlflowClient:
    """A client for runs at `uri` (default: `tracking_uri()`) and the registry at `registry_uri`."""
    uri = uri or tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=registry_uri(uri))


class TrackingServerUnreachable(ConnectionError):
    """The tracking server gave no answer; the message names its URI."""


def check_reachable(uri: str, timeout: float = 3.0, attempts: int = 2) -> None:
    """Fail at once, naming `uri`, when an http(s) tracking server does not answer: MLflow's own
    client retries a refused connection for about five minutes, a traceback per retry, and by
    then a command has started Prefect and Ray. SQLite and file URIs need no server."""
    if not uri.startswith(("http://", "https://")):
        return
    for attempt in range(attempts):
        reason = _why_unanswered(f"{uri.rstrip('/')}/health", timeout)
        if reason is None:
            return
        if attempt + 1 < attempts:
            time.sleep(1.0)  # one more chance for a server that is just starting
    raise TrackingServerUnreachable(f"the MLflow tracking server {uri} does not answer ({reason}); start it or point MLFLOW_TRACKING_URI elsewhere")


def _why_unanswered(url: str, timeout: float) -> str | None:
    """Why `url` got no answer from a server, or None when one answered. Any HTTP status is an
    answer (a 401 or 404 says a server is there, and MLflow reports those at once) except 5xx,
    which MLflow retries as it does a refused connection."""
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}" if error.code >= 500 else None
    except urllib.error.URLError as error:
        if isinstance(error.reason, ssl.SSLError):
            return None  # TLS answered; MLflow applies its own certificate settings (MLFLOW_TRACKING_INSECURE_TLS ...)
        return _plainly(error.reason)
    except (OSError, http.client.HTTPException) as error:  # a timeout or a reset while reading the answer
        return _plainly(error)
    return None


def _plainly(reason: object) -> str:
    """"Connection refused", not "[Errno 111] Connection refused"."""
    return getattr(reason, "strerror", None) or str(reason) or type(reason).__name__


def ensure_experiment(mlflow: MlflowClient, name: str = TRAINING_EXPERIMENT, home: str | Path | None = None) -> str:
    """The experiment's id, created on first use. With a local SQLite backend its artifacts go
    beside the database (MLflow's own default is ./mlruns under whatever directory it runs in);
    a tracking server keeps its own artifact root."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if mlflow.tracking_uri.startswith("sqlite:"):
        location = (mvg_home(home) / "mlartifacts").resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


@dataclass(frozen=True)
class TrackedRun:
    tracking_uri: str
    run_id: str
    name: str
    resumed: bool  # the run existed before: this launch continues it

    @property
    def link(self) -> str:
        run = client(self.tracking_uri).get_run(self.run_id)
        base = self.tracking_uri if self.tracking_uri.startswith("http") else "http://127.0.0.1:5000"
        return f"{base.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{self.run_id}"


def open_run(name: str, params: Mapping[str, object] = {}, experiment: str = TRAINING_EXPERIMENT, uri: str | None = None) -> TrackedRun:
    """The run called `name`, created if new. Continuing a run with different parameters is
    refused (MLflow keeps one value per parameter), naming the first difference."""
    uri = uri or tracking_uri()
    mlflow = client(uri)
    experiment_id = ensure_experiment(mlflow, experiment)
    escaped = name.replace("'", "\\'")
    found = mlflow.search_runs([experiment_id], f"attributes.run_name = '{escaped}'", max_results=1)
    if not found:
        run = mlflow.create_run(experiment_id, run_name=name)
        return TrackedRun(uri, run.info.run_id, name, resumed=False)
    run = found[0]
    for key, value in flatten(params).items():
        if key in run.data.params and run.data.params[key] != value:
            raise ValueError(
                f"run {name!r} was started with {key}={run.data.params[key]}, not {value}: "
                "resume it with the same settings, or choose another run name"
            )
    if run.info.status != "RUNNING":
        mlflow.update_run(run.info.run_id, status="RUNNING")
    return TrackedRun(uri, run.info.run_id, name, resumed=True)


def flatten(values: Mapping[str, object], prefix: str = "") -> dict[str, str]:
    """{"model": {"depth": 4}} -> {"model.depth": "4"}: MLflow params are flat strings."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def git_commit(directory: str | Path | None = None) -> str:
    """The commit the code ran from (with `-dirty` for uncommitted changes), or 'unknown'."""
    directory = Path(directory or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=directory, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def store_versions(stores: Sequence[str | Path]) -> dict[str, str]:
    """`store.<dataset>` -> the dataset's catalog version, for every dataset in the stores."""
    versions = {}
    for root in stores:
        store = ZarrStore(root)
        for name in store.datasets():
            versions[f"store.{name}"] = store.dataset(name).catalog.version()
    return versions


class RunLogger:
    """What rank 0 writes into the flow's run, through the client API (no global active run,
    so nothing here depends on which process or thread created the run)."""

    def __init__(self, uri: str, run_id: str):
        self.mlflow, self.run_id = client(uri), run_id

    def log_setup(self, params: Mapping[str, object], tags: Mapping[str, str]) -> None:
        existing = self.mlflow.get_run(self.run_id).data.params
        new = [Param(k, v) for k, v in flatten(params).items() if k not in existing]
        for start in range(0, len(new), MAX_BATCH):
            self.mlflow.log_batch(self.run_id, params=new[start : start + MAX_BATCH])
        self.mlflow.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, row: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in row.items() if k != "step"]
        self.mlflow.log_batch(self.run_id, metrics=metrics)

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        self.mlflow.log_image(self.run_id, image, key=key, step=step)


def registered_version(uri: str, name: str, run_id: str, step: int) -> str | None:
    """The version of model `name` that run `run_id` registered at training step `step`, if any."""
    for version in client(uri).search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        if version.tags.get("step") == str(step):
            return str(version.version)
    return None


# ---------------------------------------------------------------------------- registry versions

EVAL_TAG = "eval."  # version tags eval.<dataset>.<metric>: what the evaluate flow measured
BASELINE_TAG = "baseline."  # version tags baseline.<dataset>.<metric>: the task's baseline in that evaluation


def resolve_version(uri: str, model_uri: str) -> tuple[str, str] | None:
    """(name, version) of a registry URI (`models:/mvg@candidate`, `models:/mvg/3`); None for
    anything else (a folder, a run's artifact), which is evaluated but never promoted."""
    if not model_uri.startswith("models:/"):
        return None
    name, _, rest = model_uri[len("models:/") :].partition("/")
    if "@" in name:
        name, alias = name.split("@", 1)
        try:
            return name, str(client(uri).get_model_version_by_alias(name, alias).version)
        except Exception as error:  # noqa: BLE001 - MLflow's own error for a missing model, alias or server
            raise ValueError(f"model {model_uri} does not resolve: {error} (tracking {uri})") from error
    return name, rest


def logged_model_id(uri: str, name: str, version: str) -> str | None:
    """The MLflow 3 logged model behind a registry version: its `model_id`, or, where the registry
    leaves that empty (SQLite), the id in its source URI `models:/m-...`."""
    found = client(uri).get_model_version(name, version)
    if found.model_id:
        return found.model_id
    source = found.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def alias_version(uri: str, name: str, alias: str) -> str | None:
    try:
        return str(client(uri).get_model_version_by_alias(name, alias).version)
    except Exception:  # noqa: BLE001 - MLflow raises its own error type for a missing alias or model
        return None


def record_evaluation(
    uri: str,
    name: str,
    version: str,
    metrics: Mapping[str, Mapping[str, float]],
    run_id: str,
    baselines: Mapping[str, Mapping[str, float]] | None = None,
) -> None:
    """Tag the version with what was measured: eval.<dataset>.<metric> = value, the baselines of
    the same cases (copy-prompt, identity) as baseline.<dataset>.<metric> = value, and the run."""
    mlflow = client(uri)
    for prefix, scores in ((EVAL_TAG, metrics), (BASELINE_TAG, baselines or {})):
        for dataset, values in scores.items():
            for metric, value in values.items():
                # repr precision: the next promotion compares against exactly this value
                mlflow.set_model_version_tag(name, version, f"{prefix}{dataset}.{metric}", repr(float(value)))
    mlflow.set_model_version_tag(name, version, f"{EVAL_TAG}run_id", run_id)


def _tagged_scores(uri: str, name: str, version: str, prefix: str) -> dict[str, dict[str, float]]:
    found: dict[str, dict[str, float]] = {}
    for key, value in client(uri).get_model_version(name, version).tags.items():
        if key.startswith(prefix):
            dataset, dot, metric = key[len(prefix) :].rpartition(".")
            if dot and dataset:  # eval.run_id names the run, not a score
                found.setdefault(dataset, {})[metric] = float(value)
    return found


def evaluated_metrics(uri: str, name: str, version: str) -> dict[str, dict[str, float]]:
    """dataset -> metric -> value, as the evaluate flow recorded them on the version."""
    return _tagged_scores(uri, name, version, EVAL_TAG)


def baseline_metrics(uri: str, name: str, version: str) -> dict[str, dict[str, float]]:
    """dataset -> metric -> the baseline's value in the version's evaluation; empty for a version
    evaluated before baselines were recorded."""
    return _tagged_scores(uri, name, version, BASELINE_TAG)
