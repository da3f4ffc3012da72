"""The logged model: weights round trip, logging into a run, registry alias, and loading it in a
fresh Python process from the registry alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# mlflow starts its telemetry client at import: switch it off first (the fresh process inherits it)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow
import numpy as np
import pytest
import torch

from mvg.config import preset
from mvg.inference import paint
from mvg.model import MVG
from mvg.pyfunc import as_model_input, load_predictor, load_weights, log_mvg_model, save_weights


CONFIG = preset("tiny-cpu").with_overrides(model={"depth": 2, "embed_dim": 96, "num_heads": 3})

# Runs in the fresh process: loads the alias from the registry alone (mvg is not imported first, so
# the package comes from the model's code/ folder) and paints both kinds of task.
FRESH_PROCESS = """
import json, sys
import numpy as np, torch, mlflow
torch.set_num_threads(2)
model = mlflow.pyfunc.load_model("models:/mvg@candidate")
for task in ("segmentation", "synthesis"):
    inputs = dict(np.load(f"{task}-inputs.npz"))
    np.save(f"{task}.npy", model.predict(inputs, params={"task": task, "batch_size": 2}))
print(json.dumps({"mvg": sys.modules["mvg"].__file__}))
"""


@pytest.fixture(scope="module")
def model() -> MVG:
    torch.manual_seed(0)
    return MVG(CONFIG).eval()


@pytest.fixture
def tracking(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # monkeypatch puts the caller's value back
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One 50 x 70 prompt pair with labels 0/3/7 and three 90 x 90 queries."""
    rng = np.random.default_rng(seed)
    target = np.zeros((1, 50, 70), dtype=np.int64)
    target[0, 10:30, 10:40] = 3
    target[0, 32:45, 45:65] = 7
    return rng.random((1, 50, 70), dtype=np.float32), target, rng.random((3, 90, 90), dtype=np.float32)


def test_weights_round_trip_paints_the_same(model, tmp_path):
    directory = save_weights(model, CONFIG, tmp_path / "weights")
    assert sorted(path.name for path in directory.iterdir()) == ["config.json", "model.safetensors"]
    loaded, config = load_weights(directory)
    assert config == CONFIG and not loaded.training
    prompt_images, prompt_targets, queries = arrays()
    for task, targets in (("segmentation", prompt_targets), ("synthesis", prompt_images)):
        np.testing.assert_array_equal(
            paint(loaded, prompt_images, targets, queries, task), paint(model, prompt_images, targets, queries, task)
        )


def test_logged_model_registers_under_the_alias_and_loads_in_a_fresh_process(model, tracking, tmp_path):
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("mvg-test", artifact_location=tmp_path.as_uri() + "/artifacts")
    run = client.create_run(experiment)  # RUNNING, and not active in this process: as a flow leaves it

    first = log_mvg_model(model, CONFIG, run.info.run_id)

    assert (first.name, first.version, first.model_uri) == ("mvg", "1", "models:/mvg/1")
    assert str(client.get_model_version_by_alias("mvg", "candidate").version) == "1"
    after = client.get_run(run.info.run_id)
    assert (after.info.status, after.info.end_time) == ("RUNNING", None) and mlflow.active_run() is None
    assert len(after.outputs.model_outputs) == 1  # the run lists the model it produced
    info = mlflow.models.get_model_info("models:/mvg@candidate")
    assert info.run_id == run.info.run_id
    assert {spec.name: spec.default for spec in info.signature.params} == {"task": "segmentation", "batch_size": 16}
    assert [spec.name for spec in info.signature.inputs.inputs] == ["prompt_images", "prompt_targets", "query_images"]
    requirements = Path(mlflow.pyfunc.get_model_dependencies("models:/mvg@candidate")).read_text()
    assert all(package in requirements for package in ("torch>=", "timm>=", "numpy>=", "safetensors>="))

    # a finished run stays finished, and the alias moves to the new version; an explicit `uri`
    # wins over the global one and leaves it as it was
    client.set_terminated(run.info.run_id)
    finished = client.get_run(run.info.run_id).info
    elsewhere = f"sqlite:///{tmp_path}/elsewhere.db"
    mlflow.set_tracking_uri(elsewhere)
    second = log_mvg_model(model, CONFIG, run.info.run_id, uri=tracking, step=7)
    assert mlflow.get_tracking_uri() == elsewhere and os.environ["MLFLOW_TRACKING_URI"] == elsewhere
    mlflow.set_tracking_uri(tracking)
    assert second.version == "2" and str(client.get_model_version_by_alias("mvg", "candidate").version) == "2"
    assert client.get_model_version("mvg", "2").tags["step"] == "7"
    assert (client.get_run(run.info.run_id).info.status, client.get_run(run.info.run_id).info.end_time) == (
        "FINISHED",
        finished.end_time,
    )

    prompt_images, prompt_targets, queries = arrays()
    targets = {"segmentation": prompt_targets, "synthesis": prompt_targets / 7}  # labels, or an image
    expected = {task: paint(model, prompt_images, target, queries, task) for task, target in targets.items()}
    inputs = {task: as_model_input(prompt_images, target, queries) for task, target in targets.items()}

    # in this process, where mvg is already imported (the installed package serves the model)
    predictor = load_predictor("models:/mvg@candidate")
    segmentation = predictor.predict(inputs["segmentation"], params={"task": "segmentation"})
    np.testing.assert_array_equal(segmentation, expected["segmentation"])

    # in a fresh process, from the registry alone
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for task, task_inputs in inputs.items():
        np.savez(fresh / f"{task}-inputs.npz", **task_inputs)
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS],
        check=False,  # the return code is asserted with stderr as the message
        cwd=fresh,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    imported_from = Path(json.loads(done.stdout.strip().splitlines()[-1])["mvg"])
    assert imported_from.parent.parent.name == "code"  # the model's own copy of the package, not /work/main
    for task in ("segmentation", "synthesis"):
        painted = np.load(fresh / f"{task}.npy")
        assert painted.shape == (3, 90, 90) and painted.dtype == expected[task].dtype
        np.testing.assert_allclose(painted, expected[task], atol=1e-6)
