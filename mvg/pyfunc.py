"""The logged MLflow model: explicit weights on disk, a pyfunc wrapper, logging and registration.

Format of a logged `mvg` model (what a fresh environment needs to paint with it):

- `artifacts/weights/config.json`: `MVGConfig.to_dict()`, readable by a person;
- `artifacts/weights/model.safetensors`: the state dict; safetensors loads without unpickling
  anything and any framework reads it;
- `code/mvg/`: this package, so `mvg.pyfunc` and `mvg.model` import where mvg is not installed.
  Serving imports this module, `mvg.inference` (all painting) and the model's own modules, none of
  which imports `storage`, `flows`, zarr, Prefect or Ray: those do not ship with the model
  (tests/test_serving.py loads a logged model where they cannot be imported);
- `mvg_model.py`: three lines that build `MVGPythonModel()` (MLflow's models-from-code), so the
  logged model holds no pickle at all;
- explicit pip requirements and a tensor signature with `task` and `batch_size` params.

We log through `mlflow.pyfunc` rather than `mlflow.pytorch.log_model`, which exports with
torch.export by default and infers requirements slowly and without timm.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import safetensors.torch
import torch
from mlflow.models import Model, ModelSignature
from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

from mvg.config import MVGConfig
from mvg.inference import paint
from mvg.model import MVG
from mvg.names import CANDIDATE, REGISTERED_MODEL, version_uri

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
INPUTS = ("prompt_images", "prompt_targets", "query_images")
DEFAULT_TASK, DEFAULT_BATCH_SIZE = "segmentation", 16
REQUIREMENTS = ("torch", "timm", "numpy", "safetensors")  # what mvg.model, mvg.inference and this file import
MODEL_CODE = '''\
"""The MVG pyfunc model, logged as code (MLflow models-from-code) instead of a pickle."""
import mlflow
from mvg.pyfunc import MVGPythonModel

mlflow.models.set_model(MVGPythonModel())
'''


# --------------------------------------------------------------------------------- weights


def save_weights(model: MVG, config: MVGConfig, directory: str | Path) -> Path:
    """Write `config.json` and `model.safetensors` into `directory`; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))
    # safetensors refuses tensors that share storage or are not contiguous: write plain copies
    state = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in model.state_dict().items()}
    safetensors.torch.save_file(state, directory / WEIGHTS_FILE)
    return directory


def load_weights(directory: str | Path, device: str | torch.device = "cpu") -> tuple[MVG, MVGConfig]:
    """The model (eval mode, on `device`) and config that `save_weights` wrote."""
    directory = Path(directory)
    config = MVGConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text()))
    model = MVG(config)
    model.load_state_dict(safetensors.torch.load_file(directory / WEIGHTS_FILE), strict=True)
    return model.to(device).eval(), config


# --------------------------------------------------------------------------------- pyfunc


class MVGPythonModel(mlflow.pyfunc.PythonModel):
    """pyfunc face of `mvg.inference.paint`.

    Input: a dict of float32 arrays {"prompt_images": (k, H, W), "prompt_targets": (k, H, W) (label
    values as floats for segmentation), "query_images": (n, Hq, Wq)}; params {"task", "batch_size"}.
    Output: (n, Hq, Wq), int64 labels for segmentation, float32 in [0, 1] otherwise."""

    # MLflow's type-hint validation knows list[...] inputs, not a dict of tensors, and warns at class
    # creation when `predict` has no hint; the tensor signature validates the input instead (this
    # is the flag MLflow's own ChatModel opts out with)
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        # serving takes the GPU when the machine has one; paint follows the model's device
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, self.config = load_weights(context.artifacts["weights"], device=device)

    def predict(self, context, model_input, params=None) -> np.ndarray:
        # the tensor signature guarantees a dict of float32 (count, height, width) arrays here
        params = params or {}
        return paint(
            self.model,
            *(model_input[name] for name in INPUTS),
            task=str(params.get("task", DEFAULT_TASK)),
            batch_size=int(params.get("batch_size", DEFAULT_BATCH_SIZE)),
        )


def as_model_input(
    prompt_images: np.ndarray, prompt_targets: np.ndarray, query_images: np.ndarray
) -> dict[str, np.ndarray]:
    """The pyfunc input for these arrays. MLflow enforces the tensor signature strictly: it rejects
    float64, integer (label maps included), 2-D arrays and lists rather than casting them."""
    arrays = (prompt_images, prompt_targets, query_images)
    return {name: np.asarray(array, dtype=np.float32) for name, array in zip(INPUTS, arrays)}


