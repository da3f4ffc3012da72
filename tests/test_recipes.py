"""Recipes on tiny synthetic folders laid out like each public release (no real data needed).

The planners are pure (they list files); a few cases are also ingested, one by one without Dask,
to check what the recipe's read options do: slices stacked by K, an oblique stack kept in its
acquisition planes, label values mapped, AMOS slices turned upright, unused BraTS channels left
undecoded. The same recipes on the real releases: tests/test_real_data.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import scipy.io
from PIL import Image

from flows.cli import main
from storage.geometry import to_nifti
from storage.ingest import CatalogWriter, IngestOptions, IngestReport, ingest_case
from storage.layouts import DatasetPlan, LayoutError, plan_dataset
from storage.preprocess import map_labels
from storage.readers import read_scan
from storage.recipes import RECIPES, build_real_store, every_fifth
from storage.specs import DatasetSpec, get_spec
from storage.store import StoredDataset, ZarrStore
from tests.test_readers import ct_slice


def ingest_serially(plan: DatasetPlan, store: Path, size: int) -> tuple[IngestReport, StoredDataset]:
    writer = CatalogWriter(store, plan)
    for case in plan.cases:
        writer.add(ingest_case(case, plan.spec, writer.directory, plan.declared_labels, IngestOptions(size=size)))
    report = writer.finish()
    return report, ZarrStore(store).dataset(report.dataset)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def save_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path


def cases_by_split(plan: DatasetPlan) -> dict[str, list[str]]:
    split: dict[str, list[str]] = {}
    for case in plan.cases:
        split.setdefault(case.split, []).append(case.case)
    return split


# --------------------------------------------------------------------------------- the split rule


def test_every_fifth_is_a_rule_a_reader_can_apply():
    names = [f"case_{n}" for n in range(1, 13)]
    random.Random(0).shuffle(names)
    split = every_fifth(names)
    assert sorted(n for n, s in split.items() if s == "test") == ["case_1", "case_11", "case_6"]  # natural order
    assert every_fifth(["only"]) == {"only": "train"}
    assert every_fifth(["b", "a"]) == {"a": "test", "b": "train"}
    assert sum(s == "test" for s in every_fifth(str(n) for n in range(35)).values()) == 7


# --------------------------------------------------------------------------------- ACDC


def write_h5(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as file:
        file["image"] = image
        file["label"] = label


def test_acdc_slices_stack_by_k_into_training_volumes(tmp_path):
    root = tmp_path / "acdc"
    for volume, ks in (("patient001_frame01", range(1, 12)), ("patient001_frame02", (1, 2)), ("patient004_frame01", (1, 3))):
        for k in ks:  # slice k: image k / 20 everywhere, label k % 4 in a square
            label = np.zeros((8, 8), np.uint8)
            label[2:6, 2:6] = k % 4
            write_h5(root / "slices" / f"{volume}_slice_{k}.h5", np.full((8, 8), k / 20, np.float32), label)
    write_h5(root / "slices" / "notes.h5", np.zeros((8, 8)), np.zeros((8, 8), np.uint8))
    volume = np.zeros((3, 8, 8), np.uint8)
    volume[:, 1:4, 1:4] = 2
    for name in ("patient009_frame01", "patient001_frame01"):  # the second is also given by the slices
        write_h5(root / "volumes" / f"{name}.h5", np.random.default_rng(0).random((3, 8, 8)).astype(np.float32), volume)

    plan = plan_dataset(root, "acdc")
    assert cases_by_split(plan) == {"train": ["patient001_frame01", "patient001_frame02"], "test": ["patient009_frame01"]}
    problems = {p.case: p.reason for p in plan.problems}
    assert sorted(problems) == ["notes", "patient004_frame01"]
    assert "slice(s) [2] of patient004_frame01 are missing" in problems["patient004_frame01"]
    stack = plan.cases[0].channels[0].stack
    assert [Path(p).name for p in stack[8:10]] == ["patient001_frame01_slice_9.h5", "patient001_frame01_slice_10.h5"]

    report, dataset = ingest_serially(plan, tmp_path / "store", 8)
    assert report.counts() == {"ingested": 3, "skipped": 0, "failed": 2}  # the two unplannable ones
    stored = dataset.read_volume("patient001_frame01")
    assert stored.target.shape == (11, 8, 8)
    assert [int(stored.target[k - 1, 3, 3]) for k in range(1, 12)] == [k % 4 for k in range(1, 12)]
    assert np.all(np.diff(stored.image[:, 0, 0].astype(np.float32)) > 0), "slices in K order"
    assert dataset.record("patient009_frame01").split == "test"
    assert dataset.record("patient001_frame01").sources[:2] == list(stack[:2])


# --------------------------------------------------------------------------------- MS-CMRSeg

# an oblique short-axis stack: 3 slices along a direction nearest R, in-plane axes nearest S and A
OBLIQUE = np.array([[0.0, 0.6, 4.8, 10.0], [0.2, 1.2, 0.0, -5.0], [1.25, -0.1, 3.6, 7.0], [0, 0, 0, 1]])


def test_mscmrseg_maps_label_values_and_keeps_acquired_slices(tmp_path):
    root = tmp_path / "cmr"
    rng = np.random.default_rng(1)
    labels = {}
    for n in range(1, 7):
        label = np.zeros((16, 12, 3))  # float64 like the release
        label[4:9, 3:8, :] = 500
        label[3:10, 2:3, :] = 200
        label[10:14, 6:10, 1:] = 600
        labels[n] = label
        save_nifti(root / f"image_{n}.nii.gz", rng.random((16, 12, 3)), OBLIQUE)
        if n != 4:
            save_nifti(root / f"label_{n}.nii.gz", label, OBLIQUE)
    labels[5][0, 0, 0] = 300
    save_nifti(root / "label_5.nii.gz", labels[5], OBLIQUE)

    plan = plan_dataset(root, "cmr-mscmrseg")
    assert cases_by_split(plan) == {"test": ["case_01", "case_06"], "train": ["case_02", "case_03", "case_04", "case_05"]}
    report, dataset = ingest_serially(plan, tmp_path / "store", 16)
    failed = {r.case: r.reason for r in report.failed}
    assert set(failed) == {"case_04", "case_05"}
    assert "label_4.nii.gz: file not found" in failed["case_04"]
    assert "label values [300] are not in the spec's label map" in failed["case_05"]

    record = dataset.record("case_01")
    assert record.slices == 3 and record.classes == [1, 2, 3]
    restored = to_nifti(read_back(dataset, "case_01"), dataset.geometry("case_01"))
    expected = np.select([labels[1] == 200, labels[1] == 500, labels[1] == 600], [1, 2, 3], 0)
    np.testing.assert_array_equal(np.asarray(restored.dataobj), expected)
    np.testing.assert_allclose(restored.affine, OBLIQUE)


def read_back(dataset: StoredDataset, case: str) -> np.ndarray:
    """The stored target at the source's in-plane size (16 x 12 here, stored square at 16)."""
    from scipy import ndimage

    target = dataset.read_volume(case).target
    geometry = dataset.geometry(case)
    shape = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
    sizes = {shape[c]: n for c, n in zip(geometry.source_axcodes, geometry.source_shape)}
    y, x = sizes[shape[geometry.axcodes[1]]], sizes[shape[geometry.axcodes[0]]]
    return ndimage.zoom(target, (1, y / target.shape[1], x / target.shape[2]), order=0, mode="nearest", grid_mode=True)


