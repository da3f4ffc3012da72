"""The serving boundary: a registered model paints where only what it ships can be imported.

The logged model carries `code/mvg` and declares torch, timm, numpy and safetensors; the storage
layer, the flows, zarr, Prefect and Ray are not part of it. A fresh process blocks those imports
(a finder at the front of `sys.meta_path`, as a serving image without them would fail) and paints
a phantom with a model of each colouring scheme: the per-class painting of a binary-trained model
once pulled in `storage.store` and zarr through the evaluation module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
from mvg.pyfunc import as_model_input, log_mvg_model
from storage.phantoms import phantom_case
from storage.preprocess import intensity_scale


CONFIG = preset("tiny-cpu").with_overrides(model={"depth": 2, "embed_dim": 96, "num_heads": 3})  # 64 px
SCHEMES = ("random", "binary")
NOT_SHIPPED = ("storage", "flows", "zarr", "prefect", "ray", "mlflow.server")

FRESH_PROCESS = """
import importlib.abc, json, sys

NOT_SHIPPED = {not_shipped!r}


class NotShipped(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == top or name.startswith(top + ".") for top in NOT_SHIPPED):
            raise ModuleNotFoundError(f"{{name}} does not ship with the model", name=name)
        return None


sys.meta_path.insert(0, NotShipped())
import numpy as np, torch, mlflow

torch.set_num_threads(2)
for top in NOT_SHIPPED:  # the blocker itself works
    try:
        __import__(top)
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit(f"{{top}} imported despite the blocker")
inputs = dict(np.load("inputs.npz"))
images = dict(np.load("images.npz"))
for version, scheme in enumerate({schemes!r}, start=1):
    model = mlflow.pyfunc.load_model(f"models:/mvg/{{version}}")
    np.save(f"{{scheme}}.npy", model.predict(inputs, params={{"task": "segmentation", "batch_size": 4}}))
    np.save(f"{{scheme}}-denoising.npy", model.predict(images, params={{"task": "denoising", "batch_size": 4}}))
print(json.dumps({{"mvg": sys.modules["mvg"].__file__, "loaded": sorted(sys.modules)}}))
"""


def phantom(index: int) -> tuple[np.ndarray, np.ndarray]:
    """An 80 px abdomen phantom of 8 slices (the model paints at 64 px): the CT windowed to [0, 1]
    as ingest does it, and its seven organ labels, both (z, y, x)."""
    case = phantom_case("segmentation", index=index, size=80, slices=8)
    hounsfield = np.moveaxis(case.channels[0], -1, 0).astype(np.float32)
    image = intensity_scale(hounsfield, "ct").apply(hounsfield).astype(np.float32)
    return image, np.moveaxis(case.label, -1, 0).astype(np.int64)


@pytest.fixture
def tracking(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def test_a_logged_model_of_either_colouring_paints_without_the_pipeline(tracking, tmp_path):
    prompt_volume, prompt_labels = phantom(0)
    queries, _ = phantom(1)
    middle = len(prompt_labels) // 2
    prompt_image, prompt_target = prompt_volume[middle : middle + 1], prompt_labels[middle : middle + 1]
    assert len(np.unique(prompt_target)) > 2, "the prompt slice shows several organs"

    client = mlflow.MlflowClient()
    experiment = client.create_experiment("serving", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment).info.run_id
    expected = {}
    for scheme in SCHEMES:
        torch.manual_seed(0)
        config = CONFIG.with_overrides(objective={"colouring": scheme})
        model = MVG(config).eval()
        assert model.colouring == scheme
        log_mvg_model(model, config, run)  # versions 1 and 2, in the order of SCHEMES
        expected[scheme] = paint(model, prompt_image, prompt_target, queries, "segmentation", batch_size=4)
        expected[f"{scheme}-denoising"] = paint(model, prompt_image, prompt_image, queries, "denoising", batch_size=4)

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    np.savez(fresh / "inputs.npz", **as_model_input(prompt_image, prompt_target, queries))
    np.savez(fresh / "images.npz", **as_model_input(prompt_image, prompt_image, queries))
    script = FRESH_PROCESS.format(not_shipped=NOT_SHIPPED, schemes=SCHEMES)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=fresh, env={**os.environ, "MLFLOW_TRACKING_URI": tracking},
        capture_output=True, text=True, timeout=600, check=False,  # the return code is asserted with stderr
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert os.path.basename(os.path.dirname(os.path.dirname(report["mvg"]))) == "code"  # the model's own copy
    assert not [name for name in report["loaded"] if name.split(".")[0] in NOT_SHIPPED[:-1]]

    for scheme in SCHEMES:
        painted = np.load(fresh / f"{scheme}.npy")
        assert painted.shape == queries.shape and painted.dtype == np.int64
        assert set(np.unique(painted)) <= set(np.unique(prompt_target).tolist())
        np.testing.assert_array_equal(painted, expected[scheme])
        denoised = np.load(fresh / f"{scheme}-denoising.npy")
        np.testing.assert_allclose(denoised, expected[f"{scheme}-denoising"], atol=1e-6)
