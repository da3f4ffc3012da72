"""Ingest end to end through Dask: round trips, re-runs, and every kind of bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import zarr

from storage.geometry import Geometry, to_nifti
from storage.ingest import IngestOptions, ingest
from storage.layouts import plan_dataset
from storage.store import STAGING, ZarrStore, dataset_dir
from tests.conftest import LPS_AFFINE, ct_case, write_nnunet

SIZE = 64


def run(source: Path, store: Path, client, spec=None):
    return ingest(plan_dataset(source, spec), store, client, IngestOptions(size=SIZE))


def test_round_trip_keeps_labels_exactly_and_geometry_recoverable(small_ct_dataset, tmp_path, dask_cluster):
    report = run(small_ct_dataset, tmp_path / "store", dask_cluster)
    assert report.counts() == {"ingested": 5, "skipped": 0, "failed": 0}

    dataset = ZarrStore(tmp_path / "store").dataset("smallct")
    assert set(dataset.cases("train")) | set(dataset.cases("test")) == {f"ct_{i:02d}" for i in range(5)}
    assert dataset.cases("test"), "a dataset without its own split still holds cases out for testing"
    for case in dataset.cases():
        image, labels = ct_case(int(case[-2:]))
        volume = dataset.read_volume(case)
        assert volume.image.shape == (12, SIZE, SIZE) and volume.image.dtype == np.float16
        assert 0.0 <= volume.image.min() and volume.image.max() <= 1.0
        # Written back in the source geometry at the source size, the labels are the originals, voxel for voxel.
        geometry = dataset.geometry(case)
        back = nearest_resize(volume.target, (labels.shape[1], labels.shape[0]))  # source (x, y) -> (y, x)
        restored = to_nifti(back, geometry)
        assert np.array_equal(np.asarray(restored.dataobj), labels)
        assert np.allclose(restored.affine, LPS_AFFINE)
        record = dataset.record(case)
        assert record.classes == [1, 2]
        assert [bool(c) for c in record.slice_classes] == [bool(labels[:, :, z].any()) for z in range(12)]
        assert record.spacing == pytest.approx((2.5, 0.8 * 40 / SIZE, 0.8 * 48 / SIZE))


def nearest_resize(volume: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
    """Back from the store size to the source's in-plane size (nearest, as `mvg predict` will)."""
    from scipy import ndimage

    zoom = (1, shape_yx[0] / volume.shape[1], shape_yx[1] / volume.shape[2])
    return ndimage.zoom(volume, zoom, order=0, mode="nearest", grid_mode=True)