def test_label_map_is_declared_and_refuses_unknown_values():
    assert np.array_equal(map_labels(np.array([[0, 200], [600, 500]], np.uint16), {200: 1, 500: 2, 600: 3}), [[0, 1], [3, 2]])
    with pytest.raises(ValueError, match=r"label values \[7\]"):
        map_labels(np.array([0, 7]), {1: 1})
    spec = get_spec("jsrt")
    assert DatasetSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="label_map gives class"):
        spec.with_overrides(label_map={150: 9})


# --------------------------------------------------------------------------------- chest X-rays


def jsrt_mask(heart: int = 250) -> np.ndarray:
    mask = np.zeros((16, 16), np.uint8)
    mask[2:12, 1:6] = 150  # right lung, image left
    mask[2:12, 10:15] = 200
    mask[9:14, 6:10] = heart
    return mask


def test_jsrt_one_mask_three_classes(tmp_path):
    root = tmp_path / "jsrt"
    for n in range(1, 7):
        name = f"JPCLN{n:03d}.png"
        save_png(root / "images" / name, np.full((16, 16), 10 * n))
        save_png(root / "masks" / name, jsrt_mask(100 if n == 2 else 250))
    (root / "jsrt_metadata.csv").write_text("study_id\n")

    plan = plan_dataset(root, "jsrt")
    assert cases_by_split(plan)["test"] == ["JPCLN001", "JPCLN006"]
    plan.cases = plan.cases[:2]
    report, dataset = ingest_serially(plan, tmp_path / "store", 16)
    assert [r.case for r in report.failed] == ["JPCLN002"]
    assert "label values [100]" in report.failed[0].reason
    expected = np.select([jsrt_mask() == 150, jsrt_mask() == 200, jsrt_mask() == 250], [1, 2, 3], 0)
    np.testing.assert_array_equal(dataset.read_volume("JPCLN001").target[0], expected)


