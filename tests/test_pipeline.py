"""The pipeline flow end to end on tiny phantoms: every stage runs, the results table holds the model
beside its baselines, the candidate becomes champion, and a re-run reuses what is done."""

from __future__ import annotations

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
    from mvg.tracking import client

    monkeypatch.setenv("MVG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = dict(cases=3, size=32, slices=8, steps=3, ingest_workers=1)

    first = pipeline_flow(**settings)
    assert set(first["ingested"]) == {"phantom-segmentation", "phantom-synthesis", "phantom-inpainting", "phantom-denoising", "phantom-xray"}
    assert all(counts["ingested"] == 3 and counts["failed"] == 0 for counts in first["ingested"].values())
    assert first["training"]["step"] == 3 and not first["training"]["model_reused"]
    table2, table3 = first["tables"]["table2"], first["tables"]["table3"]
    assert [row["method"] for row in table2] == ["model", "copy-prompt"] and "phantom-xray" in table2[0]
    assert [row["method"] for row in table3] == ["model", "identity"] and "phantom-denoising PSNR" in table3[0]
    assert first["promotion"]["promoted"] and first["promotion"]["reason"] == "no champion yet"
    registry = client(first["tracking_uri"])
    assert str(registry.get_model_version_by_alias("mvg", "champion").version) == "1"

    again = pipeline_flow(**settings)
    assert all(counts["skipped"] == 3 and counts["ingested"] == 0 for counts in again["ingested"].values())
    assert again["training"]["model_reused"] and again["training"]["model_uri"] == first["training"]["model_uri"]
    assert again["promotion"]["reason"] == "already the champion"

    fresh = pipeline_flow(**settings, fresh=True)
    assert all(counts["ingested"] == 3 for counts in fresh["ingested"].values())
    assert fresh["training"]["run_name"].startswith("demo-") and fresh["training"]["model_uri"] == "models:/mvg/2"
    assert fresh["promotion"]["promoted"], "the same settings and seed train the same weights: as good as the champion"
