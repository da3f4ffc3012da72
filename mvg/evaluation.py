"""Evaluation (paper 3.3 and 4.1): paint whole test volumes from prompts drawn from the training
split, score them beside a trivial baseline, and lay the scores out like the paper's Tables 2 and 3.

The protocol, and our decisions where the paper is silent:

- Prompt slices. Query slice n of a test volume of N_query slices is painted from slice
  floor(n * N_prompt / N_query) of each prompt volume: the same relative depth (paper 3.3).
  The prompt slice may hold no foreground; the model then sees an empty prompt and should paint
  background, as in the paper's protocol, so empty slices are neither skipped nor re-drawn.
- Prompt draws. Each draw picks `shots` distinct training cases per test case with
  `np.random.default_rng([seed, draw, case index])`; the model and the baseline see the same draw.
  Several draws measure how much the scores depend on which training case prompts (the paper
  draws once); `shots` > 1 hands the model k prompt pairs (its autoregressive sequence).
- Colouring. One colouring for the whole volume, from the dataset's classes, so a class has the same
  grey level on every slice and in every draw (`mvg.inference.prompt_colouring` spreads the levels).
- Decoding (`decode="prompt"`, the default): the nearest level among background and the levels
  shown to the model in that slice's prompt targets (all k pairs), as `paint` and the colouring's
  own decode do. The alternative, `decode="all"`, offers every level of the colouring. We keep
  "prompt" because a level the prompt does not show carries no meaning the model could have
  read: it only appears where the painted value falls between two shown levels (an edge, a
  blurred region) or drifts in the background, and decoding it there invents a class. Worse,
  per-volume IoU scores a class absent from the truth but predicted anywhere as 0 rather than
  leaving it out, so a few stray voxels of a level no prompt showed would sink the volume's mIoU.
  "prompt" also makes an empty prompt decode to background, which is what the protocol asks the
  model to paint there. Measured on the 80 px, 7-organ phantoms with a stand-in that paints its
  prompt target blurred (5 x 5 binomial), as a model's soft edges are: mIoU 0.30 with "prompt",
  0.25 with "all"; with added noise (sigma 0.05) 0.22 against 0.16. A sharp copy scores the same
  either way.
- Decoding happens at the model's size, and the class ids are then resized to the query's size by
  nearest pixel. `paint` instead resizes the painted levels bilinearly and decodes at the query's
  size; with two or more classes that invents classes along every edge, because an edge between
  level 14/16 and background passes through the levels of the other classes on its way down.
  A stand-in that paints its prompt target exactly, at 64 px on the 80 px phantoms, scored
  mIoU 0.41 by the bilinear route and 0.54 by decoding first, as much as the copy-the-prompt
  baseline (0.54): the bilinear route would cap the model below the baseline for a reason that
  has nothing to do with the model.
- Baselines (README, "Benchmarks"): segmentation is compared with copy-the-prompt (the first prompt
  pair's target slice at the same relative depth, resized to the query by nearest pixel), the image
  tasks with identity (the query image itself). They tell whether the model beats doing nothing.
- Metrics (`mvg.metrics`): segmentation IoU and Dice per class over the volume, then the mean over
  classes (mIoU, mDice); a class absent from both prediction and truth is left out (NaN). Image
  tasks MAE, PSNR, SSIM on [0, 1]; inpainting also inside its mask, "(mask)" columns.
- Aggregation: per method and metric, the mean over test cases of each draw (NaN, nothing to score,
  left out), then the mean and the sample standard deviation (ddof 1) over draws. The standard
  deviation is the prompt sensitivity; with one draw it is NaN and tables show the mean alone.
- Damaged store shards (`storage.shards.CorruptShard`, of the test case or of a prompt drawn for
  it): that test case is reported as failed, with the error naming dataset, case, role and slice,
  and the other cases are scored; the model and its baseline are scored on the same cases.
"""