def test_cxr_masks_become_lungs_and_a_missing_mask_fails_its_case(tmp_path):
    root = tmp_path / "cxr"
    for n in (1, 2):
        save_png(root / f"{n}.png", np.full((8, 8), 40 * n))
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 1:7] = 255
    save_png(root / "1-mask.png", mask)

    plan = plan_dataset(root, "cxr")
    assert cases_by_split(plan) == {"train": ["cxr1", "cxr2"]}
    report, dataset = ingest_serially(plan, tmp_path / "store", 8)
    assert [r.case for r in report.failed] == ["cxr2"] and "2-mask.png: file not found" in report.failed[0].reason
    np.testing.assert_array_equal(dataset.read_volume("cxr1").target[0], mask // 255)


# --------------------------------------------------------------------------------- CT slices


def test_ct_slices_listing_organs_instances_and_upright_amos(tmp_path):
    root = tmp_path / "ct-slices"
    image = np.tile(np.arange(12, dtype=np.uint8)[:, None] * 20, (1, 12))  # brighter downwards as stored
    for name in ("amos_0001_5", "s0001_7", "s0002_1", "amos_0500_1"):
        save_png(root / "images" / f"{name}.png", np.stack([image] * 3, axis=-1))  # RGB with equal channels
    liver = np.zeros((12, 12), np.uint8)
    liver[1:4, 2:6] = 255  # near the top as stored: near the bottom once upright
    hips = [np.zeros((12, 12), np.uint8) for _ in range(2)]
    hips[0][5:7, 1:3] = 255
    hips[1][5:7, 7:9] = 255
    save_png(root / "masks" / "amos_0001_5_liver_000.png", liver)
    save_png(root / "masks" / "s0001_7_hip_left_000.png", hips[0])
    save_png(root / "masks" / "s0001_7_hip_left_001.png", hips[1])
    save_png(root / "masks" / "s0002_1_brain_000.png", liver)
    (root / "image2label_train.json").write_text(json.dumps({
        "data_demo/images/amos_0001_5.png": ["data_demo/masks/amos_0001_5_liver_000.png"],
        "data_demo/images/s0002_1.png": ["data_demo/masks/s0002_1_brain_000.png"],
    }))
    (root / "label2image_test.json").write_text(json.dumps({
        "data_demo/masks/s0001_7_hip_left_000.png": "data_demo/images/s0001_7.png",
        "data_demo/masks/s0001_7_hip_left_001.png": "data_demo/images/s0001_7.png",
    }))

    plan = plan_dataset(root, "ct-slices")
    assert cases_by_split(plan) == {"train": ["amos_0001_5", "s0001_7"]}  # amos_0500_1 has no masks
    assert [p.case for p in plan.problems] == ["s0002_1"] and "'brain' is not among" in plan.problems[0].reason
    report, dataset = ingest_serially(plan, tmp_path / "store", 12)
    value = {name: v for v, name in plan.spec.classes.items()}
    amos = dataset.read_volume("amos_0001_5")
    np.testing.assert_array_equal(amos.target[0], np.where(liver[::-1] > 0, value["liver"], 0))
    assert amos.image[0, 0, 0] > amos.image[0, -1, 0], "upright: flipped top to bottom"
    hip = dataset.read_volume("s0001_7").target[0]
    np.testing.assert_array_equal(hip, np.where((hips[0] | hips[1]) > 0, value["hip left"], 0))
    assert dataset.read_volume("s0001_7").image[0, 0, 0] < dataset.read_volume("s0001_7").image[0, -1, 0], "not flipped"


# --------------------------------------------------------------------------------- low-dose CT


def test_ldct_mayo_pairs_by_file_name_split_by_patient(tmp_path):
    root = tmp_path / "ldct-mayo"
    rng = np.random.default_rng(2)
    for patient, slices in (("L001", (3, 10)), ("L002", (4,)), ("L003", (5,))):
        for number in slices:
            full = rng.integers(900, 1300, (8, 8))
            for dose, pixels in (("full", full), ("quarter", full + rng.integers(-60, 60, (8, 8)))):
                folder = root / patient / dose
                folder.mkdir(parents=True, exist_ok=True)
                ct_slice(folder / f"{patient}_{number:04d}.IMA", pixels, (0.0, 0.0, 3.0 * number), f"1.2.3.{number}", number)
    touch(root / "L002" / "quarter" / "L002_0009.IMA")  # no full-dose partner

    plan = plan_dataset(root, "ldct-mayo")
    assert cases_by_split(plan) == {"test": ["L001_0003", "L001_0010"], "train": ["L002_0004", "L003_0005"]}
    assert [p.case for p in plan.problems] == ["L002_0009"] and "no full-dose slice" in plan.problems[0].reason
    plan.cases = plan.cases[:1]
    _, dataset = ingest_serially(plan, tmp_path / "store", 8)
    case = plan.cases[0]
    quarter, full = (read_scan(f.path).array for f in case.channels)
    volume = dataset.read_volume("L001_0003")
    np.testing.assert_allclose(volume.image, np.clip((quarter + 100) / 300, 0, 1), atol=1e-3)
    np.testing.assert_allclose(volume.target, np.clip((full + 100) / 300, 0, 1), atol=1e-3)


def test_ldct_mat_slices_in_attenuation(tmp_path):
    root = tmp_path / "ldct"
    root.mkdir()
    routine = np.full((8, 8), 0.0192 * 1.05, np.float32)  # 50 HU
    scipy.io.savemat(str(root / "test_case1.mat"), {"quarter_dose": routine * 1.01, "routine_dose": routine})
    plan = plan_dataset(root, "ldct")
    assert cases_by_split(plan) == {"train": ["test_case1"]}
    _, dataset = ingest_serially(plan, tmp_path / "store", 8)
    assert float(dataset.read_volume("test_case1").target[0, 0, 0]) == pytest.approx(150 / 300, abs=1e-3)


# --------------------------------------------------------------------------------- BraTS


def test_brats2013_folders_are_the_splits(tmp_path):
    root = tmp_path / "brats2013-deepmedic"
    for folder, case in (("train", "p5"), ("validation", "p3"), ("test", "p1")):
        for name in ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz", "brainmask.nii.gz"):
            touch(root / folder / case / name)
    plan = plan_dataset(root, "brats2013")
    assert {c.case: c.split for c in plan.cases} == {"p5": "train", "p3": "train", "p1": "test"}
    assert [Path(f.path).name for f in plan.cases[0].channels] == ["Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz"]
    assert (plan.spec.input_channel, plan.spec.target_channel, plan.spec.task) == (0, 1, "synthesis")


def test_brats_synthesis_bare_files_and_case_folders(tmp_path):
    one = tmp_path / "brats-synthesis"
    volume = np.random.default_rng(3).random((6, 6, 4)).astype(np.float32)
    for contrast, data in (("t1c", volume), ("t2f", volume[::-1].copy())):
        save_nifti(one / f"{contrast}.nii.gz", data)
    for contrast in ("t1n", "t2w"):  # channels the FLAIR -> T1c pair never decodes
        (one / f"{contrast}.nii.gz").write_bytes(b"\x1f\x8b not really")
    plan = plan_dataset(one, "brats-synthesis")
    assert [(c.case, c.split, len(c.channels)) for c in plan.cases] == [("brats-synthesis", "train", 4)]
    report, dataset = ingest_serially(plan, tmp_path / "store", 6)
    assert report.counts()["ingested"] == 1, report.rows()
    record = dataset.record("brats-synthesis")
    assert record.sources[3].endswith("t2f.nii.gz") and record.roles == ["image", "target"]

    many = tmp_path / "BraTS2023"
    for case in ("BraTS-GLI-00000-000", "BraTS-GLI-00002-000", "BraTS-GLI-00003-000"):
        for contrast in ("t1n", "t1c", "t2w", "t2f"):
            if not (case.endswith("3-000") and contrast == "t1c"):
                touch(many / case / f"{case}-{contrast}.nii.gz")
    plan = plan_dataset(many, "brats-synthesis")
    assert cases_by_split(plan) == {"test": ["BraTS-GLI-00000-000"], "train": ["BraTS-GLI-00002-000"]}
    assert [p.case for p in plan.problems] == ["BraTS-GLI-00003-000"] and "t1c" in plan.problems[0].reason


def test_brats_local_files(tmp_path):
    root = tmp_path / "brats-inpainting"
    for part in ("t1n-voided", "t1n", "mask"):
        touch(root / f"BraTS-GLI-00001-000-{part}.nii.gz")
    touch(root / "BraTS-GLI-00002-000-t1n-voided.nii.gz")  # the test set: no ground truth
    plan = plan_dataset(root, "brats-local")
    [case] = plan.cases
    assert (case.case, [Path(f.path).name for f in case.channels], Path(case.label.path).name) == (
        "BraTS-GLI-00001-000", ["BraTS-GLI-00001-000-t1n-voided.nii.gz", "BraTS-GLI-00001-000-t1n.nii.gz"],
        "BraTS-GLI-00001-000-mask.nii.gz",
    )
    assert [p.case for p in plan.problems] == ["BraTS-GLI-00002-000"]


# BraTS's SRI24 grid is LPS: x and y flipped, origin at the far corner
SRI24_LIKE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 11], [0, 0, 1.0, 0], [0, 0, 0, 1]])


