"""`mvg predict`: outputs in the input's own geometry, from a weights folder, a checkpoint or the
registry, and every bad input refused with a clear error and no output file.

A random model paints garbage, so most tests check geometry and plumbing, not accuracy. Three
stand-in models make exact checks possible: one copies its prompt target, two return the query
itself. With those the written file must equal a known array in the input file's own axis order,
which proves the orientation round trip (reader -> canonical -> paint -> writer) voxel for voxel.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow
import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from flows.predict import add_predict_parser, run_predict
from mvg.config import preset
from mvg.inference import prompt_colouring
from mvg.model import MVG
from mvg.predict import load_model, predict_scan, prepare_prediction, prompt_slice
from mvg.pyfunc import log_mvg_model, save_weights
from storage.preprocess import percentile_scale
from storage.readers import read_scan
from storage.writers import WriteError, write_image, write_label_map
from tests.conftest import LPS_AFFINE, ct_case


# 64 px; decoded from painted levels: the stand-ins below paint (`predict`), they cast no slot votes
CONFIG = preset("tiny-cpu").with_overrides(model={"depth": 2, "embed_dim": 96, "num_heads": 3, "slot_inference": "soft"})
SIZE = CONFIG.model.image_size

# An oblique scan stored in a permuted, flipped axis order: file axes run I, L, A (not R, A, S),
# with a 12 degree tilt, anisotropic spacing and an origin, so any slip in the round trip shows.
_TILT = np.deg2rad(12.0)
_ROTATION = np.array([[1, 0, 0], [0, np.cos(_TILT), -np.sin(_TILT)], [0, np.sin(_TILT), np.cos(_TILT)]])
_AXES = np.array([[0, -1, 0], [0, 0, 1], [-1, 0, 0]])  # columns: file i -> I, j -> L, k -> A
OBLIQUE_AFFINE = np.eye(4)
OBLIQUE_AFFINE[:3, :3] = _ROTATION @ _AXES @ np.diag([2.0, 0.9, 1.1])
OBLIQUE_AFFINE[:3, 3] = (30.0, -20.0, 15.0)


class CopyPrompt(MVG):
    """Paints the first prompt target whatever the query."""

    def predict(self, query, prompt_images, prompt_targets, task="segmentation"):
        return prompt_targets[:, 0]


class PaintQuery(MVG):
    """Paints the query image itself."""

    def predict(self, query, prompt_images, prompt_targets, task="segmentation"):
        return query


@pytest.fixture(scope="module")
def model() -> MVG:
    torch.manual_seed(0)
    return MVG(CONFIG).eval()


@pytest.fixture(scope="module")
def weights(model, tmp_path_factory):
    return save_weights(model, CONFIG, tmp_path_factory.mktemp("weights"))


# ------------------------------------------------------------------------------------------ files


def save_nifti(path, data_xyz: np.ndarray, affine: np.ndarray):
    nib.save(nib.Nifti1Image(data_xyz, affine), str(path))
    return path


def ct_pair(folder, name: str, shape, seed: int, affine=LPS_AFFINE, labels=(5, 9)):
    """A CT volume in HU and its label map with classes `labels` (not 1, 2: the output must carry
    the prompt's own values), both in the file order `shape`."""
    image, classes = ct_case(seed, shape)
    label_map = np.zeros(shape, np.uint8)
    for source, value in zip((1, 2), labels):
        label_map[classes == source] = value
    return save_nifti(folder / f"{name}.nii.gz", image, affine), save_nifti(folder / f"{name}_seg.nii.gz", label_map, affine)


def save_png(path, pixels: np.ndarray):
    Image.fromarray(pixels).save(path)
    return path


def dicom_series(folder, shape_slices_rows_cols=(5, 20, 24)) -> None:
    """A sagittal CT series (rows along +y, columns along -z in LPS), uint16 stored, HU = stored - 1024."""
    folder.mkdir(parents=True)
    slices, rows, columns = shape_slices_rows_cols
    row_direction, column_direction = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])
    normal = np.cross(row_direction, column_direction)
    rng = np.random.default_rng(1)
    hu = rng.normal(40, 20, (slices, rows, columns))
    hu[:, :3] = -1000  # air: auto normalisation must take this for CT
    series_uid, origin = generate_uid(), np.array([12.0, -30.0, 55.0])
    for k in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"IM{k:04d}"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), series_uid
        ds.Modality, ds.PatientID, ds.InstanceNumber = "CT", "PHANTOM", k + 1
        ds.ImagePositionPatient = [f"{v:.6g}" for v in origin + 2.5 * k * normal]
        ds.ImageOrientationPatient = [f"{v:g}" for v in (*row_direction, *column_direction)]
        ds.PixelSpacing, ds.SliceThickness = ["0.75", "0.6"], "2.5"
        ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(hu[k] + 1024, dtype="<u2").tobytes()
        ds.save_as(str(folder / f"IM{k:04d}"), enforce_file_format=True)