from __future__ import annotations

import csv
import math
import operator
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from mvg.colouring import Colouring, binary
from mvg.config import TASKS
from mvg.episodes import unit_float
from mvg.inference import evaluating, image_tensor, prompt_colouring, resize_images
from mvg.metrics import SSIM_BORDER, dice_per_class, iou_per_class, mae, mean_over_classes, psnr, ssim
from mvg.model import MVG
from mvg.montage import prediction_montage
from storage.shards import CorruptShard
from storage.store import StoredDataset

MODEL = "model"
COPY_PROMPT = "copy-prompt"
IDENTITY = "identity"
BASELINE_BY_TASK = {"segmentation": COPY_PROMPT, "synthesis": IDENTITY, "inpainting": IDENTITY, "denoising": IDENTITY}
DECODE_LEVELS = ("prompt", "all")
IMAGE_METRICS = ("MAE", "PSNR", "SSIM")
MASKED = " (mask)"  # suffix of the inpainting scores taken inside the mask
MONTAGE_DEPTHS = (0.25, 0.5, 0.75)  # relative depths of the montage rows


# ------------------------------------------------------------------------------ prompt selection


def prompt_slice_index(n: int, prompt_slices: int, query_slices: int) -> int:
    """The prompt slice at the same relative depth as query slice n: floor(n * N_prompt / N_query),
    in integers so no rounding can move it. For 0 <= n < N_query it lies in [0, N_prompt); the
    clamp only guards that promise."""
    n, prompt_slices, query_slices = (operator.index(value) for value in (n, prompt_slices, query_slices))
    if prompt_slices < 1 or query_slices < 1:
        raise ValueError(f"volumes need at least one slice, got {prompt_slices} prompt and {query_slices} query slices")
    if not 0 <= n < query_slices:
        raise ValueError(f"query slice {n} is outside a volume of {query_slices} slices")
    return min(n * prompt_slices // query_slices, prompt_slices - 1)


def volume_colouring(prompt_targets: Sequence[np.ndarray], classes: Iterable[int] | None = None) -> Colouring:
    """One colouring for a whole volume: of `classes` (the dataset's) when given, else of every class
    found anywhere in the prompt volumes."""
    if classes is None:
        values = np.unique(np.concatenate([np.unique(target) for target in prompt_targets]))
    else:
        values = np.asarray(sorted({int(value) for value in classes}), dtype=np.int64)
    return prompt_colouring(values)


# ------------------------------------------------------------------------------ painting volumes


def paint_volume(
    model: MVG,
    prompt_images: Sequence[np.ndarray],
    prompt_targets: Sequence[np.ndarray],
    query: np.ndarray,
    task: str,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    colouring: Colouring | None = None,
    classes: Iterable[int] | None = None,
    decode: str = "prompt",
    cache: bool = True,
    per_class: bool | None = None,
) -> np.ndarray:
    """Paint the target of every slice of `query` (Zq, Hq, Wq) from k prompt volumes.

    prompt_images[j] (Zp_j, H_j, W_j) in [0, 1]; prompt_targets[j] the same shape: integer labels for
    segmentation, images in [0, 1] otherwise. Query slice n is painted from slice
    `prompt_slice_index(n, Zp_j, Zq)` of every prompt volume j. Segmentation colours the labels with
    `colouring`, else with `volume_colouring(prompt_targets, classes)`, and decodes as `decode` says
    (module docstring). Returns int64 labels or float32 images in [0, 1], shaped like `query`.
    `cache=False` re-encodes the prompts with every query slice (`MVG.predict_uncached`) instead of
    encoding each distinct prompt once (`MVG.predict`): the same prediction, slower; the baseline
    that benchmarks/evaluate.py measures the prompt cache against. `per_class` (default: whether the
    model was trained with binary colouring) paints one binary pass per class and gives each voxel
    the class painted brightest, where that clears 0.5 (the paper's binary colourisation)."""
    _check_volumes(model, prompt_images, prompt_targets, query, task, batch_size, decode)
    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    segmentation = task == "segmentation"
    if segmentation and colouring is None:
        colouring = volume_colouring(prompt_targets, classes)
    if per_class is None:
        per_class = getattr(model, "colouring", "random") == "binary"
    # one (colouring, levels) per pass: the volume's colouring, or class c alone at level 1
    if not segmentation:
        passes = [(None, None)]
    elif per_class:
        passes = [(binary(value), _Levels.of(binary(value), device)) for value in sorted(colouring.levels)]
    else:
        passes = [(colouring, _Levels.of(colouring, device))]

    depth, height, width = query.shape
    painted = np.empty(query.shape, dtype=np.int64 if segmentation else np.float32)
    size = (model.config.image_size,) * 2
    with evaluating(model), torch.inference_mode():
        # consecutive query slices map to the same or neighbouring prompt slices, so a batch holds
        # few distinct prompts and MVG.predict encodes each of them once
        for start in range(0, depth, batch_size):
            rows = range(start, min(start + batch_size, depth))
            queries = resize_images(image_tensor(unit_float(query[rows.start : rows.stop]), device), size)
            painted_passes = []
            for pass_colouring, levels in passes:
                pairs = [
                    _prompt_pair(images, targets, rows, depth, size, device, pass_colouring, levels)
                    for images, targets in zip(prompt_images, prompt_targets)
                ]
                shown_images = torch.stack([images for images, _, _ in pairs], dim=1)
                shown_targets = torch.stack([targets for _, targets, _ in pairs], dim=1)
                if cache:
                    prediction = model.predict(queries, shown_images, shown_targets, task)
                else:
                    prediction = model.predict_uncached(queries, shown_images, shown_targets)
                shown = torch.stack([present for _, _, present in pairs]).any(dim=0) if segmentation else None
                painted_passes.append((prediction[:, 0].float(), shown))
            if segmentation:
                if per_class:
                    labels = _brightest_class(painted_passes, sorted(colouring.levels), decode)
                else:
                    (prediction, shown), (_, levels) = painted_passes[0], passes[0]
                    allowed = shown if decode == "prompt" else torch.ones_like(shown)
                    labels = levels.decode(prediction, allowed)  # at the model's size: see module doc
                prediction = resize_images(labels[:, None].float(), (height, width), labels=True)[:, 0].long()
            else:
                prediction = painted_passes[0][0][:, None]
                prediction = resize_images(prediction.float(), (height, width)).clamp(0, 1)[:, 0]
            painted[rows.start : rows.stop] = prediction.cpu().numpy()
    return painted


def _brightest_class(painted: list[tuple[torch.Tensor, torch.Tensor]], classes: list[int], decode: str) -> torch.Tensor:
    """Binary passes, one per class of `classes` -> class ids: each voxel takes the class painted brightest where that clears
    0.5, else background. With decode "prompt" a class whose prompt slice does not show it stays
    out of that slice (as the multi-level decode does)."""
    scores = []
    for prediction, shown in painted:
        allowed = shown[:, 1] if decode == "prompt" else torch.ones_like(shown[:, 1])
        scores.append(torch.where(allowed[:, None, None], prediction, torch.zeros_like(prediction)))
    stack = torch.stack(scores)  # (classes, N, S, S)
    best_score, best = stack.max(dim=0)
    ids = torch.tensor(classes, dtype=torch.int64, device=stack.device)
    return torch.where(best_score >= 0.5, ids[best], torch.zeros_like(best))


@dataclass(frozen=True)
class _Levels:
    """A colouring's levels as tensors, sorted, background first: the candidates of decoding."""

    values: torch.Tensor  # (L + 1,) float32, 0 first
    classes: torch.Tensor  # (L + 1,) int64 class of each level, 0 first

    @classmethod
    def of(cls, colouring: Colouring, device: torch.device) -> _Levels:
        ordered = sorted(colouring.levels.items(), key=lambda item: item[1])
        values = torch.tensor([0.0] + [level for _, level in ordered], dtype=torch.float32, device=device)
        classes = torch.tensor([0] + [value for value, _ in ordered], dtype=torch.int64, device=device)
        return cls(values, classes)

    def present(self, coloured: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) coloured targets -> (N, L + 1) whether each level occurs; background always
        counts as shown. Exact comparison: colouring and nearest resizing copy the float32 levels."""
        background = torch.ones((coloured.shape[0], 1), dtype=torch.bool, device=coloured.device)
        shown = [(coloured == level).flatten(1).any(dim=1, keepdim=True) for level in self.values[1:]]
        return torch.cat([background, *shown], dim=1)

    def decode(self, prediction: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """(N, H, W) painted levels -> class ids by the nearest allowed level ((N, L + 1) mask).
        One level at a time, so memory stays one slice batch; ties go to the lower level, as
        `Colouring.decode`'s argmin over sorted levels does."""
        best_distance = prediction.abs()  # background is always allowed
        best = torch.zeros(prediction.shape, dtype=torch.int64, device=prediction.device)
        for index in range(1, len(self.values)):
            distance = (prediction - self.values[index]).abs()
            closer = (distance < best_distance) & allowed[:, index, None, None]
            best = torch.where(closer, self.classes[index], best)
            best_distance = torch.where(closer, distance, best_distance)
        return best


def _prompt_pair(
    images: np.ndarray,
    targets: np.ndarray,
    rows: range,
    query_depth: int,
    size: tuple[int, int],
    device: torch.device,
    colouring: Colouring | None,
    levels: _Levels | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One prompt volume's slices for a batch of query rows, at the model's size: images and
    targets (rows, 1, S, S), and for segmentation which levels each row's target shows.
    Each distinct slice is read, coloured and resized once, then repeated for its rows."""
    indices = np.array([prompt_slice_index(n, len(images), query_depth) for n in rows])
    distinct, row_slice = np.unique(indices, return_inverse=True)
    row_slice = torch.as_tensor(row_slice, device=device)
    shown_images = resize_images(image_tensor(unit_float(images[distinct]), device), size)
    if colouring is None:
        shown_targets = resize_images(image_tensor(unit_float(targets[distinct]), device), size)
        return shown_images[row_slice], shown_targets[row_slice], None
    coloured = colouring.colour(np.asarray(targets[distinct], dtype=np.int64))
    shown_targets = resize_images(image_tensor(coloured, device), size, labels=True)
    return shown_images[row_slice], shown_targets[row_slice], levels.present(shown_targets)[row_slice]


def _check_volumes(
    model: MVG,
    prompt_images: Sequence[np.ndarray],
    prompt_targets: Sequence[np.ndarray],
    query: np.ndarray,
    task: str,
    batch_size: int,
    decode: str,
) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if decode not in DECODE_LEVELS:
        raise ValueError(f"unknown decode {decode!r}; expected one of {', '.join(DECODE_LEVELS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if len(prompt_images) != len(prompt_targets):
        raise ValueError(f"{len(prompt_images)} prompt image volumes but {len(prompt_targets)} prompt target volumes")
    pairs, most = len(prompt_images), model.config.max_pairs - 1  # one pair index is the query's
    if not 1 <= pairs <= most:
        raise ValueError(f"{pairs} prompt volumes given; this model takes 1 to {most}")
    volumes = [("query", query)] + [(f"prompt_images[{j}]", v) for j, v in enumerate(prompt_images)]
    volumes += [(f"prompt_targets[{j}]", v) for j, v in enumerate(prompt_targets)]
    for name, volume in volumes:
        if not isinstance(volume, np.ndarray) or volume.ndim != 3 or 0 in volume.shape:
            raise ValueError(f"{name} must be a non-empty numpy volume (slices, height, width), got shape {np.shape(volume)}")
    for j, (images, targets) in enumerate(zip(prompt_images, prompt_targets)):
        if images.shape != targets.shape:
            raise ValueError(f"prompt_images[{j}] {images.shape} and prompt_targets[{j}] {targets.shape} differ in shape")
    unit_images = volumes[: 1 + pairs]
    if task == "segmentation":
        for name, targets in volumes[1 + pairs :]:
            integral = np.issubdtype(targets.dtype, np.integer) or np.array_equal(targets, np.round(targets))
            if not integral or targets.min() < 0:
                raise ValueError(f"segmentation {name} must be label maps of non-negative integers")
    else:
        unit_images += volumes[1 + pairs :]
    for name, volume in unit_images:
        # NaN fails both comparisons, so it is refused too
        if not (volume.min() >= 0 and volume.max() <= 1):
            raise ValueError(f"{name} must be images in [0, 1] (normalise intensities first)")


# ------------------------------------------------------------------------------ baselines


def copy_prompt(prompt_target_volume: np.ndarray, query_shape: tuple[int, int, int]) -> np.ndarray:
    """Copy-the-prompt baseline: for each query slice, the prompt target slice at the same relative
    depth, resized to the query's size by nearest pixel. Labels stay int64; images become float32."""
    depth, height, width = query_shape
    indices = [prompt_slice_index(n, len(prompt_target_volume), depth) for n in range(depth)]
    chosen = np.asarray(prompt_target_volume)[indices]
    labels = np.issubdtype(chosen.dtype, np.integer)
    resized = resize_images(image_tensor(chosen if labels else unit_float(chosen), "cpu"), (height, width), labels=True)
    resized = resized[:, 0].numpy()
    return resized.round().astype(np.int64) if labels else resized  # labels below 2^24 are exact in float32


def identity(query: np.ndarray) -> np.ndarray:
    """Identity baseline for the image-to-image tasks: the query image itself, float32."""
    return unit_float(np.asarray(query))


# ------------------------------------------------------------------------------ one dataset


@dataclass(frozen=True)
class Aggregate:
    """One metric of one method over a dataset."""

    mean: float  # over draws of the per-draw means
    std: float  # sample standard deviation over draws (prompt sensitivity); NaN with one draw
    per_draw: tuple[float, ...]  # mean over test cases, per draw


@dataclass
class DatasetEvaluation:
    dataset: str
    task: str
    draws: int
    shots: int
    seed: int
    rows: list[dict]  # one per test case, draw and method: dataset, task, case, draw, method, prompts, metrics
    metrics: tuple[str, ...]  # the metric columns of the rows, in order
    summary: dict[str, dict[str, Aggregate]]  # method -> metric -> Aggregate
    montage: np.ndarray  # RGB uint8: first test case, first draw, model prediction at three depths
    failed: list[dict] = field(default_factory=list)  # test cases not scored: dataset, task, case, reason

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.summary)

    def summary_rows(self) -> list[dict]:
        """The summary flattened, one row per method and metric (for CSV files and run metrics)."""
        return [
            {"dataset": self.dataset, "task": self.task, "method": method, "metric": metric,
             "mean": aggregate.mean, "std": aggregate.std, "draws": self.draws, "shots": self.shots}
            for method, metrics in self.summary.items()
            for metric, aggregate in metrics.items()
        ]


class NoCaseScored(ValueError):
    """Every test case of a dataset failed to read; `failed` lists them as `DatasetEvaluation.failed` does."""

    def __init__(self, dataset: str, failed: list[dict]):
        super().__init__(f"dataset {dataset}: no test case could be read: " + "; ".join(row["reason"] for row in failed))
        self.dataset, self.failed = dataset, failed

    def __reduce__(self):  # Prefect may pickle a task's exception; rebuild it from what it was made of
        return NoCaseScored, (self.dataset, self.failed)


def evaluate_dataset(
    model: MVG,
    dataset: StoredDataset,
    *,
    draws: int = 1,
    shots: int = 1,
    seed: int = 0,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    max_cases: int | None = None,
    decode: str = "prompt",
    per_class: bool | None = None,
) -> DatasetEvaluation:
    """Paint every test case of `dataset` (the first `max_cases`) from `shots` training cases per
    draw, with the model and the task's baseline, and score both (module docstring). `per_class`:
    one binary pass per class (`paint_volume`; default: as the model was trained)."""
    spec = dataset.spec
    task = spec.task
    if task not in BASELINE_BY_TASK:
        raise ValueError(f"dataset {dataset.name}: task {task!r} has no evaluation; expected one of {', '.join(TASKS)}")
    most = model.config.max_pairs - 1
    if not 1 <= shots <= most:
        raise ValueError(f"shots must be 1 to {most} (this model takes {model.config.max_pairs} pairs, one the query's), got {shots}")
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    tests = dataset.cases("test")
    if not tests:
        raise ValueError(f"dataset {dataset.name} has no test cases: evaluation runs on the 'test' split")
    if max_cases is not None:
        tests = tests[:max_cases]
    training = dataset.cases("train")
    if len(training) < shots:
        raise ValueError(f"dataset {dataset.name} has {len(training)} training cases; {shots} shots need as many distinct ones")

    classes = sorted(int(value) for value in spec.classes if int(value) != 0)
    paint = partial(paint_volume, model, batch_size=batch_size, device=device, classes=classes or None, decode=decode, per_class=per_class)
    rows: list[dict] = []
    failed: list[dict] = []
    montage = None
    for index, case in enumerate(tests):
        try:
            case_rows, case_montage = _evaluate_case(paint, dataset, case, index, training, classes, draws, shots, seed)
        except CorruptShard as error:  # a damaged case is reported; the others are still scored
            failed.append({"dataset": dataset.name, "task": task, "case": case, "reason": str(error)})
            continue
        rows += case_rows
        montage = case_montage if montage is None else montage
    if not rows:
        raise NoCaseScored(dataset.name, failed)

    metrics = tuple(key for key in rows[0] if key not in ("dataset", "task", "case", "draw", "method", "prompts"))
    return DatasetEvaluation(dataset.name, task, draws, shots, seed, rows, metrics,
                             summarise(rows, metrics, draws), montage, failed)


def _evaluate_case(
    paint: Callable[..., np.ndarray],
    dataset: StoredDataset,
    case: str,
    index: int,
    training: list[str],
    classes: list[int],
    draws: int,
    shots: int,
    seed: int,
) -> tuple[list[dict], np.ndarray]:
    """Every draw of test case number `index`: its rows (model and baseline), and the montage of
    its first draw. `paint(prompt_images, prompt_targets, query, task)` is the model's
    `paint_volume`. All or nothing: a damaged shard met in any draw raises before a row is kept."""
    spec = dataset.spec
    task = spec.task
    segmentation = task == "segmentation"
    baseline = BASELINE_BY_TASK[task]
    sample = dataset.read_volume(case)
    query = unit_float(sample.image)
    truth = sample.target if segmentation else unit_float(sample.target)
    mask = None if sample.mask is None or task != "inpainting" else sample.mask.astype(bool)
    case_classes = classes or _classes_in(truth)
    rows: list[dict] = []
    montage = None
    for draw in range(draws):
        rng = np.random.default_rng([seed, draw, index])
        chosen = [training[i] for i in rng.choice(len(training), size=shots, replace=False)]
        prompts = [dataset.read_volume(name) for name in chosen]
        prompt_images = [unit_float(prompt.image) for prompt in prompts]
        prompt_targets = [prompt.target if segmentation else unit_float(prompt.target) for prompt in prompts]
        predictions = {
            MODEL: paint(prompt_images, prompt_targets, query, task),
            baseline: copy_prompt(prompt_targets[0], query.shape) if segmentation else identity(query),
        }
        for method, prediction in predictions.items():
            scores = (
                segmentation_scores(prediction, truth, case_classes, spec.classes)
                if segmentation
                else image_scores(prediction, truth, mask)
            )
            rows.append({"dataset": dataset.name, "task": task, "case": case, "draw": draw, "method": method,
                         "prompts": " ".join(chosen), **scores})
        if montage is None:
            scale = max(case_classes, default=1) if segmentation else 1
            montage = evaluation_montage(prompt_images[0], prompt_targets[0], query, predictions[MODEL], truth, scale)
    return rows, montage


def segmentation_scores(
    prediction: np.ndarray, truth: np.ndarray, classes: Sequence[int], names: dict[int, str] | None = None
) -> dict[str, float]:
    """mIoU and mDice over `classes` (foreground, per volume), then the IoU of each class."""
    names = names or {}
    iou = iou_per_class(prediction, truth, classes)
    dice = dice_per_class(prediction, truth, classes)
    scores = {"mIoU": mean_over_classes(iou), "mDice": mean_over_classes(dice)}
    scores.update({f"IoU {names.get(value, value)}": iou[value] for value in classes})
    return scores


def image_scores(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """MAE, PSNR and SSIM on [0, 1]; with a mask also inside it (NaN where the mask leaves nothing
    to score: an empty mask, or for SSIM one that lies wholly in the cropped border)."""
    scores = {"MAE": mae(prediction, truth), "PSNR": psnr(prediction, truth), "SSIM": ssim(prediction, truth)}
    if mask is not None:
        scorable = bool(mask.any())
        interior = bool(mask[..., SSIM_BORDER:-SSIM_BORDER, SSIM_BORDER:-SSIM_BORDER].any())
        scores["MAE" + MASKED] = mae(prediction, truth, mask=mask) if scorable else math.nan
        scores["PSNR" + MASKED] = psnr(prediction, truth, mask=mask) if scorable else math.nan
        scores["SSIM" + MASKED] = ssim(prediction, truth, mask=mask) if interior else math.nan
    return scores


def summarise(rows: Sequence[dict], metrics: Sequence[str], draws: int) -> dict[str, dict[str, Aggregate]]:
    """Per method and metric: the mean over cases of each draw, then mean and std over draws."""
    methods = list(dict.fromkeys(row["method"] for row in rows))
    summary: dict[str, dict[str, Aggregate]] = {}
    for method in methods:
        summary[method] = {}
        for metric in metrics:
            per_draw = tuple(
                _mean_skipping_nan([row[metric] for row in rows if row["method"] == method and row["draw"] == draw])
                for draw in range(draws)
            )
            measured = np.array([value for value in per_draw if not math.isnan(value)], dtype=np.float64)
            mean = float(measured.mean()) if measured.size else math.nan
            std = float(measured.std(ddof=1)) if measured.size > 1 else math.nan
            summary[method][metric] = Aggregate(mean, std, per_draw)
    return summary


def evaluation_montage(
    prompt_image: np.ndarray,
    prompt_target: np.ndarray,
    query: np.ndarray,
    prediction: np.ndarray,
    truth: np.ndarray,
    label_scale: float = 1,
) -> np.ndarray:
    """Prompt image | prompt target | query | prediction | truth at three relative depths. Labels
    show as grey levels: divided by `label_scale` (the largest class) into [0, 1]."""
    depth = len(query)
    rows = []
    for fraction in MONTAGE_DEPTHS:
        n = min(int(fraction * depth), depth - 1)
        p = prompt_slice_index(n, len(prompt_image), depth)
        rows.append([
            prompt_image[p],
            np.asarray(prompt_target[p], dtype=np.float32) / label_scale,
            query[n],
            np.asarray(prediction[n], dtype=np.float32) / label_scale,
            np.asarray(truth[n], dtype=np.float32) / label_scale,
        ])
    return prediction_montage(rows)


def _classes_in(labels: np.ndarray) -> list[int]:
    # Only for a dataset whose spec lists no classes: score those the truth holds.
    return [int(value) for value in np.unique(labels) if value != 0]


def _mean_skipping_nan(values: Sequence[float]) -> float:
    kept = np.array([value for value in values if not math.isnan(value)], dtype=np.float64)
    return float(kept.mean()) if kept.size else math.nan


# ------------------------------------------------------------------------------ tables


def tables(evaluations: Sequence[DatasetEvaluation]) -> dict[str, list[dict]]:
    """The paper's layouts, as lists of row dicts with formatted cells ("mean ± std" with several
    draws, three decimals as the paper prints them).

    table2 (segmentation, Table 2): one row per method (model, copy-prompt), one mIoU column per
    dataset, then "mean", the mean of the datasets' means. Draws of different datasets are
    independent, so the mean's spread is sqrt(sum std^2) / datasets.
    table3 (image-to-image, Table 3): one row per method (model, identity), columns
    "<dataset> MAE", "<dataset> PSNR", "<dataset> SSIM" (inpainting adds the "(mask)" ones),
    datasets grouped by task in the paper's order (synthesis, inpainting, denoising). The wide form
    keeps the paper's reading -- methods compared along a row -- and the per-case rows already
    give the long form for analysis."""
    names = [evaluation.dataset for evaluation in evaluations]
    if len(set(names)) != len(names):
        raise ValueError(f"each dataset may appear once in the tables, got {names}")
    segmentation = [e for e in evaluations if e.task == "segmentation"]
    images = sorted((e for e in evaluations if e.task != "segmentation"), key=lambda e: (TASKS.index(e.task), e.dataset))

    table2 = []
    if segmentation:
        for method in (MODEL, COPY_PROMPT):
            aggregates = [e.summary[method]["mIoU"] for e in segmentation]
            row = {"method": method}
            row.update({e.dataset: _cell(aggregate) for e, aggregate in zip(segmentation, aggregates)})
            row["mean"] = _cell(_mean_of(aggregates))
            table2.append(row)

    table3 = []
    if images:
        for method in (MODEL, IDENTITY):
            row = {"method": method}
            for evaluation in images:
                for metric in evaluation.metrics:
                    row[f"{evaluation.dataset} {metric}"] = _cell(evaluation.summary[method][metric])
            table3.append(row)
    return {"table2": table2, "table3": table3}


def _mean_of(aggregates: Sequence[Aggregate]) -> Aggregate:
    means = np.array([a.mean for a in aggregates], dtype=np.float64)
    stds = np.array([a.std for a in aggregates], dtype=np.float64)
    mean = float(means.mean())
    std = float(np.sqrt(np.sum(stds**2)) / len(stds))  # NaN as soon as one dataset has a single draw
    return Aggregate(mean, std, ())


def _cell(aggregate: Aggregate) -> str:
    if math.isnan(aggregate.mean):
        return "n/a"
    if math.isnan(aggregate.std):
        return f"{aggregate.mean:.3f}"
    return f"{aggregate.mean:.3f} ± {aggregate.std:.3f}"


def _columns(rows: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(key for row in rows for key in row))


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def to_markdown(rows: Sequence[dict]) -> str:
    """A GitHub-flavoured markdown table; columns in order of first appearance, floats to 4 decimals."""
    if not rows:
        return ""
    columns = _columns(rows)
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_text(row.get(column, "")).replace("|", "\\|") for column in columns) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """Write rows as CSV (full float precision), atomically: to a temporary file beside `path`,
    then renamed over it, so a reader never sees half a table."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=_columns(rows), restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