def brats_data(root: Path, seed: int = 5) -> dict[str, np.ndarray]:
    """A data folder with a one-case BraTS-Local release (voided t1n, mask, t1n; int16 and float32 as
    published) and a bare-files synthesis release (float64 t1n of another 'subject'), 12x12x5 voxels."""
    rng = np.random.default_rng(seed)
    head = np.zeros((12, 12, 5), bool)
    head[1:11, 1:11, :] = True
    local = np.where(head, rng.integers(50, 900, head.shape), 0).astype(np.int16)
    other = np.where(head, rng.integers(10, 600, head.shape), 0).astype(np.float64)
    mask = np.zeros(head.shape, np.float32)
    mask[3:7, 4:9, 1:4] = 1
    stem = root / "brats-inpainting" / "BraTS-GLI-00001-000"
    save_nifti(Path(f"{stem}-t1n.nii.gz"), local, SRI24_LIKE)
    save_nifti(Path(f"{stem}-mask.nii.gz"), mask, SRI24_LIKE)
    save_nifti(Path(f"{stem}-t1n-voided.nii.gz"), np.where(mask > 0, 0, local).astype(np.float32), SRI24_LIKE)
    for contrast in ("t1n", "t1c", "t2w", "t2f"):
        save_nifti(root / "brats-synthesis" / f"{contrast}.nii.gz", other if contrast == "t1n" else other * 2, SRI24_LIKE)
    return {"local": local, "other": other, "mask": mask}


