"""Load a trained MVG from wherever a user points: a registered model or a folder on disk.

Accepted, in the order they are tried:

- a local folder (or a file inside it): weights written by `mvg.pyfunc.save_weights`
  (`config.json` + `model.safetensors`), a downloaded MLflow model (`artifacts/weights/`), or a
  training checkpoint (`checkpoint.pt`, from Ray Train or the plain loop);
- an MLflow URI: `models:/mvg@champion`, `models:/mvg/3`, `runs:/<run id>/model`, or any artifact
  URI MLflow downloads. The registry is the one `mvg train` registers into (`MLFLOW_TRACKING_URI`,
  else SQLite under `MVG_HOME`), so a local registry works offline.

Anything that does not resolve becomes a `ValueError` that says which model and why; no MLflow or
torch traceback reaches the user.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

import torch

from mvg.config import MVGConfig
from mvg.model import MVG
from mvg.pyfunc import CONFIG_FILE, WEIGHTS_FILE, load_weights, using_tracking_uri
from mvg.train import CHECKPOINT_FILE, load_trained

MLFLOW_WEIGHTS = Path("artifacts") / "weights"  # where `log_mvg_model` puts the weights inside a logged model
URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")  # models:/, runs:/, s3://, ... (not a bare path)
EXAMPLES = "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model, or a local folder"


@contextlib.contextmanager
def local_model(source: str | Path):
    """A local folder holding the model at `source` for the duration of the block: `source` itself
    when it is a path, else one download (so callers loading it several times fetch it once)."""
    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        yield path
    elif URI_SCHEME.match(text):
        with tempfile.TemporaryDirectory(prefix="mvg-model-") as scratch:
            yield _download(text, scratch)
    else:
        raise ValueError(f"model {text} does not resolve: no such file or folder, and not an MLflow URI ({EXAMPLES})")


def load_model(source: str | Path, device: str | torch.device = "cpu") -> MVG:
    """The MVG (eval mode, on `device`) at `source`: an MLflow model URI or a local folder."""
    return load_model_and_config(source, device)[0]


def load_model_and_config(source: str | Path, device: str | torch.device = "cpu") -> tuple[MVG, MVGConfig]:
    """The MVG at `source` and the full config it was trained with (what fine-tuning goes on with)."""
    with local_model(source) as folder:
        # the weights are read into memory before a download is deleted
        return _load_local(folder, device, str(source))


def _load_local(path: Path, device: str | torch.device, shown: str) -> tuple[MVG, MVGConfig]:
    folder = path.parent if path.is_file() else path  # model.safetensors, checkpoint.pt or MLmodel itself
    candidates = (folder, folder / MLFLOW_WEIGHTS)
    weights = next((d for d in candidates if (d / CONFIG_FILE).is_file() and (d / WEIGHTS_FILE).is_file()), None)
    try:
        if weights is not None:
            return load_weights(weights, device=device)
        if (folder / CHECKPOINT_FILE).is_file():
            model, config, _ = load_trained(folder)
            return model.to(device), config
    except Exception as error:  # a corrupt or foreign file of any kind becomes one clear error
        raise ValueError(f"model {shown} cannot be loaded from {folder}: {type(error).__name__}: {error}") from error
    raise ValueError(
        f"model {shown} does not resolve: {folder} holds no model ({CONFIG_FILE} + {WEIGHTS_FILE}, "
        f"{MLFLOW_WEIGHTS}/ of an MLflow model, or {CHECKPOINT_FILE} of a training run)"
    )


def _download(uri: str, scratch: str) -> Path:
    """Download an MLflow model into `scratch`, from the registry `mvg train` registers into."""
    import mlflow

    from mvg.tracking import tracking_uri

    tracking = tracking_uri()
    database = tracking.removeprefix("sqlite:///") if tracking.startswith("sqlite:///") else None
    if database is not None and not Path(database).exists():
        # MLflow would create an empty database here and then report the model missing
        raise ValueError(
            f"model {uri} does not resolve: there is no MLflow database at {database} "
            "(set MLFLOW_TRACKING_URI, or --home to the data root `mvg train` used)"
        )
    try:
        # the global URI too: MLflow resolves models:/ through its global registry client
        with using_tracking_uri(tracking):
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=uri,
                dst_path=scratch,
                tracking_uri=tracking,
                registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or tracking,
            )
    except Exception as error:  # MLflow raises many kinds (missing alias, no server, bad URI)
        reason = str(getattr(error, "message", None) or error).strip().splitlines()[0]
        raise ValueError(f"model {uri} does not resolve: {reason} (tracking {tracking})") from error
    return Path(local)