def cli(argv: list[str]) -> int:
    """`mvg predict ...` through a parser built the way flows/cli.py builds its own."""
    parser = argparse.ArgumentParser(prog="mvg")
    add_predict_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["predict", *map(str, argv)])
    return run_predict(args)


def prompt_args(*pairs) -> list:
    return [value for image, target in pairs for value in ("--prompt-image", image, "--prompt-target", target)]


# ------------------------------------------------------------------------------------------ geometry


def test_segmentation_nifti_keeps_the_input_affine_shape_and_prompt_labels(weights, tmp_path, capsys):
    prompt = ct_pair(tmp_path, "prompt", (40, 48, 10), seed=1)
    scan, _ = ct_pair(tmp_path, "input", (36, 44, 12), seed=2, affine=OBLIQUE_AFFINE)
    output = tmp_path / "out" / "labels.nii.gz"  # the folder is made on writing

    status = cli(["--model", weights, *prompt_args(prompt), "--input", scan, "--output", output, "--device", "cpu"])

    assert status == 0
    written = nib.load(str(output))
    assert written.shape == (36, 44, 12)
    np.testing.assert_array_equal(written.affine, nib.load(str(scan)).affine)
    data = np.asarray(written.dataobj)
    assert data.dtype == np.uint8 and set(np.unique(data)) <= {0, 5, 9}
    assert written.header.get_xyzt_units()[0] == "mm"
    printed = capsys.readouterr().out
    assert str(output) in printed and "36 x 44 x 12" in printed and "labels" in printed
    assert "input normalised with ct" in printed  # CT recognised by its air
    assert sorted(p.name for p in output.parent.iterdir()) == ["labels.nii.gz"]  # no temporary file left


def test_synthesis_with_two_prompt_pairs_of_different_sizes_writes_float_in_unit_range(weights, tmp_path, capsys):
    rng = np.random.default_rng(3)
    pairs = []
    for index, shape in enumerate([(40, 48, 10), (30, 30, 6)]):
        source = save_nifti(tmp_path / f"t1_{index}.nii.gz", rng.gamma(2, 100, shape).astype(np.float32), LPS_AFFINE)
        target = save_nifti(tmp_path / f"t2_{index}.nii.gz", rng.gamma(3, 80, shape).astype(np.float32), LPS_AFFINE)
        pairs.append((source, target))
    scan = save_nifti(tmp_path / "input.nii", rng.gamma(2, 100, (36, 44, 12)).astype(np.float32), OBLIQUE_AFFINE)
    output = tmp_path / "synthesised.nii.gz"

    status = cli(["--model", weights, *prompt_args(*pairs), "--input", scan, "--output", output, "--task", "synthesis"])

    assert status == 0, capsys.readouterr().err
    written = nib.load(str(output))
    data = np.asarray(written.dataobj)
    assert written.shape == (36, 44, 12) and data.dtype == np.float32
    assert 0 <= data.min() and data.max() <= 1
    np.testing.assert_array_equal(written.affine, nib.load(str(scan)).affine)
    printed = capsys.readouterr().out
    assert "normalised with percentile" in printed and "prompt 2:" in printed and "slice 4 of 6" in printed