DERIVED_CASE = "brats-synthesis-voided-BraTS-GLI-00001-000"


def test_brats_local_held_out_derives_a_training_case_from_another_subject(tmp_path):
    from storage.derived import file_digest
    from storage.recipes import plan_brats_local_held_out

    data, derived = tmp_path / "data", tmp_path / "store-derived"
    arrays = brats_data(data)
    spec, lines = get_spec("brats-local"), []
    plan = plan_brats_local_held_out(data, derived, spec, lines.append)
    assert not plan.problems and cases_by_split(plan) == {"test": ["BraTS-GLI-00001-000"], "train": [DERIVED_CASE]}
    [train] = [c for c in plan.cases if c.split == "train"]
    folder = derived / "brats-local" / DERIVED_CASE
    voided_path = folder / f"{DERIVED_CASE}-t1n-voided.nii.gz"
    assert [f.path for f in train.channels] == [str(voided_path), str(data / "brats-synthesis" / "t1n.nii.gz")]
    assert train.label.path == str(data / "brats-inpainting" / "BraTS-GLI-00001-000-mask.nii.gz")  # read in place
    written = nib.load(voided_path)
    voided, under = np.asanyarray(written.dataobj), arrays["mask"] > 0
    assert voided.dtype == np.float64 and np.array_equal(written.affine, SRI24_LIKE)
    assert np.all(voided[under] == 0) and np.array_equal(voided[~under], arrays["other"][~under])
    assert np.count_nonzero(arrays["other"][under]) == under.sum(), "the region voided held brain"
    record = json.loads((folder / "derivation.json").read_text())
    assert record["version"] == 1 and record["correlations"]["BraTS-GLI-00001-000"] < 0.5
    assert sorted(p.name for p in folder.iterdir()) == sorted(["derivation.json", voided_path.name])  # nothing left aside
    assert any(line.startswith(f"brats-local: derived training case {DERIVED_CASE}") for line in lines)

    # unchanged sources: the file is re-used, not rewritten
    stamp = voided_path.stat().st_mtime_ns, voided_path.stat().st_ino
    plan_brats_local_held_out(data, derived, spec, lines.append)
    assert lines[-1].startswith(f"brats-local: reused training case {DERIVED_CASE}")
    assert (voided_path.stat().st_mtime_ns, voided_path.stat().st_ino) == stamp
    # written again from the same sources, the bytes are the same (no gzip time stamp): same ingest checksum
    digest = file_digest(voided_path)
    voided_path.unlink()
    plan_brats_local_held_out(data, derived, spec, lines.append)
    assert "derived training case" in lines[-1] and file_digest(voided_path) == digest
    # a changed source (another mask) derives again
    moved = np.roll(arrays["mask"], 2, axis=0)
    save_nifti(data / "brats-inpainting" / "BraTS-GLI-00001-000-mask.nii.gz", moved, SRI24_LIKE)
    plan_brats_local_held_out(data, derived, spec, lines.append)
    assert "derived training case" in lines[-1]
    voided = np.asanyarray(nib.load(voided_path).dataobj)
    assert np.all(voided[moved > 0] == 0) and np.array_equal(voided[moved == 0], arrays["other"][moved == 0])

    # the derived case ingests like a published one: its voided region is 0, the rest is its ground truth
    report, dataset = ingest_serially(plan_brats_local_held_out(data, derived, spec, lines.append), tmp_path / "store", 12)
    assert report.counts() == {"ingested": 2, "skipped": 0, "failed": 0}
    assert dataset.cases("train") == [DERIVED_CASE] and dataset.cases("test") == ["BraTS-GLI-00001-000"]
    volume = dataset.read_volume(DERIVED_CASE)
    inside = volume.mask.astype(bool)
    assert inside.sum() == (moved > 0).sum() and volume.image[inside].max() == 0 and volume.target[inside].min() > 0
    assert np.array_equal(volume.image[~inside], volume.target[~inside])


