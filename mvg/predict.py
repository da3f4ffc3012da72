"""`mvg predict`: paint a user's scan from k labelled examples, written back in the scan's geometry.

Three steps, so that bad input is refused before a model is loaded and before anything is written:

1. `prepare_prediction` reads the prompt pairs and the input (NIfTI, DICOM series, PNG/JPG, any
   format `storage.readers` knows), checks them, scales intensities to [0, 1] and picks one prompt
   slice per pair;
2. `load_model` (`mvg.loading`) resolves the model;
3. `paint_prediction` paints every slice of the input's canonical z axis with `mvg.inference.paint`
   and writes the result in the input's own geometry (`storage.writers`): an integer label map with
   the prompt's label values for segmentation, an image in [0, 1] otherwise.

`predict_scan` runs 1 and 3 for a model already in memory.

Our decisions where the paper is silent:

- Prompt slice. Each prompt pair gives one slice (k pairs: k-shot). Segmentation takes the slice
  holding the most of the prompt's classes, then the most foreground voxels: a slice without a
  class cannot teach it. Other tasks take the middle slice. (Evaluation matches prompt slices by
  relative depth, `mvg.inference.prompt_slice_index`; that needs volumes of one extent, which a
  user's prompt and input need not be.)
- Normalisation, per file, as ingest does it per case: `ct` windows [-100, 200] HU, `percentile`
  clips to the 0.5-99.5 percentiles. `auto` windows a volume whose values go below -500 (air in
  HU: no MR, PET or ultrasound volume has them) and uses percentiles for everything else, PNG/JPG
  included: 8-bit pictures are not calibrated, and the pictures of the X-ray datasets were
  ingested with percentiles. Inpainting prompt pairs share the target's scaling, as in ingest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mvg.config import TASKS
from mvg.inference import paint
from mvg.loading import load_model  # noqa: F401 - part of this module's API: `mvg predict` in one place
from mvg.model import MVG
from mvg.postprocessing import keep_largest_components
from storage.geometry import Geometry
from storage.preprocess import intensity_scale, resize_slices, slice_classes
from storage.readers import ReadError, Scan, format_of, read_scan
from storage.specs import NORMALISATIONS
from storage.writers import (
    check_writable,
    label_dtype,
    output_format,
    write_image,
    write_label_map,
)

DEFAULT_BATCH_SIZE = 16
NORMALISATION_CHOICES = ("auto", *NORMALISATIONS)
CT_AIR_BELOW = -500.0  # a volume with values below this is in Hounsfield units (air is -1000)


@dataclass(frozen=True)
class Prompt:
    """One prompt pair reduced to the slice the model is shown."""

    image: np.ndarray  # (H, W) float32 in [0, 1]
    target: np.ndarray  # (H, W): int64 labels for segmentation, float32 in [0, 1] otherwise
    image_path: str
    target_path: str
    slice_index: int  # along the canonical z axis
    slices: int
    normalisation: str
    classes_left_out: tuple[int, ...] = ()  # labels of the prompt volume the chosen slice lacks


@dataclass(frozen=True)
class PreparedPrediction:
    """Everything read and checked; nothing painted or written yet."""

    prompts: tuple[Prompt, ...]
    query: np.ndarray  # (z, y, x) float32 in [0, 1]
    geometry: Geometry
    input_path: str
    input_normalisation: str
    output_path: Path
    task: str
    connected_classes: tuple[int, ...] = ()  # each keeps its largest connected component (mvg.postprocessing)


@dataclass(frozen=True)
class Prediction:
    """What was written."""

    path: Path
    task: str
    shape: tuple[int, ...]  # of the written file, in its own axis order
    dtype: str
    labels: tuple[int, ...]  # label values present in the output (segmentation), else ()
    value_range: tuple[float, float]
    prompts: tuple[Prompt, ...]
    input_normalisation: str


def predict_scan(
    model: MVG,
    prompts: list[tuple[str | Path, str | Path]],
    input_path: str | Path,
    output_path: str | Path,
    task: str = "segmentation",
    batch_size: int = DEFAULT_BATCH_SIZE,
    normalisation: str = "auto",
    device: str | torch.device | None = None,
    connected_classes: tuple[int, ...] = (),
) -> Prediction:
    """Paint `input_path` from the (prompt image, prompt target) file pairs; write `output_path`
    (.nii.gz / .nii, or .png for a 2-D input). Raises ValueError (ReadError, WriteError) on bad
    input, having written nothing."""
    prepared = prepare_prediction(prompts, input_path, output_path, task, normalisation, connected_classes)
    return paint_prediction(model, prepared, batch_size, device)


# --------------------------------------------------------------------------------- read and check


def prepare_prediction(
    prompts: list[tuple[str | Path, str | Path]],
    input_path: str | Path,
    output_path: str | Path,
    task: str = "segmentation",
    normalisation: str = "auto",
    connected_classes: tuple[int, ...] = (),
) -> PreparedPrediction:
    """Read and check the prompt pairs and the input; choose the prompt slices. `connected_classes`:
    segmentation classes that are one structure in the input (a ventricle, an organ): each keeps
    only its largest connected component of the painting (`mvg.postprocessing`)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if connected_classes and task != "segmentation":
        raise ValueError(f"connected classes are segmentation classes; the task is {task}")
    if normalisation not in NORMALISATION_CHOICES:
        raise ValueError(f"unknown normalisation {normalisation!r}; expected one of {', '.join(NORMALISATION_CHOICES)}")
    if not prompts:
        raise ValueError("at least one prompt pair (prompt image, prompt target) is needed")
    output_path = Path(output_path)
    output_format(output_path)  # the cheapest refusal first: a suffix we cannot write
    _refuse_overwriting_inputs(output_path, [input_path, *(p for pair in prompts for p in pair)])

    query_scan = _read_image(input_path)
    check_writable(output_path, query_scan.geometry)  # a PNG output needs a 2-D input
    query_normalisation = choose_normalisation(query_scan, normalisation)
    query = intensity_scale(query_scan.array, query_normalisation).apply(query_scan.array)
    chosen = tuple(_prepare_prompt(image, target, task, normalisation) for image, target in prompts)
    _refuse_classes_no_prompt_shows(connected_classes, chosen)
    return PreparedPrediction(chosen, query, query_scan.geometry, query_scan.path, query_normalisation, output_path, task,
                              tuple(connected_classes))