def test_store_is_ome_zarr_with_one_shard_per_case(small_ct_dataset, tmp_path, dask_cluster):
    run(small_ct_dataset, tmp_path / "store", dask_cluster)
    case_dir = Path(dataset_dir(tmp_path / "store", "smallct") / "ct_00")
    image_group = zarr.open_group(str(case_dir / "image"), mode="r")
    multiscale = image_group.attrs["ome"]["multiscales"][0]
    assert image_group.attrs["ome"]["version"] == "0.5"
    assert [a["name"] for a in multiscale["axes"]] == ["z", "y", "x"]
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"][0] == pytest.approx(2.5)
    array = zarr.open_array(str(case_dir / "image" / "0"), mode="r")
    assert array.chunks == (1, SIZE, SIZE) and array.shards == (12, SIZE, SIZE)
    assert array.dtype == np.float16 and array.metadata.dimension_names == ("z", "y", "x")
    assert len(list((case_dir / "image" / "0" / "c").rglob("*"))) >= 1
    shard_files = [p for p in (case_dir / "image" / "0").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(shard_files) == 1
    assert zarr.open_array(str(case_dir / "target" / "0"), mode="r").dtype == np.uint8
    metadata = json.loads((case_dir / "zarr.json").read_text())["attributes"]["mvg"]
    assert Geometry.from_dict(metadata["geometry"]).source_axcodes == ("L", "P", "S")


def test_rerun_skips_unchanged_and_reingests_changed(small_ct_dataset, tmp_path, dask_cluster):
    store = tmp_path / "store"
    run(small_ct_dataset, store, dask_cluster)
    again = run(small_ct_dataset, store, dask_cluster)
    assert again.counts() == {"ingested": 0, "skipped": 5, "failed": 0}

    image, labels = ct_case(99)
    nib.save(nib.Nifti1Image(image, LPS_AFFINE), small_ct_dataset / "imagesTr" / "ct_03_0000.nii.gz")
    changed = run(small_ct_dataset, store, dask_cluster)
    assert {r.case: r.status for r in changed.results}["ct_03"] == "ingested"
    assert changed.counts()["skipped"] == 4
    dataset = ZarrStore(store).dataset("smallct")
    assert len(dataset.cases()) == 5
    stored = dataset.read_volume("ct_03").image
    expected = np.clip((image.astype(np.float32) + 100) / 300, 0, 1).transpose(2, 1, 0)[:, ::-1, ::-1]
    assert abs(float(stored.mean()) - float(nearest_resize(expected, (SIZE, SIZE)).mean())) < 0.02


# --------------------------------------------------------------------------------- bad input


def corrupt_gzip(path: Path) -> None:
    path.write_bytes(b"\x1f\x8b\x08\x00" + b"not really a gzip stream" * 20)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def bad_dataset(tmp_path) -> Path:
    """Three good cases and one case per kind of bad input, in one nnU-Net dataset."""
    cases = {f"good_{i}": ct_case(i) for i in range(3)}
    image, labels = ct_case(7)
    cases["shape_mismatch"] = (image, labels[:, :, :-1])
    cases["nan_voxels"] = (np.where(labels > 0, np.nan, image.astype(np.float32)).astype(np.float32), labels)
    cases["undeclared_label"] = (image, np.where(labels == 2, 5, labels).astype(np.uint8))
    cases["missing_label"] = (image, None)
    cases["four_d"] = (np.stack([image, image], axis=-1), labels)
    cases["truncated"] = (image, labels)
    cases["corrupt"] = (image, labels)
    cases["empty_file"] = (image, labels)
    cases["affine_mismatch"] = (image, labels)
    root = write_nnunet(tmp_path / "Dataset020_Bad", cases)
    truncate(root / "imagesTr" / "truncated_0000.nii.gz")
    corrupt_gzip(root / "imagesTr" / "corrupt_0000.nii.gz")
    (root / "labelsTr" / "empty_file.nii.gz").write_bytes(b"")
    shifted = LPS_AFFINE.copy()
    shifted[:3, 3] += 7.0
    nib.save(nib.Nifti1Image(labels, shifted), root / "labelsTr" / "affine_mismatch.nii.gz")
    return root


EXPECTED_FAILURES = {
    "shape_mismatch": ("labelsTr/shape_mismatch.nii.gz", "does not match"),
    "nan_voxels": ("imagesTr/nan_voxels_0000.nii.gz", "NaN/inf"),
    "undeclared_label": ("labelsTr/undeclared_label.nii.gz", "not declared"),
    "missing_label": ("labelsTr/missing_label.nii.gz", "not found"),
    "four_d": ("imagesTr/four_d_0000.nii.gz", "4-D"),
    "truncated": ("imagesTr/truncated_0000.nii.gz", "truncated or corrupt"),
    "corrupt": ("imagesTr/corrupt_0000.nii.gz", "corrupt"),
    "empty_file": ("labelsTr/empty_file.nii.gz", "empty"),
    "affine_mismatch": ("labelsTr/affine_mismatch.nii.gz", "affine"),
}


@pytest.fixture
def bad_report(bad_dataset, tmp_path, dask_cluster):
    return run(bad_dataset, tmp_path / "store", dask_cluster), tmp_path / "store"


@pytest.mark.parametrize("case", sorted(EXPECTED_FAILURES))
def test_bad_case_fails_alone_with_a_clear_reason(bad_report, case):
    report, store = bad_report
    result = {r.case: r for r in report.results}[case]
    file, problem = EXPECTED_FAILURES[case]
    assert result.status == "failed"
    assert file in result.reason and problem in result.reason, result.reason
    dataset = ZarrStore(store).dataset("bad")
    assert case not in dataset.cases()
    assert not (dataset.directory / case).exists(), "nothing of a bad case may be published"


def test_bad_cases_do_not_stop_good_ones(bad_report):
    report, store = bad_report
    assert report.counts() == {"ingested": 3, "skipped": 0, "failed": len(EXPECTED_FAILURES)}
    dataset = ZarrStore(store).dataset("bad")
    assert sorted(dataset.cases()) == ["good_0", "good_1", "good_2"]
    assert not any((store / STAGING).rglob("zarr.json")), "no staging debris after a run"


def test_paths_escaping_the_dataset_folder_are_refused(tmp_path, dask_cluster):
    outside = write_nnunet(tmp_path / "elsewhere", {"secret": ct_case(1)})
    root = write_nnunet(tmp_path / "Dataset030_Escape", {"inside": ct_case(2)})
    description = json.loads((root / "dataset.json").read_text())
    description["dataset"] = {
        "inside": {"images": ["imagesTr/inside_0000.nii.gz"], "label": "labelsTr/inside.nii.gz"},
        "escaping": {"images": ["../elsewhere/imagesTr/secret_0000.nii.gz"], "label": "labelsTr/inside.nii.gz"},
        "absolute": {"images": [str(outside / "imagesTr" / "secret_0000.nii.gz")], "label": "labelsTr/inside.nii.gz"},
    }
    (root / "dataset.json").write_text(json.dumps(description))
    report = run(root, tmp_path / "store", dask_cluster)
    by_case = {r.case: r for r in report.results}
    assert by_case["inside"].status == "ingested"
    for case in ("escaping", "absolute"):
        assert by_case[case].status == "failed" and "escapes the dataset folder" in by_case[case].reason


def test_manifest_paths_escaping_are_refused(tmp_path, dask_cluster):
    root = write_nnunet(tmp_path / "data", {"a": ct_case(1), "b": ct_case(2)})
    rows = [
        {"case": "a", "image": "imagesTr/a_0000.nii.gz", "target": "labelsTr/a.nii.gz", "split": "train"},
        {"case": "b", "image": "imagesTr/b_0000.nii.gz", "target": "../../etc/passwd", "split": "test"},
    ]
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"name": "manifested", "modality": "CT", "classes": {"1": "organ", "2": "vessel"}, "cases": rows}))
    report = run(manifest, tmp_path / "store", dask_cluster)
    by_case = {r.case: r for r in report.results}
    assert by_case["a"].status == "ingested"
    assert by_case["b"].status == "failed" and "escapes the dataset folder" in by_case["b"].reason


def test_staging_debris_from_a_killed_run_is_cleared(small_ct_dataset, tmp_path, dask_cluster):
    store = tmp_path / "store"
    torn = store / STAGING / "smallct" / "ct_01.deadbeef"
    (torn / "image" / "0").mkdir(parents=True)
    (torn / "zarr.json").write_text("{")  # half-written metadata
    report = run(small_ct_dataset, store, dask_cluster)
    assert report.counts()["ingested"] == 5
    assert not torn.exists()
    shutil.rmtree(store / STAGING, ignore_errors=True)


def test_a_changed_recipe_reingests_unchanged_sources(small_ct_dataset, tmp_path, dask_cluster):
    store = tmp_path / "store"
    run(small_ct_dataset, store, dask_cluster)
    plan = plan_dataset(small_ct_dataset)
    resized = ingest(plan, store, dask_cluster, IngestOptions(size=SIZE // 2))
    assert resized.counts()["ingested"] == 5, "a new store size must not be skipped as 'unchanged'"
    dataset = ZarrStore(store).dataset("smallct")
    assert dataset.read_volume("ct_00").image.shape == (12, SIZE // 2, SIZE // 2)
    assert dataset.record("ct_00").recipe["size"] == SIZE // 2