def test_segmentation_prompt_pairs_of_different_sizes_keep_their_labels(model, tmp_path):
    first = ct_pair(tmp_path, "first", (40, 48, 10), seed=1)
    second = ct_pair(tmp_path, "second", (30, 34, 8), seed=3, labels=(5, 12))
    scan, _ = ct_pair(tmp_path, "input", (36, 44, 12), seed=2, affine=OBLIQUE_AFFINE)

    prediction = predict_scan(model, [first, second], scan, tmp_path / "labels.nii.gz")

    data = np.asarray(nib.load(str(prediction.path)).dataobj)
    assert data.shape == (36, 44, 12) and set(np.unique(data)) <= {0, 5, 9, 12}
    assert [p.slices for p in prediction.prompts] == [10, 8]


def test_dicom_series_input_writes_nifti_in_the_series_geometry(model, tmp_path):
    series = tmp_path / "series"
    dicom_series(series)
    prompt = ct_pair(tmp_path, "prompt", (40, 48, 10), seed=1)
    output = tmp_path / "series_labels.nii.gz"

    prediction = predict_scan(model, [prompt], series, output)

    scan, written = read_scan(series), read_scan(output)
    assert prediction.input_normalisation == "ct"
    assert nib.load(str(output)).shape == scan.geometry.source_shape == (24, 20, 5)  # columns, rows, slices
    np.testing.assert_allclose(nib.load(str(output)).affine, scan.geometry.source_affine, atol=1e-4)
    np.testing.assert_allclose(written.geometry.affine, scan.geometry.affine, atol=1e-4)
    assert written.array.shape == scan.array.shape
    assert set(np.unique(written.array)) <= {0, 5, 9}


@pytest.mark.parametrize("task", ["segmentation", "synthesis"])
def test_png_input_writes_png_of_the_same_size(weights, tmp_path, task):
    rng = np.random.default_rng(4)
    height, width = 37, 53
    prompt_image = save_png(tmp_path / "prompt.png", rng.integers(0, 256, (45, 60), dtype=np.uint8))
    if task == "segmentation":
        labels = np.zeros((45, 60), np.uint8)
        labels[5:20, 8:30], labels[25:40, 35:55] = 5, 9
        prompt_target = save_png(tmp_path / "prompt_labels.png", labels)
    else:
        prompt_target = save_png(tmp_path / "prompt_target.png", rng.integers(0, 256, (45, 60), dtype=np.uint8))
    scan = save_png(tmp_path / "input.png", rng.integers(0, 256, (height, width), dtype=np.uint8))
    output = tmp_path / "output.png"

    assert cli(["--model", weights, *prompt_args((prompt_image, prompt_target)), "--input", scan,
                "--output", output, "--task", task]) == 0

    with Image.open(output) as picture:
        assert picture.size == (width, height)
        pixels = np.asarray(picture)
    if task == "segmentation":
        assert picture.mode == "L" and set(np.unique(pixels)) <= {0, 5, 9}
    else:
        assert picture.mode == "I;16"  # 16 bits: an 8-bit image would cap PSNR near 59 dB


@pytest.fixture
def umask():
    """Sets the process umask for one test (it is process-wide) and puts the old one back."""
    saved = os.umask(0o022)
    yield os.umask
    os.umask(saved)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640)], ids=["umask-022", "umask-027"])
