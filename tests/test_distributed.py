"""Training on Ray Train with two CPU workers (DDP over gloo): it learns, logs into the flow's MLflow
run, registers the model, survives a failing worker and a killed driver, and resumes a stopped run
where it stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from mvg.config import preset
from mvg.distributed import RAY_ENV, Scaling, TrainJob, fit
from mvg.train import load_trained
from tests import servers

pytestmark = pytest.mark.slow

CONFIG = preset("tiny-cpu").with_overrides(
    model={"depth": 2, "embed_dim": 96, "num_heads": 3}, optim={"batch_size": 4, "warmup_steps": 5, "steps": 20}
)


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the module: starting Ray costs ~10 s, a trainer run a few more."""
    import ray

    ray.init(num_cpus=2, runtime_env={"env_vars": RAY_ENV})
    yield
    ray.shutdown()


def steps_log(tmp_path: Path, fail_at: int | None = None):
    """An `on_step` hook writing "rank step" lines to a file (the hook runs in the Ray workers),
    raising once on rank 1 at step `fail_at`."""
    log, marker = tmp_path / "steps.log", tmp_path / "failed-once"

    def on_step(step: int, rank: int) -> None:
        with open(log, "a") as file:
            file.write(f"{rank} {step}\n")
        if step == fail_at and rank == 1 and not marker.exists():
            marker.touch()
            raise RuntimeError(f"injected failure at step {step}")

    def rank_zero_steps() -> list[int]:
        return [int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("0 ")]

    return on_step, rank_zero_steps


def job(store: Path, tmp_path: Path, name: str, **kwargs) -> TrainJob:
    return TrainJob(CONFIG, (str(store),), name, str(tmp_path / "ray"), Scaling(workers=2), checkpoint_every=5, log_every=5, **kwargs)


@pytest.fixture(scope="module")
def reference(ray_cluster, phantom_store, tmp_path_factory):
    """The same job without interruption: what a failed-then-restarted or resumed run must equal."""
    outcome = fit(job(phantom_store, tmp_path_factory.mktemp("reference"), "reference"))
    assert outcome.step == CONFIG.optim.steps
    return load_trained(outcome.checkpoint)[0].state_dict()


def assert_same_weights(checkpoint: Path, reference: dict) -> None:
    trained = load_trained(checkpoint)[0].state_dict()
    for name, tensor in reference.items():
        assert torch.equal(trained[name], tensor), name


def test_a_failing_worker_is_restarted_from_the_last_checkpoint(ray_cluster, phantom_store, tmp_path, reference):
    on_step, rank_zero_steps = steps_log(tmp_path, fail_at=8)
    outcome = fit(job(phantom_store, tmp_path, "flaky", max_failures=2), on_step=on_step)
    assert (tmp_path / "failed-once").exists(), "the failure was injected"
    steps = rank_zero_steps()
    restart = next(i for i in range(1, len(steps)) if steps[i] <= steps[i - 1])
    assert steps[restart] == 6, f"training went on from the step-5 checkpoint, not from zero: {steps}"
    assert outcome.step == CONFIG.optim.steps and steps[-1] == CONFIG.optim.steps
    assert_same_weights(outcome.checkpoint, reference)  # every rank's random streams were restored


def test_running_the_same_name_again_resumes_a_stopped_run(ray_cluster, phantom_store, tmp_path, reference):
    on_step, rank_zero_steps = steps_log(tmp_path)
    stopped = fit(job(phantom_store, tmp_path, "resumable", stop_at=10), on_step=on_step)
    assert stopped.step == 10
    resumed = fit(job(phantom_store, tmp_path, "resumable"), on_step=on_step)
    assert rank_zero_steps() == list(range(1, 21)), "the second launch started at step 11"
    assert resumed.step == 20
    assert_same_weights(resumed.checkpoint, reference)
    kept = sorted(p for p in (tmp_path / "ray" / "resumable").glob("checkpoint_*") if p.is_dir())
    assert len(kept) == 2, f"CheckpointConfig(num_to_keep=2) keeps two: {kept}"


