"""Ingest the real datasets in ../shared/data the way a user would, and check the round trips.

Every manifest is written into tmp_path and names the shared data folder as its `root`, so the data
is read in place (never copied) and every path stays inside that folder. The module skips when
../shared/data is absent (a fresh clone). Data credits and licences: ../shared/data/README.md.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import scipy.io
from PIL import Image
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio

from storage.geometry import to_nifti
from storage.ingest import IngestOptions, IngestReport, ingest
from storage.layouts import plan_dataset
from storage.specs import DatasetSpec
from storage.store import StoredDataset, ZarrStore


def run_ingest(source: Path, store: Path, client, size: int, spec: DatasetSpec | str | None = None) -> StoredDataset:
    report = ingest(plan_dataset(source, spec), store, client, IngestOptions(size=size))
    assert_no_failures(report)
    return ZarrStore(store).dataset(report.dataset)


def assert_no_failures(report: IngestReport) -> None:
    reasons = "\n".join(f"{r.case}: {r.reason}" for r in report.failed)
    assert report.counts()["failed"] == 0, f"failed cases:\n{reasons}"


def write_json_manifest(path: Path, root: Path, cases: list[dict], **header) -> Path:
    path.write_text(json.dumps({**header, "root": str(root), "cases": cases}, indent=1))
    return path


def nearest_resize(volume: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
    """In-plane nearest resize of a (z, y, x) volume, as `mvg predict` maps outputs back."""
    zoom = (1, shape_yx[0] / volume.shape[1], shape_yx[1] / volume.shape[2])
    return ndimage.zoom(volume, zoom, order=0, mode="nearest", grid_mode=True)


def read_h5(path: Path, key: str) -> np.ndarray:
    with h5py.File(path, "r") as file:
        return file[key][()]


def picture(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


# --------------------------------------------------------------------------------- ACDC


# The SSL4MIS volumes differ in-plane (154..288 x 184..256): a store size above the largest makes
# the store an up-sampling, which nearest resizing undoes exactly.
ACDC_VOLUME_SIZE = 320


def test_acdc_volumes_keep_labels_exactly(shared_data, tmp_path, dask_cluster):
    folder = shared_data / "acdc"
    volumes = sorted((folder / "volumes").glob("*.h5"))
    assert len(volumes) == 20
    validation = set((folder / "val.list").read_text().split())  # one case name per line, no suffix
    cases = [
        {
            "case": path.stem,
            "image": f"volumes/{path.name}",
            "image_key": "image",
            "target": f"volumes/{path.name}",
            "target_key": "label",
            "split": "val" if path.stem in validation else "train",
        }
        for path in volumes
    ]
    manifest = write_json_manifest(tmp_path / "acdc.json", folder, cases, spec="acdc")
    dataset = run_ingest(manifest, tmp_path / "store", dask_cluster, ACDC_VOLUME_SIZE)

    assert sorted(dataset.cases()) == [p.stem for p in volumes]
    assert set(dataset.cases("val")) == {p.stem for p in volumes} & validation
    classes_seen: set[int] = set()
    for path in volumes:
        label = read_h5(path, "label")
        volume = dataset.read_volume(path.stem)
        assert volume.image.shape == (label.shape[0], ACDC_VOLUME_SIZE, ACDC_VOLUME_SIZE)
        assert 0.0 <= volume.image.min() and volume.image.max() <= 1.0
        assert np.array_equal(nearest_resize(volume.target, label.shape[1:]), label), path.name
        record = dataset.record(path.stem)
        assert record.classes == sorted(set(np.unique(label).tolist()) - {0})
        classes_seen |= set(record.classes)
        geometry = dataset.geometry(path.stem)
        assert not geometry.spacing_known, "HDF5 carries no spacing: it must be recorded as unknown"
        assert geometry.spacing == (1.0, 1.0, 1.0)
    assert classes_seen == {1, 2, 3}


# All 1,312 slice files are ingested, each as a one-slice case: ~30 s on 2 workers. The cost is per
# case (~27 ms of Zarr group/array metadata writes), not pixels, so a small store size changes little.
ACDC_SLICE_SIZE = 64


def test_acdc_slices_from_a_csv_manifest(shared_data, tmp_path, dask_cluster):
    folder = shared_data / "acdc" / "slices"
    slices = sorted(folder.glob("*.h5"))
    assert len(slices) == 1312
    training = set((shared_data / "acdc" / "train_slices.list").read_text().split())
    manifest = tmp_path / "acdc-slices.csv"
    with manifest.open("w", newline="") as file:
        writer = csv.DictWriter(file, ["case", "image", "image_key", "target", "target_key", "split", "root"])
        writer.writeheader()
        for path in slices:
            writer.writerow(
                {
                    "case": path.stem,
                    "image": path.name,
                    "image_key": "image",
                    "target": path.name,
                    "target_key": "label",
                    "split": "train" if path.stem in training else "test",
                    # a CSV has no header for the data folder: each row names it
                    "root": str(folder),
                }
            )
    dataset = run_ingest(manifest, tmp_path / "store", dask_cluster, ACDC_SLICE_SIZE, "acdc")

    assert sorted(dataset.cases()) == sorted(p.stem for p in slices)
    assert set(dataset.cases("train")) == training
    for path in slices[::41]:  # a spread of patients and positions; every case was written above
        label = read_h5(path, "label")
        record = dataset.record(path.stem)
        assert record.slices == 1 and record.shape == (1, ACDC_SLICE_SIZE, ACDC_SLICE_SIZE)
        target = dataset.read_volume(path.stem).target
        assert np.array_equal(target, nearest_resize(label[None], (ACDC_SLICE_SIZE, ACDC_SLICE_SIZE)))
        assert set(record.classes) <= {1, 2, 3}
        assert not dataset.geometry(path.stem).spacing_known


# --------------------------------------------------------------------------------- spinal cord

SCT_CLASSES = {"1": "spinal cord", "2": "grey matter"}
# (case, image, target): t1 and t2 have one manual cord mask (a plain label file); t2s and mt carry
# a cord mask and a grey-matter mask (inside the cord) on the image's grid, merged into one map.
SCT_CASES = [
    ("t1", "t1/t1w.nii.gz", "t1/t1w_seg-manual.nii.gz"),
    ("t2", "t2/t2.nii.gz", "t2/t2_seg-manual.nii.gz"),
    ("t2s", "t2s/t2s.nii.gz", {"spinal cord": "t2s/t2s_seg.nii.gz", "grey matter": "t2s/t2s_gmseg_manual.nii.gz"}),
    ("mt1", "mt/mt1.nii.gz", {"spinal cord": "mt/mt1_seg.nii.gz", "grey matter": "mt/mt1_gmseg_goldstandard.nii.gz"}),
]
SCT_SIZE = 96  # above every canonical in-plane size (at most 77): nearest resizing back is exact


def load_nifti(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


def test_spinal_cord_geometry_is_recoverable(shared_data, tmp_path, dask_cluster):
    folder = shared_data / "sct"
    rows = [{"case": case, "image": image, "target": target, "split": "train"} for case, image, target in SCT_CASES]
    manifest = write_json_manifest(
        tmp_path / "sct.json", folder, rows, name="sct", region="Spine", modality="MRI", classes=SCT_CLASSES
    )
    dataset = run_ingest(manifest, tmp_path / "store", dask_cluster, SCT_SIZE)

    for case, image, target in SCT_CASES:
        if isinstance(target, str):
            expected = load_nifti(folder / target)
        else:
            cord, grey = load_nifti(folder / target["spinal cord"]), load_nifti(folder / target["grey matter"])
            expected = np.where(grey > 0, 2, np.where(cord > 0, 1, 0))
        source = nib.load(folder / image)
        canonical_x, canonical_y, _ = nib.as_closest_canonical(source).shape
        geometry = dataset.geometry(case)
        assert geometry.spacing_known
        stored = dataset.read_volume(case).target
        restored = to_nifti(nearest_resize(stored, (canonical_y, canonical_x)), geometry)
        assert restored.shape == source.shape
        assert np.array_equal(np.asarray(restored.dataobj), expected), case
        assert np.array_equal(restored.affine, source.affine), case
        seg_file = folder / (target if isinstance(target, str) else target["grey matter"])
        assert np.allclose(restored.affine, nib.load(seg_file).affine, atol=1e-3)  # mt: masks differ by 2e-4 mm
        record = dataset.record(case)
        assert record.classes == ([1] if isinstance(target, str) else [1, 2])


# --------------------------------------------------------------------------------- BraTS


def test_brats_synthesis_pairs_are_float16_in_unit_range(shared_data, tmp_path, dask_cluster):
    folder = shared_data / "brats-synthesis"
    rows = [{"case": "BraTS-GLI-synthesis", "image": "t1n.nii.gz", "target": "t2w.nii.gz", "split": "train"}]
    manifest = write_json_manifest(tmp_path / "brats.json", folder, rows, spec="brats-gli", task="synthesis")
    dataset = run_ingest(manifest, tmp_path / "store", dask_cluster, 128)

    case = "BraTS-GLI-synthesis"
    assert dataset.spec.task == "synthesis"
    assert dataset.record(case).roles == ["image", "target"]
    for role in ("image", "target"):
        array = dataset.array(case, role)
        assert array.dtype == np.float16 and array.shape == (155, 128, 128)
        values = array[...]
        assert values.min() == 0.0 and values.max() == 1.0  # percentile clip -> [0, 1]
    volume = dataset.read_volume(case)
    assert volume.image.shape == volume.target.shape
    assert not np.array_equal(volume.image, volume.target)


BRATS_INPAINTING_SIZE = 240  # the source in-plane size: no resampling, so "outside the mask" is exact


def test_brats_inpainting_shares_one_scaling(shared_data, tmp_path, dask_cluster):
    folder = shared_data / "brats-inpainting"
    stem = "BraTS-GLI-00001-000"
    rows = [
        {"case": stem, "image": f"{stem}-t1n-voided.nii.gz", "target": f"{stem}-t1n.nii.gz", "mask": f"{stem}-mask.nii.gz"}
    ]
    manifest = write_json_manifest(tmp_path / "inpainting.json", folder, rows, spec="brats-local")
    dataset = run_ingest(manifest, tmp_path / "store", dask_cluster, BRATS_INPAINTING_SIZE)

    record = dataset.record(stem)
    assert record.roles == ["image", "target", "mask"]
    assert record.intensity["image"] == record.intensity["target"]
    volume = dataset.read_volume(stem)
    mask = volume.mask.astype(bool)
    source_mask = load_nifti(folder / f"{stem}-mask.nii.gz")
    assert mask.sum() == np.count_nonzero(source_mask) > 0
    assert np.array_equal(volume.image[~mask], volume.target[~mask])
    assert volume.image[mask].max() == 0.0  # the voided region
    assert volume.target[mask].max() > 0.0  # ... which the ground truth fills


def test_brats_edema_nnunet_folder_without_dataset_json(shared_data, tmp_path, dask_cluster):
    folder = shared_data / "brats-edema"
    plan = plan_dataset(folder)  # no dataset.json, no _0000 suffix: one channel, spec from the folder
    assert [c.case for c in plan.cases] == ["BraTS2021_01646"]
    assert plan.spec.task == "segmentation" and plan.spec.modality == "MRI"
    dataset = run_ingest(folder, tmp_path / "store", dask_cluster, 160)

    case = "BraTS2021_01646"
    labels = load_nifti(folder / "labelsTr" / f"{case}.nii.gz")
    volume = dataset.read_volume(case)
    assert set(np.unique(volume.target).tolist()) == {0, 1}
    # The file is RAS already: the canonical (z, y, x) array is the file transposed.
    assert np.array_equal(volume.target, labels.transpose(2, 1, 0))
    assert dataset.geometry(case).spacing == (1.5, 1.5, 1.5)


# --------------------------------------------------------------------------------- low-dose CT

# README: quarter vs routine dose after HU and window [-100, 200] -> [0, 1]
LDCT_PSNR = {"test_case1": 21.5, "test_case2": 17.9, "test_case3": 19.8}


def test_ldct_psnr_reproduces_the_readme(shared_data, tmp_path, dask_cluster):
    folder = shared_data / "ldct"
    manifest = tmp_path / "ldct.csv"
    with manifest.open("w", newline="") as file:
        writer = csv.DictWriter(file, ["case", "image", "image_key", "target", "target_key", "root"])
        writer.writeheader()
        for case in LDCT_PSNR:
            writer.writerow(
                {"case": case, "image": f"{case}.mat", "image_key": "quarter_dose",
                 "target": f"{case}.mat", "target_key": "routine_dose", "root": str(folder)}
            )
    dataset = run_ingest(manifest, tmp_path / "store", dask_cluster, 512, "ldct")  # 512: nothing resampled

    for case, expected in LDCT_PSNR.items():
        volume = dataset.read_volume(case)
        assert volume.image.shape == volume.target.shape == (1, 512, 512)
        psnr = peak_signal_noise_ratio(volume.target, volume.image, data_range=1)
        assert psnr == pytest.approx(expected, abs=0.5), case
        # the stored target is the routine dose in HU, windowed: check against the file itself
        routine = scipy.io.loadmat(folder / f"{case}.mat")["routine_dose"]
        windowed = np.clip(((routine - 0.0192) / 0.0192 * 1000 + 100) / 300, 0, 1)
        assert np.abs(volume.target[0] - windowed).max() < 1e-3


# --------------------------------------------------------------------------------- chest X-rays

CXR_SIZE = 256


def test_chest_xray_binary_masks_become_labels(shared_data, tmp_path, dask_cluster):
    folder = shared_data / "cxr"
    numbers = sorted(p.stem for p in folder.glob("*.jpg"))
    rows = [{"case": f"cxr{n}", "image": f"{n}.jpg", "target": {"lungs": f"{n}-mask.png"}} for n in numbers]
    manifest = write_json_manifest(
        tmp_path / "cxr.json", folder, rows, name="cxr", modality="X-ray", region="Chest", classes={"1": "lungs"}
    )
    dataset = run_ingest(manifest, tmp_path / "store", dask_cluster, CXR_SIZE)

    assert len(dataset.cases()) == 4
    for n in numbers:
        target = dataset.read_volume(f"cxr{n}").target
        assert set(np.unique(target).tolist()) == {0, 1}
        lungs = (picture(folder / f"{n}-mask.png") > 0).astype(np.uint8)[None]
        assert np.array_equal(target, nearest_resize(lungs, (CXR_SIZE, CXR_SIZE)))


# --------------------------------------------------------------------------------- CT slices

# Images are 512 (AMOS) or smaller (TotalSegmentator crops): at 512 nothing is down-sampled, so
# resizing the stored labels back to each image's size is exact.
CT_SLICE_SIZE = 512


def test_ct_slices_per_organ_masks_merge_into_one_label_map(shared_data, tmp_path, dask_cluster):
    folder = shared_data / "ct-slices"
    # SAM-Med2D's demo lists masks per image (train) and the image of each mask (test); both count.
    masks_of: dict[str, list[str]] = json.loads((folder / "image2label_train.json").read_text())
    for mask, image in json.loads((folder / "label2image_test.json").read_text()).items():
        masks_of.setdefault(image, []).append(mask)
    local = {image.removeprefix("data_demo/"): [m.removeprefix("data_demo/") for m in masks] for image, masks in masks_of.items()}
    assert "images/amos_0507_31.png" not in local  # the AMOS MR slice has no masks: not a case

    def organ(image: str, mask: str) -> str:  # masks/<image>_<organ>_<instance>.png
        return re.fullmatch(rf"masks/{re.escape(Path(image).stem)}_(.+)_\d{{3}}\.png", mask)[1]

    organs = sorted({organ(image, mask) for image, masks in local.items() for mask in masks})
    value_of = {name: value for value, name in enumerate(organs, start=1)}
    rows = []
    for image, masks in sorted(local.items()):
        target: dict[str, list[str]] = {}
        for mask in sorted(masks):  # an organ may come as several instances (hip_left_000, hip_left_001)
            target.setdefault(organ(image, mask), []).append(mask)
        rows.append({"case": Path(image).stem, "image": image, "target": target})
    manifest = write_json_manifest(
        tmp_path / "ct-slices.json", folder, rows, name="ct-slices", modality="CT",
        classes={str(v): name for name, v in value_of.items()},
    )
    dataset = run_ingest(manifest, tmp_path / "store", dask_cluster, CT_SLICE_SIZE)

    assert sorted(dataset.cases()) == sorted(r["case"] for r in rows)
    for row in rows:
        image = picture(folder / row["image"])
        back = nearest_resize(dataset.read_volume(row["case"]).target, image.shape[:2])[0]
        anywhere = np.zeros(image.shape[:2], bool)
        for name, masks in row["target"].items():
            for mask in masks:
                where = picture(folder / mask) > 0
                assert np.all(back[where] == value_of[name]), (row["case"], mask)
                anywhere |= where
        assert not back[~anywhere].any()
        assert dataset.record(row["case"]).classes == sorted(value_of[name] for name in row["target"])