@pytest.mark.parametrize("suffix", [".nii.gz", ".png"])
def test_predicted_files_get_the_mode_the_umask_gives(weights, tmp_path, umask, mask, mode, suffix):
    """As any tool's output: readable by others under the usual umask, not mkstemp's 0600."""
    if suffix == ".png":
        rng = np.random.default_rng(5)
        labels = np.zeros((24, 24), np.uint8)
        labels[4:12, 6:18] = 5
        prompt = (save_png(tmp_path / "p.png", rng.integers(0, 256, (24, 24), dtype=np.uint8)), save_png(tmp_path / "p_seg.png", labels))
        scan = save_png(tmp_path / "x.png", rng.integers(0, 256, (24, 24), dtype=np.uint8))
    else:
        prompt = ct_pair(tmp_path, "prompt", (24, 24, 4), seed=1)
        scan, _ = ct_pair(tmp_path, "input", (24, 24, 4), seed=2)
    output = tmp_path / f"labels{suffix}"
    umask(mask)
    assert cli(["--model", weights, *prompt_args(prompt), "--input", scan, "--output", output, "--device", "cpu"]) == 0
    assert output.stat().st_mode & 0o777 == mode


# ------------------------------------------------------------------------------------------ exactness


def labelled_volume() -> np.ndarray:
    """(7, 64, 64) labels in the oblique file order: axis 0 runs along I. Slice 4 alone holds both
    classes, with the most foreground; the blocks sit off the diagonal so flips and transposes show."""
    labels = np.zeros((7, SIZE, SIZE), np.uint8)
    labels[1:6, 5:20, 30:60] = 5
    labels[3:5, 40:60, 3:12] = 9
    labels[3, 40:60, 3:12] = 0  # slice 3 holds both classes too, with less foreground
    labels[3, 50:52, 5:7] = 9
    return labels


def test_copied_prompt_comes_back_exactly_on_every_slice_in_the_input_order(tmp_path):
    labels = labelled_volume()
    image = np.where(labels > 0, 120, -800).astype(np.int16)
    scan = save_nifti(tmp_path / "scan.nii.gz", image, OBLIQUE_AFFINE)
    target = save_nifti(tmp_path / "scan_seg.nii.gz", labels, OBLIQUE_AFFINE)
    output = tmp_path / "copied.nii.gz"

    prediction = predict_scan(CopyPrompt(CONFIG), [(scan, target)], scan, output)

    # canonical z runs S, the file's axis 0 runs I: the chosen slice 4 of the file is canonical slice 2
    assert prediction.prompts[0].slice_index == 2
    written = np.asarray(nib.load(str(output)).dataobj)
    np.testing.assert_array_equal(written, np.broadcast_to(labels[4], labels.shape))


@pytest.mark.parametrize("connected", [(5,), ()])
def test_connected_classes_keep_only_their_largest_painted_component(tmp_path, connected):
    labels = labelled_volume()
    labels[4, 60:63, 1:4] = 5  # an island of class 5 in the chosen prompt slice, which is copied to every slice
    image = np.where(labels > 0, 120, -800).astype(np.int16)
    scan = save_nifti(tmp_path / "scan.nii.gz", image, OBLIQUE_AFFINE)
    target = save_nifti(tmp_path / "scan_seg.nii.gz", labels, OBLIQUE_AFFINE)
    output = tmp_path / "kept.nii.gz"

    predict_scan(CopyPrompt(CONFIG), [(scan, target)], scan, output, connected_classes=connected)

    written = np.asarray(nib.load(str(output)).dataobj)
    copied = np.broadcast_to(labels[4], labels.shape)
    expected = np.where((copied == 5) & (np.arange(SIZE)[:, None] >= 60), 0, copied) if connected else copied
    np.testing.assert_array_equal(written, expected)
    assert (written == 9).sum() == (copied == 9).sum()  # a class not listed keeps every part


