"""Integration: `mvg train` submitted as a Ray job to a `ray start --head` on loopback, reading its
store from and checkpointing to an S3 API server, tracking into a real `mlflow server` and the
session's Prefect server; the registered candidate is then loaded by alias in a fresh process and
paints a phantom.

This is how a platform engineer trains on a cluster: Ray gives the job's driver RAY_ADDRESS, so the
`ray.init` in mvg.distributed joins the head instead of starting a Ray of its own, and Ray Train's
workers take the head's CPUs; the job's environment names the bucket (MVG_STORE, MVG_RAY_STORAGE)
and its endpoint and credentials (AWS_*), nothing else."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time

import numpy as np
import pytest
import s3fs
from mlflow import MlflowClient

from mvg.distributed import RAY_ENV
from tests import servers

pytestmark = pytest.mark.slow

RUN_NAME = "ray-job-run"
HEAD_CPUS = 2


def wait_for_job(jobs, submission_id: str, timeout: float) -> str:
    """The job's final status; a job still going at `timeout` is stopped and reported as such."""
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout
    while (status := jobs.get_job_status(submission_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        if time.monotonic() > deadline:
            jobs.stop_job(submission_id)
            return f"still {status} after {timeout:.0f} s (stopped)"
        time.sleep(0.5)
    return status


def train_flow_runs(run_name: str) -> list:
    """The `train` flow runs for this run name on the session's Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as prefect:
        runs = prefect.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["train"])))
    return [run for run in runs if run.parameters.get("run_name") == run_name]


def upload_store(local_store, s3_env: dict, monkeypatch) -> tuple[str, str]:
    """Copy a local store into a new bucket, file for file (a store needs nothing else to move to
    S3); point this process at the server. Returns the store root and a Ray storage path beside it."""
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    s3 = s3fs.S3FileSystem()
    s3.mkdir("mvg-ray-job")
    s3.put(str(local_store), "mvg-ray-job/store", recursive=True)
    return "s3://mvg-ray-job/store", "s3://mvg-ray-job/ray"


@pytest.mark.timeout(600)
def test_mvg_train_as_a_ray_job_on_a_loopback_head_registers_a_loadable_candidate(phantom_store, tmp_path, prefect_server, monkeypatch):
    if servers.ray_cli() is None:
        pytest.skip("the `ray` command line is not installed")
    from prefect.settings import PREFECT_API_URL
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    from storage.store import ZarrStore

    home = tmp_path / "home"
    command = [  # no --store: MVG_STORE names it
        sys.executable, "-m", "flows.cli", "train", "--workers", "1", "--cpus-per-worker", "1",
        "--max-steps", "6", "--run-name", RUN_NAME, "--checkpoint-every", "3", "--log-every", "3", "--sample-every", "0",
        "--set", "model.depth=2", "--set", "model.embed_dim=96", "--set", "model.num_heads=3", "--set", "optim.batch_size=4",
        "--set", "optim.warmup_steps=2",
    ]
    # the head comes up while the MLflow server does; it stops first, then fails the test if any of it is left
    with servers.ray_head(tmp_path / "ray-head.log", num_cpus=HEAD_CPUS, wait=False) as head:
        with servers.mlflow_server(tmp_path) as (uri, artifacts), servers.s3_server(tmp_path) as s3_env:
            store, ray_storage = upload_store(phantom_store, s3_env, monkeypatch)
            head.wait_until_up()
            jobs = JobSubmissionClient(head.dashboard_url, headers=head.headers)
            # no working_dir: the project is installed (editable) in the interpreter the head runs, so the
            # job's driver and Ray's workers import it from there
            submission_id = jobs.submit_job(
                entrypoint=shlex.join(command),
                runtime_env={
                    "env_vars": {
                        "MLFLOW_TRACKING_URI": uri,
                        "MVG_HOME": str(home),
                        "MVG_STORE": store,
                        "MVG_RAY_STORAGE": ray_storage,
                        **s3_env,
                        "PREFECT_API_URL": PREFECT_API_URL.value(),  # the session's test server, not a temporary one
                        # a key mvg's own ray.init also sets: Ray refuses to merge the two if it sets it again
                        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": RAY_ENV["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"],
                    }
                },
            )
            status = wait_for_job(jobs, submission_id, timeout=420)
            logs = jobs.get_job_logs(submission_id)
            assert status == JobStatus.SUCCEEDED, f"job {submission_id}: {status}\n{logs[-6000:]}"
            job = jobs.get_job_info(submission_id)

            # the driver joined this head at the RAY_ADDRESS the job gave it ...
            assert f"Connecting to existing Ray cluster at address: {head.gcs_address}" in logs, logs[-3000:]
            assert "Started a local Ray instance" not in logs
            # ... and Ray Train's worker ran for this job on the head, on one of its two CPUs
            state = StateApiClient(head.dashboard_url, headers=head.headers)
            [node] = state.list(StateResource.NODES, ListApiOptions(detail=True), raise_on_missing_output=False)
            assert (node.node_ip, node.resources_total["CPU"]) == ("127.0.0.1", HEAD_CPUS)
            assert job.driver_node_id == node.node_id
            workers = state.list(
                StateResource.ACTORS, ListApiOptions(filters=[("class_name", "=", "RayTrainWorker")], detail=True),
                raise_on_missing_output=False,
            )
            assert workers and {(w.job_id, w.node_id) for w in workers} == {(job.job_id, node.node_id)}, workers
            for worker in workers:  # its CPU came from the trainer's placement group on the head
                assert {v for k, v in worker.required_resources.items() if k.startswith("CPU_group_")} == {1.0}, worker

            assert "registered mvg version 1: models:/mvg/1" in logs, logs[-3000:]
            assert "Reporting training result" not in logs and "Checkpoint successfully created" not in logs, "Ray Train's per-report chatter is quiet"
            assert not (home / "mlflow.db").exists(), "tracking went to the server, not the local default"
            assert list(artifacts.rglob("model.safetensors")), "the model's weights were uploaded through the server"
            checkpoints = s3fs.S3FileSystem().find(ray_storage.removeprefix("s3://"))
            assert [f for f in checkpoints if f.endswith("checkpoint.pt") and f"/{RUN_NAME}/checkpoint_" in f], checkpoints
            assert not (home / "ray").exists() and not (home / "store").exists(), "the bucket, not the job's MVG_HOME"
            run = MlflowClient(uri).get_run(MlflowClient(uri).get_model_version("mvg", "1").run_id)
            assert run.data.tags["store.phantom-segmentation"] == ZarrStore(store).dataset("phantom-segmentation").catalog.version()
            flow_runs = train_flow_runs(RUN_NAME)
            assert [run.state.type.value for run in flow_runs] == ["COMPLETED"], "the flow ran on the session's Prefect server"

            dataset = ZarrStore(phantom_store).dataset("phantom-segmentation")
            prompt, query = (dataset.read_volume(case) for case in dataset.cases()[:2])
            middle = prompt.image.shape[0] // 2
            inputs = tmp_path / "inputs.npz"
            np.savez(inputs, prompt_image=prompt.image[middle].astype(np.float32),
                     prompt_target=prompt.target[middle].astype(np.float32), queries=query.image[:4].astype(np.float32))
            painted = subprocess.run(
                [sys.executable, "-c", servers.LOAD_AND_PAINT, str(inputs), str(tmp_path / "painted.npy")],
                env={**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"},
                capture_output=True, text=True, timeout=300,
            )
            assert painted.returncode == 0, painted.stderr[-3000:]

    labels = np.load(tmp_path / "painted.npy")
    assert labels.shape == query.image[:4].shape and labels.dtype == np.int64
    assert set(np.unique(labels)) <= {0, *np.unique(prompt.target[middle]).tolist()}
