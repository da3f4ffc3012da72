"""Shared fixtures: temporary Prefect home, one Prefect test server, one Dask cluster, tiny datasets."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

# Prefect reads its settings at import: point it at a private, throw-away home before anything imports it.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="mvg-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Torch's threads in each test process: the machine's cores shared among pytest-xdist's workers
# (`make test` runs two). Two workers of two threads each on two cores spin-wait for each other:
# a training step of the tiny model took 1.49 s in each against 0.60 s at one thread each.
TORCH_THREADS = max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
torch.set_num_threads(TORCH_THREADS)

# Ray lowers its workers to nice 15 so that a driver stays responsive. Under xdist the other
# worker's tests run at nice 0 and starved them: a two-worker TorchTrainer fit with nothing to
# train took 146 s beside a busy process, and 28.5 s with Ray's workers at nice 0 (processes the
# tests start, `ray start` included, inherit this).
os.environ.setdefault("RAY_worker_niceness", "0")

# Scanners write LPS-like affines: negative x and y, anisotropic, with an origin.
LPS_AFFINE = np.array(
    [[-0.8, 0.0, 0.0, 120.0], [0.0, -0.8, 0.0, 100.0], [0.0, 0.0, 2.5, -40.0], [0.0, 0.0, 0.0, 1.0]]
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def dask_cluster():
    from storage.ingest import dask_client

    # MVG_TEST_DASK_WORKERS=1 leaves a core free on a shared machine
    with dask_client(workers=int(os.environ.get("MVG_TEST_DASK_WORKERS", "2"))) as client:
        yield client


@pytest.fixture(scope="session")
def phantom_store(tmp_path_factory, dask_cluster) -> Path:
    """A small store of segmentation and synthesis phantoms (4 cases of 12 slices each, 80 px)."""
    from storage.ingest import IngestOptions, ingest
    from storage.layouts import plan_dataset
    from storage.phantoms import write_phantoms

    root = tmp_path_factory.mktemp("phantom-store")
    for task in ("segmentation", "synthesis"):
        source = write_phantoms(task, root / f"phantom-{task}", cases=4, seed=0, size=64, slices=12)
        ingest(plan_dataset(source), root / "store", dask_cluster, IngestOptions(size=80))
    return root / "store"


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """Two versions of `mvg` (the same small untrained weights) in a private SQLite registry
    under a fresh MVG_HOME; yields the MLflow client."""
    import torch

    from mvg.config import preset
    from mvg.model import MVG
    from mvg.pyfunc import log_mvg_model
    from mvg.tracking import client, ensure_experiment, tracking_uri

    monkeypatch.setenv("MVG_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = preset("tiny-cpu").with_overrides(model={"depth": 2, "embed_dim": 96, "num_heads": 3})
    mlflow = client()
    experiment = ensure_experiment(mlflow)
    torch.manual_seed(0)
    model = MVG(config)
    for _ in range(2):
        run = mlflow.create_run(experiment)
        log_mvg_model(model, config, run.info.run_id, uri=tracking_uri())
    return mlflow


def ct_case(seed: int, shape=(48, 40, 12)) -> tuple[np.ndarray, np.ndarray]:
    """A small CT-like volume in HU with two labelled blobs whose position depends on the seed."""
    rng = np.random.default_rng(seed)
    image = rng.normal(40, 20, shape).astype(np.int16)
    image[:4] = -1000  # air at one side, so the CT window clips something
    labels = np.zeros(shape, np.uint8)
    x, y = 8 + seed % 10, 6 + (seed * 3) % 12
    labels[x : x + 12, y : y + 10, 2:8] = 1
    labels[30:40, 20:30, 4:10] = 2
    image[labels == 1] = 150
    image[labels == 2] = 60
    return image, labels


def write_nnunet(root: Path, cases: dict[str, tuple[np.ndarray, np.ndarray | None]], labels=None, affine=LPS_AFFINE) -> Path:
    """Write an nnU-Net v2 raw dataset with one CT channel."""
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    for case, (image, label) in cases.items():
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"{case}_0000.nii.gz")
        if label is not None:
            nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"{case}.nii.gz")
    description = {
        "channel_names": {"0": "CT"},
        "labels": labels or {"background": 0, "organ": 1, "vessel": 2},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(description))
    return root


@pytest.fixture
def small_ct_dataset(tmp_path) -> Path:
    return write_nnunet(tmp_path / "Dataset010_SmallCT", {f"ct_{i:02d}": ct_case(i) for i in range(5)})