def test_painted_query_labels_come_back_exactly_in_the_input_order(tmp_path):
    """The input's intensities are the colour levels of its own labels: a model that paints the
    query returns the labels voxel for voxel, through every orientation and flip."""
    labels = labelled_volume()
    levels = prompt_colouring(labels).colour(labels.astype(np.int64))
    hounsfield = -100 + 300 * levels  # the CT window [-100, 200] maps this back to the levels
    scan = save_nifti(tmp_path / "scan.nii.gz", hounsfield.astype(np.float32), OBLIQUE_AFFINE)
    target = save_nifti(tmp_path / "scan_seg.nii.gz", labels, OBLIQUE_AFFINE)
    output = tmp_path / "painted.nii.gz"

    predict_scan(PaintQuery(CONFIG), [(scan, target)], scan, output, normalisation="ct")

    written = nib.load(str(output))
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(written.dataobj), labels)


def test_painted_query_image_comes_back_exactly_in_the_input_order(tmp_path):
    rng = np.random.default_rng(5)
    volume = rng.gamma(2, 100, (7, SIZE, SIZE)).astype(np.float32)
    scan = save_nifti(tmp_path / "scan.nii.gz", volume, OBLIQUE_AFFINE)
    output = tmp_path / "painted.nii.gz"

    predict_scan(PaintQuery(CONFIG), [(scan, scan)], scan, output, task="synthesis", normalisation="percentile")

    written = np.asarray(nib.load(str(output)).dataobj)
    np.testing.assert_array_equal(written, percentile_scale(volume).apply(volume))


def test_prompt_slice_prefers_classes_then_foreground():
    labels = np.zeros((4, 8, 8), np.int64)
    labels[0, :6, :6] = 5  # most foreground, one class
    labels[2, :2, :2], labels[2, 6:, 6:] = 5, 9  # both classes
    labels[3, :1, :1], labels[3, 7:, 7:] = 5, 9  # both classes, less foreground
    assert prompt_slice(labels, "segmentation") == 2
    assert prompt_slice(labels, "synthesis") == 2  # the middle


def test_labels_missing_from_the_chosen_slice_are_named(weights, tmp_path, capsys):
    labels = np.zeros((30, 30, 6), np.uint8)
    labels[5:25, 5:25, 1] = 5  # large, alone
    labels[10:14, 10:14, 4] = 9  # small, on another slice
    scan = save_nifti(tmp_path / "scan.nii.gz", np.where(labels > 0, 100, -900).astype(np.int16), LPS_AFFINE)
    target = save_nifti(tmp_path / "seg.nii.gz", labels, LPS_AFFINE)

    assert cli(["--model", weights, *prompt_args((scan, target)), "--input", scan, "--output", tmp_path / "o.nii.gz"]) == 0
    assert "note: labels 9 are in the prompt volumes but on none of the chosen slices" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ models


def test_checkpoint_and_mlflow_model_folders_load(model, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    torch.save({"config": CONFIG.to_dict(), "model": model.state_dict(), "step": 3}, checkpoint / "checkpoint.pt")
    save_weights(model, CONFIG, tmp_path / "mlflow-model" / "artifacts" / "weights")

    for source in (checkpoint, checkpoint / "checkpoint.pt", tmp_path / "mlflow-model"):
        loaded = load_model(source, "cpu")
        assert not loaded.training
        for name, tensor in model.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)


