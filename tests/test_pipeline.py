"""The pipeline flow end to end on tiny phantoms: every stage runs, the results table holds the model
beside its baselines, the candidate becomes champion exactly when it beats them, a re-run reuses
what is done, and `mvg demo --fresh` starts over in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from storage.phantoms import phantoms_written, write_phantoms

pytestmark = pytest.mark.slow


@pytest.fixture
def local_ray():
    import ray

    from mvg.distributed import RAY_ENV

    ray.init(num_cpus=2, runtime_env={"env_vars": RAY_ENV})
    yield
    ray.shutdown()


def test_phantoms_written_recognises_only_a_complete_folder_with_the_same_settings(tmp_path):
    out = tmp_path / "phantom-segmentation"
    assert not phantoms_written(out, "segmentation", cases=2, size=32, slices=8)
    write_phantoms("segmentation", out, cases=2, size=32, slices=8)
    assert phantoms_written(out, "segmentation", cases=2, size=32, slices=8)
    assert not phantoms_written(out, "segmentation", cases=3, size=32, slices=8)
    assert not phantoms_written(out, "segmentation", cases=2, size=32, slices=8, seed=1)
    assert not phantoms_written(out, "synthesis", cases=2, size=32, slices=8)
    next(iter((out / "labelsTr").iterdir())).unlink()  # an interrupted write
    assert not phantoms_written(out, "segmentation", cases=2, size=32, slices=8)


@pytest.mark.timeout(900)
def test_pipeline_runs_every_stage_then_reuses_them(tmp_path, monkeypatch, prefect_server, local_ray):
    from flows.pipeline import pipeline_flow
    from flows.promote import FAILED_CASES_TAG
    from mvg.tracking import alias_version, client

    monkeypatch.setenv("MVG_HOME", str(tmp_path / "mvg-home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = dict(cases=3, size=32, slices=8, steps=3, ingest_workers=1)

    first = pipeline_flow(**settings)
    assert set(first["ingested"]) == {"phantom-segmentation", "phantom-synthesis", "phantom-inpainting", "phantom-denoising", "phantom-xray"}
    assert all(counts["ingested"] == 3 and counts["failed"] == 0 for counts in first["ingested"].values())
    assert first["training"]["step"] == 3 and not first["training"]["model_reused"]
    table2, table3 = first["tables"]["table2"], first["tables"]["table3"]
    assert [row["method"] for row in table2] == ["model", "copy-prompt"] and "phantom-xray" in table2[0]
    assert [row["method"] for row in table3] == ["model", "identity"] and "phantom-denoising PSNR" in table3[0]
    # promoted iff the model beats its baseline on every dataset (rule `every`), read from the tags
    uri = first["tracking_uri"]
    tags = client(uri).get_model_version("mvg", "1").tags
    model = {key.removeprefix("eval."): float(value) for key, value in tags.items()
             if key.startswith("eval.") and key not in ("eval.run_id", FAILED_CASES_TAG)}
    assert tags[FAILED_CASES_TAG] == "0", "every phantom test case was scored"
    baselines = {key.removeprefix("baseline."): float(value) for key, value in tags.items() if key.startswith("baseline.")}
    assert model and set(model) == set(baselines)
    beats = all(model[key] > baselines[key] for key in model)
    assert first["promotion"]["promoted"] == beats, first["promotion"]["reason"]
    assert tags["promotion"] == ("champion" if beats else "rejected") and tags["promotion.reason"] == first["promotion"]["reason"]
    assert alias_version(uri, "mvg", "champion") == ("1" if beats else None)
    assert (" vs copy-prompt " in first["promotion"]["reason"]) and (" vs identity " in first["promotion"]["reason"])

    again = pipeline_flow(**settings)
    assert all(counts["skipped"] == 3 and counts["ingested"] == 0 for counts in again["ingested"].values())
    assert again["training"]["model_reused"] and again["training"]["model_uri"] == first["training"]["model_uri"]
    if beats:
        assert again["promotion"]["reason"] == "already the champion"
    else:  # the same weights on the same cases: refused again, by the baselines
        assert not again["promotion"]["promoted"] and again["promotion"]["reason"].startswith("does not beat its baseline on")


    # `mvg demo --fresh` in a fresh process, as `make demo` runs it: no Prefect server configured, so
    # the runs go to a Prefect home beside the data; new data, a new training run, a new version
    environment = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME", "MVG_HOME")}
    demo = subprocess.run(  # in tmp_path, whose ./mvg-home (the default, relative) is the home above
        [sys.executable, "-m", "flows.cli", "demo", "--fresh", "--cases", "3", "--size", "32", "--steps", "3", "--workers", "1"],
        env=environment | {"RAY_ADDRESS": ""}, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "Segmentation, mIoU (paper Table 2)" in demo.stdout and "| copy-prompt |" in demo.stdout
    assert "registered model: models:/mvg/2" in demo.stdout
    prefect_home = tmp_path / "mvg-home" / "prefect"
    assert f"Prefect UI:       PREFECT_HOME={prefect_home} prefect server start" in demo.stdout
    assert (prefect_home / "prefect.db").is_file(), "the demo's flow runs are kept where the Prefect UI command looks"


def test_the_data_root_is_absolute_whatever_the_working_directory(tmp_path, monkeypatch):
    from storage.home import mvg_home

    monkeypatch.delenv("MVG_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert mvg_home() == tmp_path / "mvg-home"
    assert mvg_home("relative/home") == tmp_path / "relative" / "home"
