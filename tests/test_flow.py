"""The Prefect flow and the `mvg` command line, against a Prefect test server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from storage.store import STAGING, ZarrStore, dataset_dir
from tests.conftest import ct_case, write_nnunet


def read_table_artifact(key: str) -> list[dict]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert artifacts, f"no artifact {key}"
    data = artifacts[0].data
    return json.loads(data) if isinstance(data, str) else data


def test_flow_completes_and_publishes_a_table(prefect_server, small_ct_dataset, tmp_path):
    from flows.ingest import ingest_flow

    state = ingest_flow(str(small_ct_dataset), store=str(tmp_path / "store"), size=32, return_state=True)
    assert state.is_completed()
    summary = state.result()
    assert summary["ingested"] == 5 and summary["failed"] == 0
    table = read_table_artifact("ingest-smallct")
    assert sorted(row["case"] for row in table) == [f"ct_{i:02d}" for i in range(5)]
    assert {row["status"] for row in table} == {"ingested"}


def test_flow_fails_with_summary_when_a_case_fails(prefect_server, tmp_path):
    image, labels = ct_case(3)
    root = write_nnunet(tmp_path / "Dataset040_Partly", {"fine": ct_case(1), "broken": (image, None)})
    from flows.ingest import ingest_flow

    state = ingest_flow(str(root), store=str(tmp_path / "store"), size=32, return_state=True)
    assert state.is_failed()
    summary = state.result(raise_on_failure=False)
    assert summary["ingested"] == 1 and summary["failed"] == 1
    rows = {row["case"]: row for row in read_table_artifact("ingest-partly")}
    assert rows["broken"]["status"] == "failed" and "broken.nii.gz" in rows["broken"]["reason"]
    assert ZarrStore(tmp_path / "store").dataset("partly").cases() == ["fine"]


def test_cli_ingest_exit_status_and_store_summary(prefect_server, tmp_path, capsys):
    root = write_nnunet(tmp_path / "Dataset050_Cli", {"a": ct_case(1), "b": ct_case(2), "c": ct_case(3)})
    store = tmp_path / "store"
    assert main(["ingest", str(root), "--store", str(store), "--size", "32"]) == 0
    (root / "labelsTr" / "c.nii.gz").write_bytes(b"")
    (root / "imagesTr" / "c_0000.nii.gz").touch()  # changes nothing but the label: checksum differs
    assert main(["ingest", str(root), "--store", str(store), "--size", "32"]) == 1
    output = capsys.readouterr()
    assert "c.nii.gz: file is empty" in output.out
    assert main(["store", "--store", str(store), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    # the old, complete version of c stays published: a failed re-ingest never destroys good data
    assert summary[0]["dataset"] == "cli" and summary[0]["cases"] == 3


def test_cli_reports_unknown_spec_and_missing_folder(tmp_path, capsys):
    assert main(["ingest", str(tmp_path / "nowhere"), "--store", str(tmp_path / "s")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    write_nnunet(tmp_path / "ds", {"a": ct_case(1)})
    assert main(["ingest", str(tmp_path / "ds"), "--spec", "no-such-spec", "--store", str(tmp_path / "s")]) == 2
    assert "no built-in dataset spec named 'no-such-spec'" in capsys.readouterr().err


def test_cli_lists_the_paper_datasets(capsys):
    assert main(["datasets", "--json"]) == 0
    specs = json.loads(capsys.readouterr().out)
    paper = [s for s in specs.values() if s["paper_cases"]]
    assert len(paper) == 13
    assert {"msd-liver", "msd-spleen", "msd-lung"} <= set(specs)
    assert {s["task"] for s in paper} == {"segmentation", "synthesis", "inpainting", "denoising", "detection"}


@pytest.mark.slow
def test_killed_ingest_finishes_on_rerun_without_duplicates(tmp_path):
    """SIGKILL the whole ingest process group mid-run, then run again: every case lands once, whole."""
    cases = {f"k_{i:02d}": ct_case(i, shape=(160, 160, 48)) for i in range(10)}
    root = write_nnunet(tmp_path / "Dataset060_Killed", cases)
    store = tmp_path / "store"
    command = [sys.executable, "-m", "flows.cli", "ingest", str(root), "--store", str(store), "--size", "256", "--workers", "1"]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    directory = Path(dataset_dir(store, "killed"))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        published = [p for p in directory.glob("k_*") if p.is_dir()] if directory.exists() else []
        if len(published) >= 2:
            break
        time.sleep(0.2)
    assert process.poll() is None, "ingest finished before it could be killed; make the cases bigger"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = {p.name for p in directory.glob("k_*")}
    assert 2 <= len(before) < 10

    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-2000:]
    dataset = ZarrStore(store).dataset("killed")
    assert sorted(dataset.cases()) == sorted(cases)
    assert sorted(p.name for p in directory.iterdir() if p.is_dir()) == sorted(cases)
    assert not any((store / STAGING).rglob("*.*")), "no staging debris left"
    for case in cases:
        volume = dataset.read_volume(case)
        assert volume.image.shape == (48, 256, 256) and np.isfinite(volume.image).all()
        assert set(np.unique(volume.target).tolist()) == {0, 1, 2}
    skipped = result.stdout.count("skipped")
    assert skipped >= len(before), "cases published before the kill are not redone"


def test_cli_phantoms_then_ingest_on_an_existing_dask_scheduler(prefect_server, tmp_path, dask_cluster, capsys):
    out = tmp_path / "phantom-xray"
    assert main(["phantoms", "--task", "xray", "--cases", "3", "--seed", "4", "--size", "64", "--out", str(out)]) == 0
    assert json.loads((out / "dataset.json").read_text())["mvg"]["modality"] == "X-ray"
    address = dask_cluster.scheduler.address
    store = tmp_path / "store"
    assert main(["ingest", str(out), "--store", str(store), "--size", "64", "--dask-address", address]) == 0
    dataset = ZarrStore(store).dataset("phantom-xray")
    assert len(dataset.cases()) == 3
    assert set(np.unique(dataset.read_slice(dataset.cases()[0], 0).target).tolist()) == {0, 1}
    assert main(["phantoms", "--task", "xray", "--cases", "0", "--out", str(tmp_path / "x")]) == 2
    assert "cases" in capsys.readouterr().err


def test_a_case_whose_work_crashes_once_is_retried(prefect_server, small_ct_dataset, tmp_path, monkeypatch):
    """Unexpected errors (a worker dying, a flaky disk) are retried per case by Prefect."""
    import flows.ingest as ingest_module

    real = ingest_module.ingest_case
    attempts = tmp_path / "attempts"  # a file: Dask ships the function by value, closures are copies
    attempts.mkdir()

    def flaky(case, *args):
        log = attempts / case.case
        log.write_text(log.read_text() + "x" if log.exists() else "x")
        if case.case == "ct_02" and log.read_text() == "x":
            raise OSError("disk hiccup")
        return real(case, *args)

    monkeypatch.setattr(ingest_module, "ingest_case", flaky)
    monkeypatch.setattr(ingest_module.ingest_case_task, "retry_delay_seconds", 0)
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:  # threads share `flaky`
        state = ingest_module.ingest_flow(str(small_ct_dataset), store=str(tmp_path / "store"), size=32, dask_address=cluster.scheduler_address, return_state=True)
    assert state.is_completed(), state.message
    assert (attempts / "ct_02").read_text() == "xx" and (attempts / "ct_01").read_text() == "x"
    assert "ct_02" in ZarrStore(tmp_path / "store").dataset("smallct").cases()