def test_registered_model_predicts_offline_like_the_weights(model, weights, tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("mvg-predict", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment)
    log_mvg_model(model, CONFIG, run.info.run_id, uri=uri)  # predict finds it through MLFLOW_TRACKING_URI

    prompt = ct_pair(tmp_path, "prompt", (40, 48, 10), seed=1)
    scan, _ = ct_pair(tmp_path, "input", (36, 44, 12), seed=2, affine=OBLIQUE_AFFINE)
    common = [*prompt_args(prompt), "--input", scan]
    assert cli(["--model", "models:/mvg@candidate", *common, "--output", tmp_path / "registered.nii.gz"]) == 0
    assert cli(["--model", weights, *common, "--output", tmp_path / "local.nii.gz"]) == 0
    np.testing.assert_array_equal(
        np.asarray(nib.load(str(tmp_path / "registered.nii.gz")).dataobj),
        np.asarray(nib.load(str(tmp_path / "local.nii.gz")).dataobj),
    )

    capsys.readouterr()
    missing = tmp_path / "missing.nii.gz"
    assert cli(["--model", "models:/mvg@champion", *common, "--output", missing]) == 2
    error = capsys.readouterr().err
    assert "model models:/mvg@champion does not resolve" in error and "champion" in error
    assert not missing.exists()


# ------------------------------------------------------------------------------------------ refusals


@pytest.fixture
def case(tmp_path):
    """A good prompt pair and input, and an empty output folder."""
    prompt_image, prompt_target = ct_pair(tmp_path, "prompt", (40, 48, 10), seed=1)
    scan, _ = ct_pair(tmp_path, "input", (36, 44, 12), seed=2, affine=OBLIQUE_AFFINE)
    out = tmp_path / "out"
    out.mkdir()
    return {"image": prompt_image, "target": prompt_target, "input": scan, "out": out, "dir": tmp_path}


def _bad_shape(case):
    labels = np.zeros((40, 48, 9), np.uint8)
    labels[10:20, 10:20, 3] = 5
    case["target"] = save_nifti(case["dir"] / "short_seg.nii.gz", labels, LPS_AFFINE)
    return [str(case["target"]), "does not match", "(40, 48, 10)", "(40, 48, 9)"]


def _empty_target(case):
    case["target"] = save_nifti(case["dir"] / "empty_seg.nii.gz", np.zeros((40, 48, 10), np.uint8), LPS_AFFINE)
    return [str(case["target"]), "empty"]


def _fractional_target(case):
    case["target"] = save_nifti(case["dir"] / "soft_seg.nii.gz", np.full((40, 48, 10), 0.5, np.float32), LPS_AFFINE)
    return [str(case["target"]), "non-integer"]


def _garbage_input(case):
    case["input"] = case["dir"] / "garbage.nii.gz"
    case["input"].write_bytes(np.random.default_rng(0).bytes(3000))
    return [str(case["input"]), "not a gzip file"]


def _missing_prompt(case):
    case["image"] = case["dir"] / "nowhere.nii.gz"
    return [str(case["image"]), "not found"]


def _missing_model(case):
    case["model"] = case["dir"] / "no-such-model"
    return [f"model {case['model']} does not resolve"]


def _model_without_registry(case):
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{case['dir']}/none.db"  # put back by the test's monkeypatch
    case["model"] = "models:/mvg@candidate"
    return ["model models:/mvg@candidate does not resolve", "no MLflow database"]


def _folder_without_model(case):
    case["model"] = case["dir"] / "out"
    return ["does not resolve", "holds no model"]


def _corrupt_weights(case):
    folder = case["dir"] / "corrupt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    case["model"] = folder
    return [f"model {folder} cannot be loaded"]


def _unwritable_suffix(case):
    case["output"] = case["out"] / "labels.mha"
    return [str(case["output"]), "cannot write this format", ".nii.gz"]


def _png_for_a_volume(case):
    case["output"] = case["out"] / "labels.png"
    return ["PNG holds one 2-D image", "(36, 44, 12)"]


def _output_is_the_input(case):
    case["output"] = case["input"]
    return ["is one of the input files"]


def _unpaired_prompts(case):
    case["extra"] = ["--prompt-image", case["image"]]
    return ["--prompt-image given 2 time(s) but --prompt-target 1 time(s)"]


def _too_many_prompts(case):
    case["extra"] = prompt_args(*[(case["image"], case["target"])] * 3)  # 4 pairs; this model takes 3
    return ["4 prompt pairs given; this model takes 1 to 3"]


def _unknown_connected_class(case):
    case["extra"] = ["--connected-classes", "5,7"]  # the prompt's classes are 5 and 9
    return ["connected class(es) [7] are in no prompt target", "[5, 9]"]


REFUSALS = [
    _unknown_connected_class, _bad_shape, _empty_target, _fractional_target, _garbage_input, _missing_prompt, _missing_model,
    _model_without_registry, _folder_without_model, _corrupt_weights, _unwritable_suffix, _png_for_a_volume,
    _output_is_the_input, _unpaired_prompts, _too_many_prompts,
]


@pytest.mark.parametrize("spoil", REFUSALS, ids=[f.__name__.strip("_") for f in REFUSALS])
def test_bad_input_is_refused_clearly_and_writes_nothing(spoil, case, weights, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{case['dir']}/unused.db")
    case["model"], case["output"] = weights, case["out"] / "labels.nii.gz"
    fragments = spoil(case)
    input_bytes = case["input"].read_bytes() if case["input"].is_file() else None

    status = cli(["--model", case["model"], *prompt_args((case["image"], case["target"])), *case.get("extra", []),
                  "--input", case["input"], "--output", case["output"]])

    error = capsys.readouterr().err
    assert status == 2
    assert error.startswith("mvg predict: error: ") and len(error.strip().splitlines()) == 1, error
    for fragment in fragments:
        assert fragment in error, error
    assert list(case["out"].iterdir()) == []
    if input_bytes is not None:
        assert case["input"].read_bytes() == input_bytes
    assert not (case["dir"] / "unused.db").exists()


def test_unknown_task_and_normalisation_are_refused(tmp_path):
    scan, target = ct_pair(tmp_path, "case", (20, 20, 4), seed=0)
    with pytest.raises(ValueError, match="unknown task 'detection'"):
        prepare_prediction([(scan, target)], scan, tmp_path / "o.nii.gz", task="detection")
    with pytest.raises(ValueError, match="unknown normalisation 'zscore'"):
        prepare_prediction([(scan, target)], scan, tmp_path / "o.nii.gz", normalisation="zscore")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.nii.gz", "case_seg.nii.gz"]


# ------------------------------------------------------------------------------------------ writers


def test_a_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    scan, target = ct_pair(tmp_path, "case", (20, 22, 4), seed=0)
    geometry = read_scan(scan).geometry
    labels = read_scan(target).array.astype(np.int64)
    output = tmp_path / "out" / "labels.nii.gz"
    write_label_map(labels, geometry, output)
    before = output.read_bytes()

    def broken_save(image, filename):
        with open(filename, "wb") as partial:
            partial.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_label_map(np.zeros_like(labels), geometry, output)
    assert output.read_bytes() == before
    assert [p.name for p in output.parent.iterdir()] == ["labels.nii.gz"]


def test_writers_refuse_values_they_cannot_hold(tmp_path):
    scan, _ = ct_pair(tmp_path, "case", (20, 22, 4), seed=0)
    geometry = read_scan(scan).geometry
    shape = read_scan(scan).array.shape
    with pytest.raises(WriteError, match="must be integers"):
        write_label_map(np.zeros(shape, np.float32), geometry, tmp_path / "a.nii.gz")
    with pytest.raises(WriteError, match=r"in \[0, 1\]"):
        write_image(np.full(shape, 2.0, np.float32), geometry, tmp_path / "b.nii.gz")
    with pytest.raises(WriteError, match="does not fit the input's grid"):
        write_image(np.zeros((4, 20, 20), np.float32), geometry, tmp_path / "c.nii.gz")
    big = np.zeros(shape, np.int64)
    big[0, 0, 0] = 70_000
    write_label_map(big, geometry, tmp_path / "d.nii.gz")
    assert nib.load(str(tmp_path / "d.nii.gz")).get_data_dtype() == np.int32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.nii.gz", "case_seg.nii.gz", "d.nii.gz"]
