"""An `s3://` store root against a real S3 API server on loopback (moto's standalone server, the
same protocol as MinIO or AWS): ingest through the CLI, listing, slice reads, re-ingest of a changed
case, an upload cut short, training episodes and evaluation read from the bucket. `mvg train` on a
Ray head with the store and its checkpoints in a bucket: tests/test_ray_job.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import nibabel as nib
import numpy as np
import pytest

from storage.ingest import CatalogWriter, IngestOptions, ingest, ingest_case
from storage.layouts import plan_dataset
from storage.location import Location
from storage.shards import SliceReader
from storage.store import ZarrStore, dataset_dir, published_record, rebuild_catalog
from tests.conftest import LPS_AFFINE, ct_case
from tests.servers import s3_server

s3fs = pytest.importorskip("s3fs")

SIZE = 64
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("s3")) as env:
        yield env


@pytest.fixture
def s3_root(s3_env, monkeypatch, tmp_path) -> str:
    """A store root in a fresh bucket; this process's S3 clients point at the loopback server and
    its slice readers cache shards under tmp_path."""
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MVG_CACHE", str(tmp_path / "cache"))
    s3fs.S3FileSystem.clear_instance_cache()  # a cached client may still point at another endpoint
    bucket = f"mvg-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem().mkdir(bucket)
    return f"s3://{bucket}/store"


@pytest.fixture
def local_store(small_ct_dataset, tmp_path, dask_cluster):
    """The same source ingested into a local store, the reference the bucket must equal."""
    ingest(plan_dataset(small_ct_dataset), tmp_path / "local", dask_cluster, IngestOptions(size=SIZE))
    return ZarrStore(tmp_path / "local")


def ingest_in_process(source, root: str) -> dict[str, str]:
    """Ingest without Dask (Dask's workers were started before the S3 variables were set)."""
    plan = plan_dataset(source)
    writer = CatalogWriter(root, plan)
    for case in plan.cases:
        writer.add(ingest_case(case, plan.spec, writer.directory, plan.declared_labels, IngestOptions(size=SIZE)))
    return {result.case: result.status for result in writer.finish().results}


def bucket_files(root: str) -> list[str]:
    location = Location.of(root)
    return sorted(path.removeprefix(location.path + "/") for path in location.fs.find(location.path))


def test_mvg_ingest_writes_an_s3_store_that_reads_back_like_a_local_one(small_ct_dataset, s3_root, local_store, tmp_path):
    command = [sys.executable, "-m", "flows.cli", "ingest", str(small_ct_dataset), "--store", s3_root, "--size", str(SIZE), "--workers", "1"]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    remote = ZarrStore(s3_root)
    assert remote.datasets() == local_store.datasets() == ["smallct"]
    stored, reference = remote.dataset("smallct"), local_store.dataset("smallct")
    assert str(stored.directory) == f"{s3_root}/smallct.zarr"
    assert stored.catalog.version() == reference.catalog.version()
    assert stored.cases() == reference.cases() and len(stored.cases()) == 5
    for case in stored.cases():
        reader = stored.slice_reader(case, "image")
        assert isinstance(reader, SliceReader) and reader.shard_path.is_local, "slices come from the local shard copy"
        assert reader.shard_path.url.startswith(str(tmp_path / "cache"))
        for index in range(stored.record(case).slices):
            got, want = stored.read_slice(case, index), reference.read_slice(case, index)
            np.testing.assert_array_equal(got.image, want.image)
            np.testing.assert_array_equal(got.target, want.target)
        volume = stored.read_volume(case)  # through zarr-python's fsspec store
        np.testing.assert_array_equal(volume.image, reference.read_volume(case).image)
    files = bucket_files(s3_root)
    assert not [f for f in files if ".staging" in f or ".retired" in f], "nothing staged under an object-store root"
    assert "smallct.zarr/catalog.json" in files

    listed = subprocess.run([sys.executable, "-m", "flows.cli", "store", "--store", s3_root, "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr[-3000:]
    summary = json.loads(listed.stdout)
    assert [(s["dataset"], s["cases"], s["slices"]) for s in summary] == [("smallct", 5, 5 * 12)]


def test_re_ingest_skips_unchanged_cases_and_replaces_a_changed_one_whole(small_ct_dataset, s3_root):
    assert set(ingest_in_process(small_ct_dataset, s3_root).values()) == {"ingested"}
    before = bucket_files(s3_root)
    old_slice = ZarrStore(s3_root).dataset("smallct").read_slice("ct_02", 0)  # now in the local cache
    assert set(ingest_in_process(small_ct_dataset, s3_root).values()) == {"skipped"}

    image, labels = ct_case(7, shape=(64, 64, 9))  # another scan, fewer slices, under ct_02's name
    nib.save(nib.Nifti1Image(image, LPS_AFFINE), small_ct_dataset / "imagesTr" / "ct_02_0000.nii.gz")
    nib.save(nib.Nifti1Image(labels, LPS_AFFINE), small_ct_dataset / "labelsTr" / "ct_02.nii.gz")
    statuses = ingest_in_process(small_ct_dataset, s3_root)
    assert statuses.pop("ct_02") == "ingested" and set(statuses.values()) == {"skipped"}
    assert bucket_files(s3_root) == before, "the new version replaced the old object for object"
    dataset = ZarrStore(s3_root).dataset("smallct")
    assert dataset.record("ct_02").slices == 9
    stored_labels = dataset.read_volume("ct_02").target
    assert stored_labels.shape == (9, SIZE, SIZE) and set(np.unique(stored_labels)) == {0, 1, 2}
    new_slice = dataset.read_slice("ct_02", 0)  # the cache keys copies by the object's version
    np.testing.assert_array_equal(new_slice.image, dataset.read_volume("ct_02").image[0])
    assert not np.array_equal(new_slice.image, old_slice.image)


def test_with_the_cache_off_every_slice_is_a_ranged_get_and_reads_the_same(small_ct_dataset, s3_root, monkeypatch, tmp_path):
    ingest_in_process(small_ct_dataset, s3_root)
    cached = ZarrStore(s3_root).dataset("smallct")
    monkeypatch.setenv("MVG_CACHE", "off")
    direct = ZarrStore(s3_root).dataset("smallct")
    reader = direct.slice_reader("ct_03", "target")
    assert not reader.shard_path.is_local
    for index in range(direct.record("ct_03").slices):
        np.testing.assert_array_equal(direct.read_slice("ct_03", index).target, cached.read_slice("ct_03", index).target)


def test_an_upload_cut_short_publishes_nothing_and_the_next_ingest_mends_it(small_ct_dataset, s3_root, monkeypatch):
    real_upload = Location.upload
    calls = []

    def upload_then_drop_the_connection(self, files):
        calls.append([relative for _, relative in files])
        if self.name == "ct_01" and files[-1][1] == "zarr.json":
            raise ConnectionError("connection reset while uploading the record")
        real_upload(self, files)

    monkeypatch.setattr(Location, "upload", upload_then_drop_the_connection)
    plan = plan_dataset(small_ct_dataset)
    writer = CatalogWriter(s3_root, plan)
    for case in plan.cases:
        try:
            writer.add(ingest_case(case, plan.spec, writer.directory, plan.declared_labels, IngestOptions(size=SIZE)))
        except ConnectionError:
            pass  # Dask would report the case as failed; the others go on
    writer.finish()
    assert all(names[-1] == "zarr.json" or "zarr.json" not in names for names in calls), "the record goes up alone"

    directory = dataset_dir(s3_root, "smallct")
    assert any(f.startswith("smallct.zarr/ct_01/image/") for f in bucket_files(s3_root)), "its arrays did go up"
    assert published_record(directory, "ct_01") is None
    assert "ct_01" not in rebuild_catalog(directory).cases
    assert ZarrStore(s3_root).dataset("smallct").cases() == ["ct_00", "ct_02", "ct_03", "ct_04"]

    monkeypatch.setattr(Location, "upload", real_upload)
    statuses = ingest_in_process(small_ct_dataset, s3_root)
    assert statuses == {"ct_00": "skipped", "ct_01": "ingested", "ct_02": "skipped", "ct_03": "skipped", "ct_04": "skipped"}
    assert len(ZarrStore(s3_root).dataset("smallct").cases()) == 5


def test_training_episodes_and_evaluation_read_the_same_from_s3(small_ct_dataset, s3_root, local_store):
    from mvg.config import preset
    from mvg.episodes import EpisodeSampler
    from mvg.evaluation import evaluate_dataset
    from mvg.model import MVG
    from mvg.train import train

    ingest_in_process(small_ct_dataset, s3_root)
    config = preset("tiny-cpu").with_overrides(model={"depth": 1, "embed_dim": 48, "num_heads": 2}, optim={"batch_size": 2, "steps": 2})
    remote = EpisodeSampler([s3_root], config.data, config.objective, seed=3)
    reference = EpisodeSampler([local_store.root], config.data, config.objective, seed=3)
    for _ in range(6):
        got, want = remote.sample(), reference.sample()
        assert (got.task, got.source) == (want.task, want.source)
        for field in ("prompt_images", "prompt_targets", "query_image", "query_target"):
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field))

    result = train(config, [s3_root])
    assert result.step == 2

    model = MVG(config).eval()
    on_s3 = evaluate_dataset(model, ZarrStore(s3_root).dataset("smallct"), draws=1, seed=1)
    on_disk = evaluate_dataset(model, local_store.dataset("smallct"), draws=1, seed=1)
    assert on_s3.rows == on_disk.rows and on_s3.rows


def test_a_store_url_without_its_backend_or_protocol_is_refused_by_name():
    with pytest.raises(ValueError, match="nosuchproto://bucket/store"):
        ZarrStore("nosuchproto://bucket/store")