def _prepare_prompt(image_path, target_path, task: str, normalisation: str) -> Prompt:
    image_scan = _read_image(image_path)
    target_scan = _read_image(target_path)
    _require_same_grid(image_scan, target_scan)
    image_normalisation = choose_normalisation(image_scan, normalisation)
    if task == "segmentation":
        labels = _labels(target_scan)
        index = prompt_slice(labels, task)
        image = intensity_scale(image_scan.array, image_normalisation).apply(image_scan.array[index : index + 1])[0]
        left_out = tuple(int(v) for v in np.setdiff1d(np.unique(labels), np.unique(labels[index])) if v)
        return Prompt(image, labels[index], image_scan.path, target_scan.path, index, len(labels), image_normalisation, left_out)

    index = prompt_slice(target_scan.array, task)
    target_normalisation = choose_normalisation(target_scan, normalisation)
    target_scale = intensity_scale(target_scan.array, target_normalisation)
    # inpainting: the voided image and the full one share the full image's scaling (as in ingest)
    image_scale = target_scale if task == "inpainting" else intensity_scale(image_scan.array, image_normalisation)
    image = image_scale.apply(image_scan.array[index : index + 1])[0]
    target = target_scale.apply(target_scan.array[index : index + 1])[0]
    return Prompt(image, target, image_scan.path, target_scan.path, index, len(target_scan.array), image_normalisation)


def prompt_slice(target: np.ndarray, task: str) -> int:
    """Index along z of the slice a (z, y, x) prompt volume contributes. Segmentation: the slice with
    the most classes, then the most foreground voxels (the first such); other tasks: the middle."""
    if task != "segmentation":
        return len(target) // 2
    classes = [len(c) for c in slice_classes(target)]
    foreground = np.count_nonzero(target.reshape(len(target), -1), axis=1)
    return max(range(len(target)), key=lambda z: (classes[z], foreground[z]))


def choose_normalisation(scan: Scan, requested: str) -> str:
    """`ct` or `percentile` for this scan; `auto` decides from the format and the values."""
    if requested != "auto":
        return requested
    if format_of(scan.path) == "picture" or not scan.array.size:
        return "percentile"
    return "ct" if float(scan.array.min()) < CT_AIR_BELOW else "percentile"


def _read_image(path: str | Path) -> Scan:
    scan = read_scan(path)
    if scan.array.ndim != 3:
        raise ReadError(path, f"has {scan.channels} channels; mvg predict takes single-channel images")
    if not np.isfinite(scan.array).all():
        raise ReadError(path, "holds NaN or infinite values")
    return scan