def test_brats_local_held_out_refuses_leaks_and_other_grids(tmp_path):
    from storage.recipes import plan_brats_local_held_out

    data = tmp_path / "data"
    arrays = brats_data(data)
    spec, lines = get_spec("brats-local"), []
    # the same subject (the test case's own t1n, rescaled) would leak the test case into training
    save_nifti(data / "brats-synthesis" / "t1n.nii.gz", arrays["local"] * 0.5, SRI24_LIKE)
    plan = plan_brats_local_held_out(data, tmp_path / "derived", spec, lines.append)
    assert [c.split for c in plan.cases] == ["test"] and [p.case for p in plan.problems] == [DERIVED_CASE]
    assert "correlates 1.00 with the held-out BraTS-GLI-00001-000" in plan.problems[0].reason
    # another grid
    save_nifti(data / "brats-synthesis" / "t1n.nii.gz", arrays["other"], np.diag([1.0, 1.0, 1.0, 1.0]))
    [problem] = plan_brats_local_held_out(data, tmp_path / "derived", spec, lines.append).problems
    assert "affine differs" in problem.reason and not (tmp_path / "derived" / "brats-local" / DERIVED_CASE / "derivation.json").exists()
    # without brats-synthesis/ the release is planned as `mvg ingest` plans it: one case, train
    for path in (data / "brats-synthesis").iterdir():
        path.unlink()
    plan = plan_brats_local_held_out(data, tmp_path / "derived", spec, lines.append)
    assert cases_by_split(plan) == {"train": ["BraTS-GLI-00001-000"]} and "planned as published" in lines[-1]
    assert cases_by_split(plan_dataset(data / "brats-inpainting", "brats-local")) == {"train": ["BraTS-GLI-00001-000"]}
    # derived files never go into the data folder; by default they sit beside the store
    with pytest.raises(ValueError, match="never written inside the data folder"):
        build_real_store(data, tmp_path / "store", datasets=["brats-local"], derived=data / "derived")
    from storage.recipes import derived_folder

    assert derived_folder(tmp_path / "real-store") == tmp_path / "real-store-derived"