def test_train_flow_logs_into_mlflow_and_registers_the_candidate(ray_cluster, phantom_store, tmp_path, monkeypatch, prefect_server):
    from prefect.client.orchestration import get_client

    from flows.train import train_flow
    from mvg.tracking import client, tracking_uri
    from storage.store import ZarrStore

    monkeypatch.setenv("MVG_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    summary = train_flow(
        overrides={"model": {"depth": 2, "embed_dim": 96, "num_heads": 3}, "optim": {"steps": 40, "batch_size": 8, "warmup_steps": 5}},
        store=str(phantom_store), workers=2, run_name="flow-run", checkpoint_every=20, log_every=5, sample_every=20,
    )
    assert tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}" and (tmp_path / "mlflow.db").exists()
    mlflow = client()
    run = mlflow.get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "flow-run"
    params, tags = run.data.params, run.data.tags
    assert params["model.embed_dim"] == "96" and params["optim.steps"] == "40" and params["scaling.workers"] == "2"
    assert params["global_batch"] == "16" and params["data.crop"] == "64"
    assert tags["git_commit"] and tags["ray.run_name"] == "flow-run"
    store = ZarrStore(phantom_store)
    assert tags["store.phantom-segmentation"] == store.dataset("phantom-segmentation").catalog.version()
    losses = [m.value for m in sorted(mlflow.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)]
    # the first two logs against the last two: one log of small batches is noisy (the slot
    # likelihood of tiny-cpu's segmentation episodes swings with the colours drawn); at 4 episodes
    # per worker the tiny-cpu with voids at -1 and task conditioning logged a flat 0.26..0.39
    assert len(losses) == 8 and sum(losses[-2:]) < 0.8 * sum(losses[:2]), " ".join(f"{value:.3f}" for value in losses)
    for metric in ("lr", "episodes_per_s", "loss_segmentation", "loss_synthesis"):
        assert mlflow.get_metric_history(run.info.run_id, metric), metric
    images = [a.path for a in mlflow.list_artifacts(run.info.run_id, "images")]
    assert len(images) >= 2, f"sample montages at steps 20 and 40: {images}"

    version = mlflow.get_model_version_by_alias("mvg", "candidate")
    assert version.run_id == run.info.run_id and str(version.version) == str(summary["model_version"])
    assert version.tags["step"] == "40"

    async def markdown() -> str:
        async with get_client() as prefect:
            artifact = await prefect.read_latest_artifacts()
            return next(a.data for a in artifact if a.key == "train-summary")

    import asyncio

    text = asyncio.run(markdown())
    assert "flow-run" in text and f"version **{version.version}**" in text and "loss_segmentation" in text

    # running the finished run again trains nothing more and registers nothing new
    again = train_flow(
        overrides={"model": {"depth": 2, "embed_dim": 96, "num_heads": 3}, "optim": {"steps": 40, "batch_size": 8, "warmup_steps": 5}},
        store=str(phantom_store), workers=2, run_name="flow-run", checkpoint_every=20, log_every=5, sample_every=20,
    )
    assert again["model_version"] == summary["model_version"] and again["model_reused"]
    assert json.dumps(again["metrics"])  # plain values, fit for a Prefect result
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def test_the_runtime_env_leaves_out_what_a_ray_job_already_sets(monkeypatch):
    from mvg.distributed import runtime_env_vars

    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    assert runtime_env_vars()["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == RAY_ENV["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")  # as a job's env_vars arrive in its driver
    assert "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S" not in runtime_env_vars()


def newest_checkpoint(run: Path) -> tuple[int, Path | None]:
    """(step, folder) of the newest complete checkpoint Ray kept for a run; (0, None) before any."""
    found = [(step, folder) for folder in run.glob("checkpoint_*") if (step := checkpoint_step(folder))]
    return max(found, key=lambda pair: pair[0], default=(0, None))


def checkpoint_step(folder: Path) -> int:
    """The step of the checkpoint in `folder`; 0 while Ray is still writing it (or a kill cut it short)."""
    from mvg.train import load_checkpoint

    try:
        state = load_checkpoint(folder)
    except (RuntimeError, EOFError, OSError):
        return 0
    return state["step"] if state else 0


def test_a_driver_killed_with_its_process_group_resumes_bit_for_bit(phantom_store, tmp_path, reference, prefect_server):
    """kill -9 of `mvg train` and its process group mid-run; the same command again goes on from
    the newest checkpoint and ends with the weights of the run that was never stopped."""
    from prefect.settings import PREFECT_API_URL

    from mvg.names import TRAINING_EXPERIMENT
    from mvg.tracking import client

    home, run = tmp_path / "home", tmp_path / "ray" / "killed"
    # the session's Prefect server (starting one per launch costs time, and it is not what is killed here)
    env = {**os.environ, "MVG_HOME": str(home), "RAY_ADDRESS": "", "PREFECT_API_URL": PREFECT_API_URL.value()}
    env.pop("MLFLOW_TRACKING_URI", None)  # SQLite under MVG_HOME
    model, optim = CONFIG.model, CONFIG.optim
    command = [  # the job of `reference`, checkpointed every 2 steps so that most of it is left when the kill lands
        sys.executable, "-m", "flows.cli", "train", "--store", str(phantom_store), "--ray-storage", str(tmp_path / "ray"),
        "--run-name", "killed", "--workers", "2", "--cpus-per-worker", "1", "--max-steps", str(optim.steps),
        "--checkpoint-every", "2", "--log-every", "1", "--sample-every", "0",
        "--set", f"model.depth={model.depth}", "--set", f"model.embed_dim={model.embed_dim}", "--set", f"model.num_heads={model.num_heads}",
        "--set", f"optim.batch_size={optim.batch_size}", "--set", f"optim.warmup_steps={optim.warmup_steps}",
    ]
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 600
        while newest_checkpoint(run)[0] == 0:
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.05)
        started = psutil.Process(first.pid).children(recursive=True)
        os.killpg(first.pid, signal.SIGKILL)  # the driver and its process group, as `kill -9 -PGID` does
        first.wait()
        # Ray's workers sit in process groups of their own and end with the raylet
        _, survivors = psutil.wait_procs(started, timeout=30)
        assert not servers.still_running(survivors), "outlived the kill:\n" + "\n".join(servers.still_running(survivors))
    finally:
        servers.stop_group(first)
        for leftover in psutil.wait_procs(started, timeout=0)[1]:
            leftover.kill()
    killed_at = newest_checkpoint(run)[0]
    assert 0 < killed_at < optim.steps, f"the kill landed mid-run, not at step {killed_at}"

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "registered mvg version 1" in again.stdout
    step, final = newest_checkpoint(run)
    assert step == optim.steps
    assert_same_weights(final, reference)
    mlflow = client(f"sqlite:///{home / 'mlflow.db'}")
    runs = mlflow.search_runs([mlflow.get_experiment_by_name(TRAINING_EXPERIMENT).experiment_id])
    assert [r.info.run_name for r in runs] == ["killed"], "the same MLflow run went on"
    logged = [metric.step for metric in mlflow.get_metric_history(runs[0].info.run_id, "loss")]
    assert logged.count(1) == 1 and max(logged) == optim.steps, f"the second launch resumed, it did not start over: {logged}"