def _require_same_grid(image: Scan, target: Scan) -> None:
    """The two files of a prompt pair must share one voxel grid (compared canonically, so files
    stored in different axis orders still pair up)."""
    if image.array.shape != target.array.shape:
        raise ValueError(
            f"prompt pair does not match: image {image.path} has shape {image.geometry.source_shape} "
            f"but target {target.path} has shape {target.geometry.source_shape}"
        )
    both_known = image.geometry.spacing_known and target.geometry.spacing_known
    if both_known and not np.allclose(image.geometry.affine, target.geometry.affine, rtol=1e-4, atol=1e-3):
        raise ValueError(
            f"prompt pair does not match: the affines of image {image.path} and target {target.path} "
            "differ; they are not on one voxel grid"
        )


def _labels(target: Scan) -> np.ndarray:
    """A segmentation prompt target as int64 labels; refuses fractions, negatives and empty maps."""
    values = target.array
    if not np.issubdtype(values.dtype, np.integer):
        rounded = np.rint(values)
        if not np.array_equal(rounded, values):
            raise ReadError(target.path, "is not a label map: it holds non-integer values")
        values = rounded
    if values.size and values.min() < 0:
        raise ReadError(target.path, f"is not a label map: it holds negative values (min {values.min()})")
    if not np.any(values):
        raise ReadError(target.path, "prompt target is empty (all background): segmentation needs at least one labelled voxel")
    return values.astype(np.int64)


def _refuse_classes_no_prompt_shows(classes: tuple[int, ...], prompts: tuple[Prompt, ...]) -> None:
    # a class no prompt holds is never painted: naming one is a typo, not a no-op to pass over
    shown = {int(v) for prompt in prompts for v in np.unique(prompt.target)} | {
        c for prompt in prompts for c in prompt.classes_left_out}
    missing = sorted(set(classes) - shown)
    if missing:
        raise ValueError(f"connected class(es) {missing} are in no prompt target (its labels: {sorted(shown - {0})})")


def _refuse_overwriting_inputs(output: Path, inputs: list[str | Path]) -> None:
    target = output.expanduser().resolve()
    for path in inputs:
        if Path(path).expanduser().resolve() == target:
            raise ValueError(f"--output {output} is one of the input files; choose another name")


# --------------------------------------------------------------------------------- paint and write


def paint_prediction(
    model: MVG,
    prepared: PreparedPrediction,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Prediction:
    """Paint every slice of the prepared input and write it in the input's geometry; `on_batch`:
    see `mvg.inference.paint_volume`."""
    most = model.config.max_pairs - 1  # one pair index belongs to the query
    if len(prepared.prompts) > most:
        raise ValueError(f"{len(prepared.prompts)} prompt pairs given; this model takes 1 to {most}")
    prompt_images, prompt_targets = _stack_prompts(prepared.prompts, model.config.image_size)
    painted = paint(model, prompt_images, prompt_targets, prepared.query, prepared.task, batch_size, device, on_batch)
    if prepared.connected_classes:
        painted = keep_largest_components(painted, prepared.connected_classes)
    if prepared.task == "segmentation":
        top = int(prompt_targets.max())  # one dtype for every output of these prompts
        path = write_label_map(painted, prepared.geometry, prepared.output_path, top=top)
        labels, dtype = tuple(int(v) for v in np.unique(painted)), str(label_dtype(top))
    else:
        path = write_image(painted, prepared.geometry, prepared.output_path)
        labels, dtype = (), "uint16" if output_format(path) == "png" else "float32"
    return Prediction(
        path=path,
        task=prepared.task,
        shape=tuple(prepared.geometry.source_shape),
        dtype=dtype,
        labels=labels,
        value_range=(float(painted.min()), float(painted.max())) if painted.size else (0.0, 0.0),
        prompts=prepared.prompts,
        input_normalisation=prepared.input_normalisation,
    )


def _stack_prompts(prompts: tuple[Prompt, ...], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(k, H, W) prompt images and targets. Pairs of different sizes are brought to the model's size
    here (labels nearest, images bilinear), where `paint` would have resized them anyway."""
    if len({p.image.shape for p in prompts}) == 1:
        return np.stack([p.image for p in prompts]), np.stack([p.target for p in prompts])
    labels = np.issubdtype(prompts[0].target.dtype, np.integer)
    images = np.stack([resize_slices(p.image[None], size)[0] for p in prompts])
    targets = np.stack([resize_slices(p.target[None], size, labels=labels)[0] for p in prompts])
    # bilinear resizing stays within the input's range up to rounding; paint insists on [0, 1]
    return np.clip(images, 0, 1), targets if labels else np.clip(targets, 0, 1)


def resolve_device(device: str | None) -> str:
    """`cpu`, `cuda` (refused where there is none), or None for the best one here."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device here; use --device cpu")
    return str(device)

