"""Manifest edge cases: what a manifest may read (its folder, or the root the caller allows) and
the documented route for image-to-image datasets without a built-in spec."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from storage.ingest import CatalogWriter, IngestOptions, ingest_case
from storage.layouts import LayoutError, plan_dataset
from storage.store import ZarrStore
from tests.conftest import LPS_AFFINE, ct_case, write_nnunet


def write_manifest(folder: Path, rows: list[dict], **header) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"name": "edges", **header, "cases": rows}))
    return folder / "manifest.json"


@pytest.fixture
def secret(tmp_path) -> Path:
    """A file beside, not inside, the dataset folder: no manifest of the dataset may read it."""
    (tmp_path / "elsewhere").mkdir()
    path = tmp_path / "elsewhere" / "secret.npy"
    np.save(path, np.ones((2, 4, 4), np.float32))
    return path


def test_a_rows_own_root_may_not_widen_the_manifests_folder(tmp_path, secret):
    from_filesystem_root = str(secret.relative_to(secret.anchor))  # "tmp/.../secret.npy" under root "/"
    rows = [
        {"case": "slash", "root": "/", "image": from_filesystem_root},
        {"case": "parent", "root": "..", "image": "elsewhere/secret.npy"},
        {"case": "absolute", "root": str(secret.parent), "image": "secret.npy"},
    ]
    plan = plan_dataset(write_manifest(tmp_path / "data", rows))
    assert plan.cases == [], "no row that reads outside the dataset folder may be planned"
    for problem in plan.problems:
        assert "lies outside" in problem.reason and str(tmp_path / "data") in problem.reason, problem.reason


def test_a_rows_root_may_narrow_the_folder(tmp_path):
    (tmp_path / "data" / "scans").mkdir(parents=True)
    np.save(tmp_path / "data" / "scans" / "a.npy", np.ones((2, 4, 4), np.float32))
    plan = plan_dataset(write_manifest(tmp_path / "data", [{"case": "a", "root": "scans", "image": "a.npy"}]))
    assert plan.problems == [] and plan.cases[0].channels[0].path == str(tmp_path / "data" / "scans" / "a.npy")


def test_the_manifests_root_may_not_widen_it_unless_the_caller_allows(tmp_path, secret):
    manifest = write_manifest(tmp_path / "manifests", [{"case": "s", "image": "secret.npy"}], root=str(secret.parent))
    with pytest.raises(LayoutError, match="lies outside"):
        plan_dataset(manifest)
    # the person running the ingest allows the data folder (`mvg ingest --root`): now it may read there
    plan = plan_dataset(manifest, root=secret.parent)
    assert plan.problems == [] and plan.cases[0].channels[0].path == str(secret)
    # a CSV kept elsewhere (no header to carry a root): its paths start from the allowed folder
    (tmp_path / "manifests" / "rows.csv").write_text("case,image\ns,secret.npy\n")
    assert plan_dataset(tmp_path / "manifests" / "rows.csv", root=secret.parent).cases[0].channels[0].path == str(secret)
    # and the allowed folder bounds the rows as the manifest's folder did
    widened = write_manifest(tmp_path / "manifests", [{"case": "s", "root": "/", "image": "etc/passwd"}])
    assert "lies outside" in plan_dataset(widened, root=secret.parent).problems[0].reason


def test_a_root_is_refused_for_layouts_that_read_their_own_folder(tmp_path):
    folder = write_nnunet(tmp_path / "Dataset040_Own", {"a": ct_case(1)})
    with pytest.raises(LayoutError, match="a root applies to a manifest only"):
        plan_dataset(folder, root=tmp_path)


# --------------------------------------------------------------------------------- image-to-image


def paired_cases(folder: Path, cases: int = 2) -> list[dict]:
    """Image and target volumes of one grid per case, as NIfTI files named in manifest rows."""
    rows = []
    for index in range(cases):
        image, _ = ct_case(index)
        target = (image.astype(np.float32) * 0.5 + 20).astype(np.float32)
        for role, volume in (("image", image.astype(np.float32)), ("target", target)):
            nib.save(nib.Nifti1Image(volume, LPS_AFFINE), folder / f"p{index}_{role}.nii.gz")
        rows.append({"case": f"p{index}", "image": f"p{index}_image.nii.gz", "target": f"p{index}_target.nii.gz"})
    return rows


@pytest.mark.parametrize("task", ["synthesis", "denoising"])
def test_an_image_to_image_manifest_without_a_built_in_spec_ingests(tmp_path, task):
    """The route README's "Adding your dataset" gives: a manifest that names the task and pairs
    image and target files; it once failed with "a synthesis dataset needs a target_channel"."""
    folder = tmp_path / "mine"
    folder.mkdir()
    manifest = write_manifest(folder, paired_cases(folder), name=f"my-{task}", modality="CT", task=task)
    plan = plan_dataset(manifest)
    assert plan.problems == [] and (plan.spec.task, plan.spec.input_channel, plan.spec.target_channel) == (task, 0, 1)
    writer = CatalogWriter(tmp_path / "store", plan)
    for case in plan.cases:
        result = ingest_case(case, plan.spec, writer.directory, plan.declared_labels, IngestOptions(size=16))
        assert result.status == "ingested", result.reason
        writer.add(result)
    writer.finish()
    dataset = ZarrStore(tmp_path / "store").dataset(f"my-{task}")
    assert sorted(dataset.cases()) == ["p0", "p1"] and dataset.spec.task == task
    volume = dataset.read_volume("p0")
    assert volume.image.dtype == volume.target.dtype == np.float16 and volume.mask is None
    assert not np.array_equal(volume.image, volume.target), "the target is the target file, not the image again"


def test_an_image_to_image_row_without_a_target_fails_alone(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    rows = [*paired_cases(folder, 1), {"case": "lonely", "image": "p0_image.nii.gz"}]
    plan = plan_dataset(write_manifest(folder, rows, task="synthesis"))
    assert [c.case for c in plan.cases] == ["p0"]
    assert "a synthesis row needs a target image" in plan.problems[0].reason


def test_a_bad_spec_field_in_a_manifest_names_the_manifest(tmp_path):
    manifest = write_manifest(tmp_path / "mine", [], task="painting")
    with pytest.raises(LayoutError, match=r"manifest\.json: .*task 'painting' is not one of"):
        plan_dataset(manifest)