def test_brats_edema_nnunet_folder_without_dataset_json(tmp_path):
    root = tmp_path / "brats-edema"
    for n in range(1, 7):
        touch(root / "imagesTr" / f"BraTS2021_{n:05d}.nii.gz")
        touch(root / "labelsTr" / f"BraTS2021_{n:05d}.nii.gz")
    plan = plan_dataset(root, "brats-edema")
    assert cases_by_split(plan)["test"] == ["BraTS2021_00001", "BraTS2021_00006"]
    assert plan.spec.classes == {1: "edema"}


def test_sct_contrasts_with_cord_and_grey_matter(tmp_path):
    root = tmp_path / "sct"
    for name in ("t2/t2.nii.gz", "t2/t2_seg-manual.nii.gz", "t2s/t2s.nii.gz", "t2s/t2s_seg.nii.gz", "t2s/t2s_gmseg_manual.nii.gz"):
        touch(root / name)
    plan = plan_dataset(root, "sct")
    assert cases_by_split(plan) == {"train": ["t2", "t2s"]}
    assert [(v, Path(f.path).name) for v, f in plan.cases[1].label_parts] == [(1, "t2s_seg.nii.gz"), (2, "t2s_gmseg_manual.nii.gz")]


# --------------------------------------------------------------------------------- folder checks


