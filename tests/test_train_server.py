"""Integration: `mvg train` against a real `mlflow server` on loopback, then the registered candidate
loaded by alias in a fresh process, which paints a phantom."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from flows.cli import parse_overrides
from tests import servers

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on loopback, stopped with its workers when the test ends."""
    with servers.mlflow_server(tmp_path) as (uri, artifacts):
        yield uri, artifacts


def test_mvg_train_against_an_mlflow_server_registers_a_loadable_candidate(phantom_store, tmp_path, mlflow_server, prefect_server):
    from prefect.settings import PREFECT_API_URL

    from storage.store import ZarrStore

    uri, artifacts = mlflow_server
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "MVG_HOME": str(tmp_path / "home"),
        "PREFECT_API_URL": PREFECT_API_URL.value(),  # the session's test server, not a temporary one
        "RAY_ADDRESS": "",  # a local Ray, whatever the environment says
    }
    command = [
        sys.executable, "-m", "flows.cli", "train", "--store", str(phantom_store), "--workers", "1", "--cpus-per-worker", "2",
        "--max-steps", "10", "--run-name", "server-run", "--checkpoint-every", "5", "--log-every", "5",
        "--set", "model.depth=2", "--set", "model.embed_dim=96", "--set", "model.num_heads=3", "--set", "optim.batch_size=4",
        "--set", "optim.warmup_steps=2",
    ]
    trained = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert "registered mvg version 1: models:/mvg/1" in trained.stdout
    assert not (tmp_path / "home" / "mlflow.db").exists(), "tracking went to the server, not the local default"
    assert list(artifacts.rglob("model.safetensors")), "the model's weights were uploaded through the server"
    from mlflow import MlflowClient

    card = MlflowClient(uri, uri).get_model_version("mvg", "1").description  # the version's model card
    assert "Preset: `tiny-cpu`; overrides: `model.depth=2`, `model.embed_dim=96`" in card and "`optim.steps=10`" in card
    assert "`phantom-segmentation` (" in card and "10 steps, 40 episodes, wall time" in card
    assert "Not evaluated yet" in card and "mvg predict --model models:/mvg/1" in card

    dataset = ZarrStore(phantom_store).dataset("phantom-segmentation")
    prompt, query = (dataset.read_volume(case) for case in dataset.cases()[:2])
    middle = prompt.image.shape[0] // 2
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, prompt_image=prompt.image[middle].astype(np.float32), prompt_target=prompt.target[middle].astype(np.float32),
             queries=query.image[:4].astype(np.float32))
    painted = subprocess.run(
        [sys.executable, "-c", servers.LOAD_AND_PAINT, str(inputs), str(tmp_path / "painted.npy")],
        env={**env, "MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True, timeout=300,
    )
    assert painted.returncode == 0, painted.stderr[-3000:]
    labels = np.load(tmp_path / "painted.npy")
    assert labels.shape == query.image[:4].shape and labels.dtype == np.int64
    assert set(np.unique(labels)) <= {0, *np.unique(prompt.target[middle]).tolist()}


def test_config_overrides_parse_values_and_refuse_malformed_ones():
    assert parse_overrides(["optim.lr=3e-4", "model.depth=6", "data.same_case_prompt=true", "objective.colouring=binary"], 50) == {
        "optim": {"lr": 3e-4, "steps": 50},
        "model": {"depth": 6},
        "data": {"same_case_prompt": True},
        "objective": {"colouring": "binary"},
    }
    for malformed in ("optim.lr", "lr=3", "optim.=3"):
        with pytest.raises(ValueError, match="SECTION.KEY=VALUE"):
            parse_overrides([malformed])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--set", "optim.nope=3"], "nope"),
        (["--set", "modle.depth=3"], "modle"),
        (["--preset", "huge"], "no preset 'huge'"),
    ],
)
def test_mvg_train_refuses_bad_settings_before_starting_anything(arguments, message, capsys):
    from flows.cli import main

    assert main(["train", *arguments]) == 2
    assert message in capsys.readouterr().err
