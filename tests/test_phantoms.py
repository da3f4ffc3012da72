"""Phantom datasets: deterministic, in nnU-Net v2 raw layout, with the traits the pipeline relies on."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from storage.layouts import plan_dataset
from storage.phantoms import PHANTOM_TASKS, phantom_case, write_phantoms
from storage.readers import read_scan

SIZE, SLICES, CASES = 64, 12, 2
CHANNELS = {"segmentation": 1, "synthesis": 2, "inpainting": 2, "denoising": 2, "xray": 1}
HAS_LABELS = {"segmentation": True, "synthesis": True, "inpainting": True, "denoising": False, "xray": True}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("phantoms")
    return {
        task: write_phantoms(task, root / task, cases=CASES, seed=7, size=SIZE, slices=SLICES) for task in PHANTOM_TASKS
    }


def load(path: Path) -> np.ndarray:
    if path.name.endswith(".png"):
        with Image.open(path) as picture:
            return np.asarray(picture)
    return np.asanyarray(nib.load(path).dataobj)


def case_files(root: Path, case: str) -> tuple[list[Path], Path | None]:
    channels = sorted((root / "imagesTr").glob(f"{case}_*"))
    labels = list((root / "labelsTr").glob(f"{case}.*"))
    return channels, labels[0] if labels else None


def cases_of(root: Path) -> list[str]:
    return sorted({p.name.rsplit("_", 1)[0] for p in (root / "imagesTr").iterdir()})


def psnr_in_ct_window(image: np.ndarray, reference: np.ndarray) -> float:
    def window(hu):
        return np.clip((hu.astype(np.float64) + 100) / 300, 0, 1)

    return float(10 * np.log10(1 / np.mean((window(image) - window(reference)) ** 2)))


# ------------------------------------------------------------------------------ determinism


def test_same_seed_writes_byte_identical_files(tmp_path):
    first = write_phantoms("segmentation", tmp_path / "a", cases=CASES, seed=3, size=SIZE, slices=SLICES)
    second = write_phantoms("segmentation", tmp_path / "b", cases=CASES, seed=3, size=SIZE, slices=SLICES)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 1 + 2 * CASES
    for relative in files:
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative


@pytest.mark.parametrize("task", PHANTOM_TASKS)
def test_phantom_case_depends_on_seed_and_index_only(task):
    case = phantom_case(task, index=1, seed=5, size=SIZE, slices=SLICES)
    again = phantom_case(task, index=1, seed=5, size=SIZE, slices=SLICES)
    other_seed = phantom_case(task, index=1, seed=6, size=SIZE, slices=SLICES)
    other_index = phantom_case(task, index=0, seed=5, size=SIZE, slices=SLICES)
    for array, same in zip(case.channels, again.channels):
        assert array.dtype == same.dtype and np.array_equal(array, same)
    assert np.array_equal(case.label, again.label) if case.label is not None else again.label is None
    assert not np.array_equal(case.channels[0], other_seed.channels[0])
    assert not np.array_equal(case.channels[0], other_index.channels[0])


def test_written_case_equals_phantom_case(datasets):
    case = phantom_case("segmentation", index=1, seed=7, size=SIZE, slices=SLICES)
    (image,), label = case_files(datasets["segmentation"], "phantom_001")
    assert np.array_equal(load(image), case.channels[0])
    assert np.array_equal(load(label), case.label)
    assert np.array_equal(nib.load(image).affine, case.affine)  # float32-exact, so it survives the header


# ------------------------------------------------------------------------------ layout


@pytest.mark.parametrize("task", PHANTOM_TASKS)
def test_dataset_json_describes_the_files(datasets, task):
    root = datasets[task]
    description = json.loads((root / "dataset.json").read_text())
    assert description["numTraining"] == CASES
    assert len(description["channel_names"]) == CHANNELS[task]
    assert description["labels"]["background"] == 0
    assert description["file_ending"] == (".png" if task == "xray" else ".nii.gz")
    assert description["mvg"]["task"] == ("segmentation" if task == "xray" else task)
    if CHANNELS[task] == 2:
        assert (description["mvg"]["input_channel"], description["mvg"]["target_channel"]) == (0, 1)
    prefix = "xray" if task == "xray" else "phantom"
    assert cases_of(root) == [f"{prefix}_{i:03d}" for i in range(CASES)]


@pytest.mark.parametrize("task", PHANTOM_TASKS)
def test_plan_dataset_finds_every_case(datasets, task):
    plan = plan_dataset(datasets[task])
    description = json.loads((datasets[task] / "dataset.json").read_text())
    assert plan.problems == []
    assert len(plan.cases) == CASES
    assert all(len(case.channels) == CHANNELS[task] for case in plan.cases)
    assert all(case.has_label == HAS_LABELS[task] for case in plan.cases)
    assert all(Path(f).exists() for case in plan.cases for f in case.files())
    assert (plan.spec.task, plan.spec.modality, plan.spec.region, plan.spec.normalisation) == tuple(
        description["mvg"][key] for key in ("task", "modality", "region", "normalisation")
    )
    assert plan.spec.classes == {v: k for k, v in description["labels"].items() if v}


@pytest.mark.parametrize("task", [t for t in PHANTOM_TASKS if t != "xray"])
def test_volumes_carry_a_scanner_geometry(datasets, task):
    root = datasets[task]
    for case in cases_of(root):
        channels, label = case_files(root, case)
        images = [nib.load(p) for p in channels + ([label] if label else [])]
        affine = images[0].affine
        for image in images:
            assert image.shape == (SIZE, SIZE, SLICES)
            assert np.array_equal(image.affine, affine)
            assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
        assert not np.allclose(affine, np.eye(4))
        assert affine[0, 0] < 0 and affine[1, 1] < 0 and affine[2, 2] > 0
        assert np.all(affine[:3, 3] != 0)
        spacing = nib.affines.voxel_sizes(affine)
        assert spacing[2] > 1.5 * spacing[0] and spacing[0] == pytest.approx(spacing[1])


def test_readers_reorient_phantoms_to_ras(datasets):
    (image,), _ = case_files(datasets["segmentation"], "phantom_000")
    scan = read_scan(image)
    assert scan.geometry.source_axcodes == ("L", "P", "S")
    assert scan.array.shape == (SLICES, SIZE, SIZE)
    assert np.all(np.diag(np.array(scan.geometry.affine))[:3] > 0)
    # a flip of x and y only: the canonical array is the file's array turned around
    assert np.array_equal(scan.array, np.transpose(load(image)[::-1, ::-1, :], (2, 1, 0)))


# ------------------------------------------------------------------------------ per task


def test_segmentation_is_ct_with_organs_between_empty_end_slices(datasets):
    root = datasets["segmentation"]
    present = set()
    for case in cases_of(root):
        (image_path,), label_path = case_files(root, case)
        image, labels = load(image_path), load(label_path)
        assert image.dtype == np.int16 and labels.dtype == np.uint8
        assert abs(int(image[0, 0, 0]) + 1000) < 100  # air in the corner
        assert not labels[:, :, 0].any() and not labels[:, :, -1].any()
        assert labels[:, :, SLICES // 2 : -1].any()
        kidney, liver = image[(labels == 3) | (labels == 4)].mean(), image[labels == 1].mean()
        assert kidney > liver + 40  # enhancing kidneys over liver, as in portal-venous CT
        present |= set(np.unique(labels).tolist()) - {0}
    assert len(present) >= 5
    first, second = (load(case_files(root, c)[1]) for c in cases_of(root))
    assert not np.array_equal(first, second)  # organs move and change size between cases


def test_synthesis_contrasts_follow_t1_and_t2(datasets):
    root = datasets["synthesis"]
    for case in cases_of(root):
        (t1_path, t2_path), label_path = case_files(root, case)
        t1, t2, tissues = load(t1_path), load(t2_path), load(label_path)
        assert set(np.unique(tissues).tolist()) == {0, 1, 2, 3, 4, 5}
        csf, white = tissues == 2, tissues == 4
        assert t1[white].mean() > 2 * t1[csf].mean()  # T1: white matter bright, CSF dark
        assert t2[csf].mean() > 1.5 * t2[white].mean()  # T2: CSF bright
        assert t1.dtype == np.float32 and t1.min() >= 0


def test_inpainting_voids_exactly_the_mask(datasets):
    root = datasets["inpainting"]
    for case in cases_of(root):
        (voided_path, full_path), mask_path = case_files(root, case)
        voided, full, mask = load(voided_path), load(full_path), load(mask_path)
        assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) == {0, 1}
        inside = mask == 1
        assert np.array_equal(voided[~inside], full[~inside])
        assert np.all(voided[inside] == 0)
        assert full[inside].mean() > 100  # the void removed brain signal


def test_denoising_pairs_differ_by_plausible_low_dose_noise(datasets):
    root = datasets["denoising"]
    assert not (root / "labelsTr").exists()
    for case in cases_of(root):
        (low_path, full_path), label = case_files(root, case)
        low, full = load(low_path), load(full_path)
        assert label is None and low.dtype == full.dtype == np.int16
        assert 20 < psnr_in_ct_window(low, full) < 35
        lungs = full < -700
        assert np.mean(full[lungs]) < -700 and np.mean(full[~lungs & (full > -500)]) > -200  # chest anatomy


def test_xray_pngs_are_radiographs_with_binary_lung_masks(datasets):
    root = datasets["xray"]
    for case in cases_of(root):
        (image_path,), mask_path = case_files(root, case)
        image, mask = load(image_path), load(mask_path)
        assert image.shape == mask.shape == (SIZE, SIZE)
        assert image.dtype == np.uint16 and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) == {0, 1}
        middle = np.zeros_like(mask, dtype=bool)
        middle[SIZE // 4 : 3 * SIZE // 4, SIZE // 3 : 2 * SIZE // 3] = True
        assert image[mask == 1].mean() < image[middle & (mask == 0)].mean()  # lungs darker than mediastinum
        assert mask[:, : SIZE // 2].any() and mask[:, SIZE // 2 :].any()  # two lung fields
        assert read_scan(mask_path).array.shape == (1, SIZE, SIZE)


# ------------------------------------------------------------------------------ arguments and folders


@pytest.mark.parametrize(
    "arguments",
    [
        {"task": "ultrasound"},
        {"cases": 0},
        {"size": 16},
        {"slices": 2},
        {"seed": -1},
        {"size": 64.0},
        {"cases": True},
    ],
)
def test_invalid_arguments_raise_value_error(tmp_path, arguments):
    call = {"task": "segmentation", "cases": 1, "size": SIZE, "slices": SLICES} | arguments
    with pytest.raises(ValueError):
        write_phantoms(out=tmp_path / "out", **call)
    assert not (tmp_path / "out").exists()


def test_refuses_a_folder_holding_other_data(tmp_path):
    (tmp_path / "notes.txt").write_text("not a phantom")
    with pytest.raises(ValueError, match="not empty"):
        write_phantoms("xray", tmp_path, cases=1, size=SIZE)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="not a folder"):
        write_phantoms("xray", tmp_path / "file", cases=1, size=SIZE)


def test_rerun_replaces_an_earlier_phantom_dataset_and_reports_progress(tmp_path):
    write_phantoms("xray", tmp_path, cases=3, size=SIZE)
    done = []
    write_phantoms("xray", tmp_path, cases=2, size=SIZE, progress=done.append)
    assert done == [1, 2]
    assert cases_of(tmp_path) == ["xray_000", "xray_001"]
    assert sorted(p.name for p in (tmp_path / "labelsTr").iterdir()) == ["xray_000.png", "xray_001.png"]
    assert len(plan_dataset(tmp_path).cases) == 2