@pytest.mark.parametrize("spec", sorted(RECIPES))
def test_a_folder_that_is_not_the_release_gets_one_clear_error(tmp_path, spec):
    folder = tmp_path / RECIPES[spec].folder
    touch(folder / "notes.txt")
    with pytest.raises(LayoutError) as caught:
        plan_dataset(folder, spec)
    message = str(caught.value)
    assert str(folder) in message and get_spec(spec).expected in message
    with pytest.raises(LayoutError, match="is a folder"):
        RECIPES[spec].plan(folder / "notes.txt")


def test_a_manifest_or_dataset_json_wins_over_the_recipe_and_no_spec_gets_a_hint(tmp_path):
    root = tmp_path / "jsrt"
    save_png(root / "images" / "JPCLN001.png", np.zeros((8, 8)))
    save_png(root / "masks" / "JPCLN001.png", np.zeros((8, 8)))
    with pytest.raises(LayoutError, match="add --spec jsrt"):
        plan_dataset(root)
    (root / "manifest.json").write_text(json.dumps({"cases": [{"case": "x", "image": "images/JPCLN001.png", "target": "masks/JPCLN001.png"}]}))
    plan = plan_dataset(root, "jsrt")
    assert [c.case for c in plan.cases] == ["x"] and plan.spec.layout == "manifest"


# --------------------------------------------------------------------------------- the real store


def test_build_real_store_ingests_the_releases_it_finds(tmp_path, dask_cluster, monkeypatch):
    data = tmp_path / "data"
    for n in (1, 2):
        save_png(data / "jsrt" / "images" / f"JPCNN{n:03d}.png", np.full((16, 16), 30 * n))
        save_png(data / "jsrt" / "masks" / f"JPCNN{n:03d}.png", jsrt_mask())
    routine = np.full((8, 8), 0.0192, np.float32)
    (data / "ldct").mkdir()
    scipy.io.savemat(str(data / "ldct" / "test_case1.mat"), {"quarter_dose": routine * 1.02, "routine_dose": routine})
    lines: list[str] = []
    built = build_real_store(data, tmp_path / "store", size=16, client=dask_cluster, log=lines.append)
    assert built == {"jsrt": "segmentation", "ldct": "denoising"}
    assert "jsrt (segmentation): 1 train, 1 test; 2 ingested, 0 unchanged, 0 failed" in lines
    assert "acdc: skipped, no acdc/ in " + str(data) in lines
    assert ZarrStore(tmp_path / "store").dataset("jsrt").cases("test") == ["JPCNN001"]
    with pytest.raises(FileNotFoundError, match="no such data folder"):
        build_real_store(tmp_path / "nowhere", tmp_path / "store")
    with pytest.raises(KeyError, match="no recipe for nope"):
        build_real_store(data, tmp_path / "store", datasets=["nope"])

    # the CLI form, into $MVG_HOME/real-store by default
    monkeypatch.setenv("MVG_HOME", str(tmp_path / "home"))  # restored afterwards; --home sets it
    command = ["real-store", "--data", str(data), "--size", "16", "--datasets", "ldct", "--dask-address", dask_cluster.scheduler.address]
    assert main(["--home", str(tmp_path / "home"), *command]) == 0
    assert ZarrStore(tmp_path / "home" / "real-store").datasets() == ["ldct"]


def test_mvg_datasets_lists_every_recipe(capsys):
    assert main(["datasets"]) == 0
    listing = capsys.readouterr().out
    for name, recipe in RECIPES.items():
        assert any(line.split()[0] == name and line.rstrip().endswith(f"{recipe.folder}/") for line in listing.splitlines()), name
