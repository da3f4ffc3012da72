"""Ingest the real public releases in ../shared/data through their built-in recipes, as a user would
(`mvg ingest DIR --spec NAME`), and check the round trips and the documented splits.

Each recipe plans the whole release and ingests a few of its cases (all of them where the release
is tiny), so the module stays around a minute on 2 cores. The data is read in place, never copied.
The module skips when ../shared/data is absent (a fresh clone). Credits and licences:
../shared/data/README.md.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pydicom
import pytest
import scipy.io
from PIL import Image
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio

from storage.geometry import to_nifti
from storage.ingest import IngestOptions, IngestReport, ingest
from storage.layouts import DatasetPlan, plan_dataset
from storage.recipes import RECIPES, build_real_store
from storage.store import StoredDataset, ZarrStore


def plan_release(shared_data: Path, spec: str) -> DatasetPlan:
    """What `mvg ingest <folder> --spec <spec>` plans."""
    plan = plan_dataset(shared_data / RECIPES[spec].folder, spec)
    assert not plan.problems, [str(p) for p in plan.problems]
    return plan


def run_ingest(plan: DatasetPlan, store: Path, client, size: int, cases: list[str] | None = None) -> StoredDataset:
    if cases is not None:
        plan.cases = [c for c in plan.cases if c.case in cases]
        assert sorted(c.case for c in plan.cases) == sorted(cases)
    report = ingest(plan, store, client, IngestOptions(size=size))
    assert_no_failures(report)
    return ZarrStore(store).dataset(report.dataset)


def assert_no_failures(report: IngestReport) -> None:
    reasons = "\n".join(f"{r.case}: {r.reason}" for r in report.failed)
    assert report.counts()["failed"] == 0, f"failed cases:\n{reasons}"


def splits(plan: DatasetPlan) -> Counter:
    return Counter(c.split for c in plan.cases)


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


def load_nifti(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


# --------------------------------------------------------------------------------- ACDC

ACDC_SIZE = 128  # the benchmark's; stored labels are compared with the source resized the same way


def test_acdc_slices_regroup_into_training_volumes(shared_data, tmp_path, dask_cluster):
    folder = shared_data / "acdc"
    plan = plan_release(shared_data, "acdc")
    train = [c for c in plan.cases if c.split == "train"]
    test = [c for c in plan.cases if c.split == "test"]
    patient = lambda case: case.case.split("_")[0]  # noqa: E731
    assert (len(train), len({patient(c) for c in train})) == (140, 70)
    assert (len(test), len({patient(c) for c in test})) == (20, 10)
    assert not {patient(c) for c in train} & {patient(c) for c in test}, "a patient on both sides"
    assert sum(len(c.channels[0].stack) for c in train) == 1312
    assert {c.case for c in test} == set((folder / "val.list").read_text().split())
    for case in train:  # slices stacked by K in numeric order, no gap
        ks = [int(re.search(r"_slice_(\d+)\.h5$", p)[1]) for p in case.channels[0].stack]
        assert ks == list(range(1, len(ks) + 1)), case.case

    chosen = ["patient003_frame01", "patient100_frame02", "patient002_frame01", "patient087_frame02"]
    dataset = run_ingest(plan, tmp_path / "store", dask_cluster, ACDC_SIZE, chosen)
    assert sorted(dataset.cases("train")) == chosen[:2] and sorted(dataset.cases("test")) == sorted(chosen[2:])
    for case in plan.cases:
        volume = dataset.read_volume(case.case)
        if case.split == "train":  # the stack of the release's slice files
            label = np.stack([read_h5(Path(p), "label") for p in case.channels[0].stack])
        else:
            label = read_h5(folder / "volumes" / f"{case.case}.h5", "label")
        assert volume.image.shape == (label.shape[0], ACDC_SIZE, ACDC_SIZE)
        assert np.array_equal(volume.target, nearest_resize(label, (ACDC_SIZE, ACDC_SIZE))), case.case
        assert dataset.record(case.case).classes == [1, 2, 3]
        assert not dataset.geometry(case.case).spacing_known, "HDF5 carries no spacing: it is recorded as unknown"


# --------------------------------------------------------------------------------- MS-CMRSeg


def test_mscmrseg_keeps_short_axis_slices_and_maps_label_values(shared_data, tmp_path, dask_cluster):
    folder = shared_data / "cmr-mscmrseg"
    plan = plan_release(shared_data, "cmr-mscmrseg")
    assert splits(plan) == {"train": 28, "test": 7}
    assert sorted(c.case for c in plan.cases if c.split == "test") == [f"case_{n:02d}" for n in (1, 6, 11, 16, 21, 26, 31)]
    assert plan.spec.classes == {1: "left ventricle myocardium", 2: "left ventricle blood pool", 3: "right ventricle blood pool"}

    dataset = run_ingest(plan, tmp_path / "store", dask_cluster, 256, ["case_01", "case_35"])  # 256: no resampling
    for case, n in (("case_01", 1), ("case_35", 35)):
        source = nib.load(folder / f"label_{n}.nii.gz")
        values = np.asanyarray(source.dataobj)
        expected = np.select([values == 200, values == 500, values == 600], [1, 2, 3], 0)
        record = dataset.record(case)
        # the oblique stack's own slices (file axis 2), not cuts across it
        assert record.slices == source.shape[2] and record.classes == [1, 2, 3]
        restored = to_nifti(dataset.read_volume(case).target, dataset.geometry(case))
        assert restored.shape == source.shape
        assert np.array_equal(np.asarray(restored.dataobj), expected), case
        assert np.allclose(restored.affine, source.affine)


# --------------------------------------------------------------------------------- chest X-rays


def test_jsrt_one_mask_gives_lungs_and_heart(shared_data, tmp_path, dask_cluster):
    folder = shared_data / "jsrt"
    plan = plan_release(shared_data, "jsrt")
    assert splits(plan) == {"train": 197, "test": 50}
    names = sorted(c.case for c in plan.cases)
    assert [c.case for c in plan.cases if c.split == "test"] == names[::5]

    chosen = ["JPCLN001", "JPCNN010", "JPCNN093"]
    dataset = run_ingest(plan, tmp_path / "store", dask_cluster, 224, chosen)  # 224: the source size
    for case in chosen:
        mask = picture(folder / "masks" / f"{case}.png")
        target = dataset.read_volume(case).target[0]
        assert np.array_equal(target, np.select([mask == 150, mask == 200, mask == 250], [1, 2, 3], 0)), case
        assert dataset.record(case).classes == [1, 2, 3]
        columns = {value: np.nonzero(target == value)[1].mean() for value in (1, 2)}
        assert columns[1] < columns[2], "the right lung is on the image's left in a PA radiograph"


def test_cxr_binary_masks_become_lungs(shared_data, tmp_path, dask_cluster):
    folder = shared_data / "cxr"
    plan = plan_release(shared_data, "cxr")
    assert splits(plan) == {"train": 4}
    dataset = run_ingest(plan, tmp_path / "store", dask_cluster, 128)
    for n in range(1, 5):
        target = dataset.read_volume(f"cxr{n}").target
        lungs = (picture(folder / f"{n}-mask.png") > 0).astype(np.uint8)[None]
        assert np.array_equal(target, nearest_resize(lungs, (128, 128)))


# --------------------------------------------------------------------------------- CT slices

CT_SLICE_SIZE = 128


def test_ct_slices_merge_organ_masks_and_turn_amos_upright(shared_data, tmp_path, dask_cluster):
    folder = shared_data / "ct-slices"
    plan = plan_release(shared_data, "ct-slices")
    assert sorted(c.case for c in plan.cases) == ["amos_0004_75", "amos_0006_90", "s0114_111", "s0619_32"]
    assert splits(plan) == {"train": 4}  # the AMOS MR slice has no masks: no case
    value_of = {name: value for value, name in plan.spec.classes.items()}
    dataset = run_ingest(plan, tmp_path / "store", dask_cluster, CT_SLICE_SIZE)

    listing = json.loads((folder / "image2label_train.json").read_text())
    for mask, image in json.loads((folder / "label2image_test.json").read_text()).items():
        listing.setdefault(image, []).append(mask)
    for image, masks in listing.items():
        case = Path(image).stem
        upright = (lambda a: a[::-1]) if case.startswith("amos_") else (lambda a: a)  # noqa: E731
        expected = np.zeros(picture(folder / "images" / f"{case}.png").shape[:2], np.uint8)
        organs = sorted((value_of[re.fullmatch(rf"{case}_(.+)_\d{{3}}\.png", Path(m).name)[1].replace("_", " ")], m) for m in masks)
        for value, mask in organs:  # the higher class value wins where masks overlap
            expected[upright(picture(folder / "masks" / Path(mask).name) > 0)] = value
        target = dataset.read_volume(case).target
        assert np.array_equal(target, nearest_resize(expected[None], (CT_SLICE_SIZE, CT_SLICE_SIZE))), case
        assert dataset.record(case).classes == sorted({value for value, _ in organs})
    # upright: the table (the bright arcs) of an AMOS slice is now at the bottom
    image = dataset.read_volume("amos_0004_75").image[0].astype(np.float32)
    assert image[-16:].mean() > image[:16].mean()


# --------------------------------------------------------------------------------- low-dose CT


def window(hu: np.ndarray) -> np.ndarray:
    return np.clip((hu + 100) / 300, 0, 1)


def test_ldct_mayo_pairs_split_by_patient(shared_data, tmp_path, dask_cluster):
    folder = shared_data / "ldct-mayo"
    plan = plan_release(shared_data, "ldct-mayo")
    assert splits(plan) == {"train": 26, "test": 10}
    assert {c.case.split("_")[0] for c in plan.cases if c.split == "test"} == {"L096"}
    chosen = ["L096_0021", "L143_0039"]
    dataset = run_ingest(plan, tmp_path / "store", dask_cluster, 512, chosen)  # 512: nothing resampled
    for case in chosen:
        patient = case.split("_")[0]
        quarter, full = (pydicom.dcmread(folder / patient / dose / f"{case}.IMA") for dose in ("quarter", "full"))
        # rows run posterior and columns to the patient's left (LPS): canonical RAS flips both
        hu = [(d.pixel_array.astype(np.float32) * float(d.RescaleSlope) + float(d.RescaleIntercept))[::-1, ::-1] for d in (quarter, full)]
        volume = dataset.read_volume(case)
        assert volume.image.shape == volume.target.shape == (1, 512, 512)
        assert np.abs(volume.image[0] - window(hu[0])).max() < 1e-3
        assert np.abs(volume.target[0] - window(hu[1])).max() < 1e-3
        stored = peak_signal_noise_ratio(volume.target, volume.image, data_range=1)
        assert stored == pytest.approx(peak_signal_noise_ratio(window(hu[1]), window(hu[0]), data_range=1), abs=0.05)


# README: quarter vs routine dose after HU and window [-100, 200] -> [0, 1]
LDCT_PSNR = {"test_case1": 21.5, "test_case2": 17.9, "test_case3": 19.8}


def test_ldct_mat_pairs_reproduce_the_readme(shared_data, tmp_path, dask_cluster):
    folder = shared_data / "ldct"
    plan = plan_release(shared_data, "ldct")
    assert splits(plan) == {"train": 3}
    dataset = run_ingest(plan, tmp_path / "store", dask_cluster, 512)
    for case, expected in LDCT_PSNR.items():
        volume = dataset.read_volume(case)
        assert peak_signal_noise_ratio(volume.target, volume.image, data_range=1) == pytest.approx(expected, abs=0.5), case
        routine = scipy.io.loadmat(folder / f"{case}.mat")["routine_dose"]
        assert np.abs(volume.target[0] - window((routine - 0.0192) / 0.0192 * 1000)).max() < 1e-3


# --------------------------------------------------------------------------------- BraTS


def test_brats2013_flair_to_t1c_with_the_release_splits(shared_data, tmp_path, dask_cluster):
    plan = plan_release(shared_data, "brats2013")
    assert {c.case: c.split for c in plan.cases} == {
        "brats_2013_pat0005_1": "train", "brats_2013_pat0006_1": "train",  # train/
        "brats_2013_pat0003_1": "train", "brats_2013_pat0004_1": "train",  # validation/
        "brats_2013_pat0001_1": "test", "brats_2013_pat0002_1": "test",  # test/
    }
    case = "brats_2013_pat0001_1"
    dataset = run_ingest(plan, tmp_path / "store", dask_cluster, 64, [case])
    assert dataset.spec.task == "synthesis" and dataset.record(case).roles == ["image", "target"]
    volume = dataset.read_volume(case)
    assert volume.image.shape == volume.target.shape == (155, 64, 64)
    flair = nib.as_closest_canonical(nib.load(shared_data / "brats2013-deepmedic" / "test" / case / "Flair_subtrMeanDivStd.nii.gz"))
    centre = np.asanyarray(flair.dataobj)[:, :, 77].T  # canonical (x, y, z) -> the stored (y, x) slice
    resized = nearest_resize(centre[None].astype(np.float32), (64, 64))[0]
    assert np.corrcoef(resized.ravel(), volume.image[77].astype(np.float32).ravel())[0, 1] > 0.9, "input is FLAIR"


def test_brats_synthesis_takes_flair_to_t1c(shared_data, tmp_path, dask_cluster):
    plan = plan_release(shared_data, "brats-synthesis")
    assert [(c.case, c.split, [Path(f.path).name for f in c.channels]) for c in plan.cases] == [
        ("brats-synthesis", "train", ["t1n.nii.gz", "t1c.nii.gz", "t2w.nii.gz", "t2f.nii.gz"])
    ]
    assert (plan.spec.input_channel, plan.spec.target_channel) == (3, 1)
    dataset = run_ingest(plan, tmp_path / "store", dask_cluster, 64)
    case = "brats-synthesis"
    for role, contrast in (("image", "t2f"), ("target", "t1c")):
        array = dataset.array(case, role)[...]
        assert array.dtype == np.float16 and array.shape == (155, 64, 64)
        assert array.min() == 0.0 and array.max() == 1.0  # percentile clip -> [0, 1]
        source = load_nifti(shared_data / "brats-synthesis" / f"{contrast}.nii.gz")
        low, high = dataset.record(case).intensity[role]["low"], dataset.record(case).intensity[role]["high"]
        assert low == pytest.approx(np.percentile(source, 0.5), rel=0.05, abs=1.0)
        assert high == pytest.approx(np.percentile(source, 99.5), rel=0.05)


BRATS_INPAINTING_SIZE = 240  # the source in-plane size: no resampling, so "outside the mask" is exact


def test_brats_inpainting_shares_one_scaling(shared_data, tmp_path, dask_cluster):
    folder = shared_data / "brats-inpainting"
    stem = "BraTS-GLI-00001-000"
    plan = plan_release(shared_data, "brats-local")
    assert [(c.case, c.split) for c in plan.cases] == [(stem, "train")]
    dataset = run_ingest(plan, tmp_path / "store", dask_cluster, BRATS_INPAINTING_SIZE)

    record = dataset.record(stem)
    assert record.roles == ["image", "target", "mask"]
    assert record.intensity["image"] == record.intensity["target"]
    volume = dataset.read_volume(stem)
    mask = volume.mask.astype(bool)
    assert mask.sum() == np.count_nonzero(load_nifti(folder / f"{stem}-mask.nii.gz")) > 0
    assert np.array_equal(volume.image[~mask], volume.target[~mask])
    assert volume.image[mask].max() == 0.0  # the voided region
    assert volume.target[mask].max() > 0.0  # ... which the ground truth fills


BRATS_LOCAL_TRAIN = "brats-synthesis-voided-BraTS-GLI-00001-000"  # derived: see storage.derived


def test_brats_local_derived_training_case_is_another_subject_voided_under_the_mask(shared_data, tmp_path):
    from storage.derived import subject_correlation
    from storage.recipes import plan_brats_local_held_out
    from storage.specs import get_spec

    stem = shared_data / "brats-inpainting" / "BraTS-GLI-00001-000"
    source_path, derived = shared_data / "brats-synthesis" / "t1n.nii.gz", tmp_path / "real-store-derived"
    lines: list[str] = []
    plan = plan_brats_local_held_out(shared_data, derived, get_spec("brats-local"), lines.append)
    assert not plan.problems and {c.case: c.split for c in plan.cases} == {"BraTS-GLI-00001-000": "test", BRATS_LOCAL_TRAIN: "train"}
    voided_path = derived / "brats-local" / BRATS_LOCAL_TRAIN / f"{BRATS_LOCAL_TRAIN}-t1n-voided.nii.gz"

    # the published case: voided = t1n outside the mask, 0 inside (the voiding the derivation copies)
    published, mask_image = nib.load(f"{stem}-t1n.nii.gz"), nib.load(f"{stem}-mask.nii.gz")
    truth, mask = load_nifti(f"{stem}-t1n.nii.gz"), load_nifti(f"{stem}-mask.nii.gz") > 0
    published_voided = load_nifti(f"{stem}-t1n-voided.nii.gz")
    assert np.all(published_voided[mask] == 0) and np.array_equal(published_voided[~mask], truth[~mask])
    # the source: another subject on the same grid
    source_image = nib.load(source_path)
    source = np.asanyarray(source_image.dataobj)
    assert source.shape == truth.shape == mask.shape == (240, 240, 155)
    assert np.allclose(source_image.affine, published.affine) and np.allclose(source_image.affine, mask_image.affine)
    assert subject_correlation(source, truth) < 0.5  # 0.32; one subject would be about 1
    heads = source > 0, truth > 0
    assert 2 * (heads[0] & heads[1]).sum() / (heads[0].sum() + heads[1].sum()) < 0.8  # brain masks: Dice 0.76
    # the derived voided image: 0 exactly under the mask, the source t1n elsewhere
    written = nib.load(voided_path)
    voided = np.asanyarray(written.dataobj)
    assert np.array_equal(written.affine, source_image.affine) and voided.shape == source.shape
    assert np.all(voided[mask] == 0) and np.array_equal(voided[~mask], source[~mask])
    assert np.count_nonzero(source[mask]) > 0.7 * mask.sum()  # the voided region held brain (74 %)

    stamp = voided_path.stat().st_mtime_ns, voided_path.stat().st_ino
    plan_brats_local_held_out(shared_data, derived, get_spec("brats-local"), lines.append)
    assert lines[-1].startswith(f"brats-local: reused training case {BRATS_LOCAL_TRAIN}"), lines
    assert (voided_path.stat().st_mtime_ns, voided_path.stat().st_ino) == stamp


def test_build_real_store_holds_out_the_published_brats_local_case(shared_data, tmp_path, dask_cluster):
    store, lines = tmp_path / "real-store", []
    built = build_real_store(shared_data, store, size=BRATS_INPAINTING_SIZE, client=dask_cluster, datasets=["brats-local"], log=lines.append)
    assert built == {"brats-local": "inpainting"}
    dataset = ZarrStore(store).dataset("brats-local")
    assert dataset.cases("train") == [BRATS_LOCAL_TRAIN] and dataset.cases("test") == ["BraTS-GLI-00001-000"]
    derived = tmp_path / "real-store-derived" / "brats-local" / BRATS_LOCAL_TRAIN
    assert dataset.record(BRATS_LOCAL_TRAIN).sources == [
        str(derived / f"{BRATS_LOCAL_TRAIN}-t1n-voided.nii.gz"), str(shared_data / "brats-synthesis" / "t1n.nii.gz"),
        str(shared_data / "brats-inpainting" / "BraTS-GLI-00001-000-mask.nii.gz"),
    ]
    test = dataset.read_volume("BraTS-GLI-00001-000")
    for volume in (dataset.read_volume(BRATS_LOCAL_TRAIN), test):
        inside = volume.mask.astype(bool)
        assert volume.image[inside].max() == 0 and np.array_equal(volume.image[~inside], volume.target[~inside])
    assert np.array_equal(dataset.read_volume(BRATS_LOCAL_TRAIN).mask, test.mask)  # the one mask, two subjects
    assert not np.array_equal(dataset.read_volume(BRATS_LOCAL_TRAIN).target, test.target)
    assert "brats-local (inpainting): 1 train, 1 test; 2 ingested, 0 unchanged, 0 failed" in lines
    build_real_store(shared_data, store, size=BRATS_INPAINTING_SIZE, client=dask_cluster, datasets=["brats-local"], log=lines.append)
    assert lines[-2].startswith(f"brats-local: reused training case {BRATS_LOCAL_TRAIN}"), lines
    assert lines[-1] == "brats-local (inpainting): 1 train, 1 test; 0 ingested, 2 unchanged, 0 failed"


def test_brats_edema_segmentation(shared_data, tmp_path, dask_cluster):
    folder = shared_data / "brats-edema"
    plan = plan_release(shared_data, "brats-edema")
    case = "BraTS2021_01646"
    assert [(c.case, c.split) for c in plan.cases] == [(case, "train")]
    dataset = run_ingest(plan, tmp_path / "store", dask_cluster, 160)
    assert dataset.spec.classes == {1: "edema"} and dataset.record(case).classes == [1]
    labels = load_nifti(folder / "labelsTr" / f"{case}.nii.gz")
    # The file is RAS already: the canonical (z, y, x) array is the file transposed.
    assert np.array_equal(dataset.read_volume(case).target, labels.transpose(2, 1, 0))
    assert dataset.geometry(case).spacing == (1.5, 1.5, 1.5)


# --------------------------------------------------------------------------------- spinal cord

SCT_SIZE = 96  # above every canonical in-plane size (at most 77): nearest resizing back is exact
SCT_MASKS = {
    "t1": ("t1/t1w.nii.gz", "t1/t1w_seg-manual.nii.gz", None),
    "t2": ("t2/t2.nii.gz", "t2/t2_seg-manual.nii.gz", None),
    "t2s": ("t2s/t2s.nii.gz", "t2s/t2s_seg.nii.gz", "t2s/t2s_gmseg_manual.nii.gz"),
    "mt1": ("mt/mt1.nii.gz", "mt/mt1_seg.nii.gz", "mt/mt1_gmseg_goldstandard.nii.gz"),
}


def test_spinal_cord_geometry_is_recoverable(shared_data, tmp_path, dask_cluster):
    folder = shared_data / "sct"
    plan = plan_release(shared_data, "sct")
    assert {c.case: c.split for c in plan.cases} == dict.fromkeys(SCT_MASKS, "train")
    dataset = run_ingest(plan, tmp_path / "store", dask_cluster, SCT_SIZE)

    for case, (image, cord, grey) in SCT_MASKS.items():
        expected = (load_nifti(folder / cord) > 0).astype(np.uint8)
        if grey:
            expected[load_nifti(folder / grey) > 0] = 2
        source = nib.load(folder / image)
        canonical_x, canonical_y, _ = nib.as_closest_canonical(source).shape
        geometry = dataset.geometry(case)
        assert geometry.spacing_known
        restored = to_nifti(nearest_resize(dataset.read_volume(case).target, (canonical_y, canonical_x)), geometry)
        assert restored.shape == source.shape
        assert np.array_equal(np.asarray(restored.dataobj), expected), case
        assert np.array_equal(restored.affine, source.affine), case
        assert dataset.record(case).classes == ([1, 2] if grey else [1])


# --------------------------------------------------------------------------------- the real store


def test_build_real_store_returns_what_it_built(shared_data, tmp_path, dask_cluster):
    chosen = ["cxr", "ldct", "brats-edema"]
    lines: list[str] = []
    built = build_real_store(shared_data, tmp_path / "store", size=64, client=dask_cluster, datasets=chosen, log=lines.append)
    assert built == {"cxr": "segmentation", "ldct": "denoising", "brats-edema": "segmentation"}
    assert sorted(ZarrStore(tmp_path / "store").datasets()) == sorted(chosen)
    assert any(line.startswith("ldct (denoising): 3 train, 0 test; 3 ingested") for line in lines), lines
    again = build_real_store(shared_data, tmp_path / "store", size=64, client=dask_cluster, datasets=chosen, log=lines.append)
    assert again == built and "0 ingested" in lines[-1], "a second build only checks the checksums"


# --------------------------------------------------------------------------------- connected classes


def outside_largest_component(labels: np.ndarray, value: int) -> tuple[int, int]:
    """(voxels of class `value`, those outside its largest face-connected component)."""
    components, count = ndimage.label(labels == value)
    sizes = np.bincount(components.ravel())[1:]
    return int(sizes.sum()), int(sizes.sum() - (sizes.max() if count else 0))


def release_labels(shared_data: Path, spec: str):
    folder = shared_data / RECIPES[spec].folder
    if spec == "acdc":  # the test volumes: the training cases are stacks of the same slices
        return (read_h5(path, "label") for path in sorted((folder / "volumes").glob("*.h5")))
    if spec == "cmr-mscmrseg":
        return (np.select([(v := load_nifti(p)) == 200, v == 500, v == 600], [1, 2, 3], 0)
                for p in sorted(folder.glob("label_*.nii.gz")))
    return (np.select([(m := picture(p)) == 150, m == 200, m == 250], [1, 2, 3], 0)
            for p in sorted((folder / "masks").glob("*.png")))


@pytest.mark.parametrize("spec", ["acdc", "cmr-mscmrseg", "jsrt"])
def test_the_classes_a_spec_declares_connected_are_one_structure_in_the_release(shared_data, spec):
    """What `mvg.postprocessing` relies on: nearly every voxel of a declared class lies in its
    largest face-connected component, in the release's own labels at their own resolution."""
    declared = plan_release(shared_data, spec).spec.connected_classes
    assert declared == (1, 2, 3)
    totals = Counter()
    for labels in release_labels(shared_data, spec):
        for value in declared:
            voxels, outside = outside_largest_component(labels, value)
            totals["voxels"], totals["outside"] = totals["voxels"] + voxels, totals["outside"] + outside
    assert totals["voxels"] > 0 and totals["outside"] / totals["voxels"] < 0.01, totals