def signature() -> ModelSignature:
    """Three float32 (count, height, width) tensors of any size, and the task and batch size as
    params. No output schema: its dtype depends on the task (int64 labels or float32 images)."""
    inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1), name) for name in INPUTS])
    params = ParamSchema(
        [ParamSpec("task", "string", DEFAULT_TASK), ParamSpec("batch_size", "long", DEFAULT_BATCH_SIZE)]
    )
    return ModelSignature(inputs=inputs, params=params)


def input_example(size: int = 32) -> dict[str, np.ndarray]:
    """One prompt pair and one query, all `size` px: `paint` resizes any size to the model, and a
    small example keeps the JSON copies MLflow stores small whatever the model's image size."""
    ramp = np.linspace(0, 1, size * size, dtype=np.float32).reshape(1, size, size)
    target = np.zeros((1, size, size), dtype=np.float32)
    target[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1  # foreground, or segmentation refuses it
    return {"prompt_images": ramp, "prompt_targets": target, "query_images": ramp.copy()}


def pip_requirements() -> list[str]:
    """`package>=major.minor` of the installed versions: loose enough to resolve anywhere recent."""
    return [f"{package}>={_major_minor(metadata.version(package))}" for package in REQUIREMENTS]


def _major_minor(installed: str) -> str:
    """2.15.0+cu132 -> 2.15: the patch level would be needlessly strict, a local tag pins one wheel index."""
    return ".".join(installed.split("+")[0].split(".")[:2])


# --------------------------------------------------------------------------------- log + register


@dataclass(frozen=True)
class ModelVersionInfo:
    name: str  # registered model name
    version: str
    model_uri: str  # models:/<name>/<version>
    run_id: str


def log_mvg_model(
    model: MVG,
    config: MVGConfig,
    run_id: str,
    registered_name: str = REGISTERED_MODEL,
    alias: str | None = CANDIDATE,
    name: str = "model",
    uri: str | None = None,
    step: int = 0,
) -> ModelVersionInfo:
    """Log `model` into the existing run `run_id`, register it as a new version of
    `registered_name` tagged with the training `step`, and point `alias` at that version (aliases,
    never stages). `uri`: the tracking server (default: MLflow's current one).

    The run is neither activated nor ended: `mlflow.start_run(run_id=...)` would mark it RUNNING and
    `end_run` FINISHED, changing the state of a run the flow (or the training loop) owns. Instead
    the logged model is created in the run's experiment with the run as its source, and
    `Model.log(run_id=...)` fills it in and records it as the run's output."""
    with using_tracking_uri(uri), tempfile.TemporaryDirectory(prefix="mvg-model-") as scratch:
        client = mlflow.MlflowClient()
        experiment = client.get_run(run_id).info.experiment_id
        logged = mlflow.initialize_logged_model(name=name, source_run_id=run_id, experiment_id=experiment)
        model_code = Path(scratch) / "mvg_model.py"
        model_code.write_text(MODEL_CODE)
        info = Model.log(
            artifact_path=None,  # deprecated in MLflow 3, still positional: `name` replaces it
            name=name,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=logged.model_id,
            step=step,
            tags={"step": str(step)},  # on the logged model and the registered version
            registered_model_name=registered_name,
            python_model=str(model_code),
            artifacts={"weights": str(save_weights(model, config, Path(scratch) / "weights"))},
            code_paths=[str(Path(__file__).resolve().parent)],  # the mvg package
            pip_requirements=pip_requirements(),
            signature=signature(),
            input_example=input_example(),
        )
        version = str(info.registered_model_version)
        if alias is not None:
            client.set_registered_model_alias(registered_name, alias, version)
    return ModelVersionInfo(registered_name, version, version_uri(version, registered_name), run_id)


@contextlib.contextmanager
def using_tracking_uri(uri: str | None):
    """Point MLflow's global tracking URI at `uri` for the call (Model.log and the registry read
    only the global), then put back the URI in effect before and the MLFLOW_TRACKING_URI variable,
    which `set_tracking_uri` also writes."""
    if uri is None or uri == mlflow.get_tracking_uri():
        yield
        return
    previous, variable = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if variable is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = variable


def load_predictor(model_uri: str) -> mlflow.pyfunc.PyFuncModel:
    """The pyfunc model at `model_uri` (`models:/mvg@champion`, `models:/mvg/3`, ...); call
    `.predict({"prompt_images": ..., "prompt_targets": ..., "query_images": ...}, params={"task": ...})`."""
    return mlflow.pyfunc.load_model(model_uri)
