"""Evaluation (paper 3.3 and 4.1): paint whole test volumes from prompts drawn from the training
split, score them beside a trivial baseline, and lay the scores out like the paper's Tables 2 and 3.

The protocol, and our decisions where the paper is silent:

- Painting. Every test volume is painted by `mvg.inference.paint_volume`, whose docstring holds
  the painting decisions: the prompt slice at the same relative depth, floor(n * N_prompt /
  N_query) (paper 3.3), empty prompt slices kept, one colouring per volume from the dataset's
  classes, decoding among the levels the prompt shows, at the model's size. With
  `ModelConfig.largest_components`, each class the dataset's spec declares one connected structure
  then keeps its largest connected component (`mvg.postprocessing`); the baseline is not touched.
- Prompt draws. Each draw picks `shots` distinct training cases per test case with
  `np.random.default_rng([seed, draw, case index])`; the model and the baseline see the same draw.
  Several draws measure how much the scores depend on which training case prompts (the paper
  draws once); `shots` > 1 hands the model k prompt pairs (its autoregressive sequence).
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
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from mvg.colouring import Colouring
from mvg.config import TASKS
from mvg.inference import image_tensor, paint_volume, prompt_slice_index, resize_images, trained_colouring
from mvg.metrics import SSIM_BORDER, dice_per_class, iou_per_class, mae, mean_over_classes, psnr, ssim
from mvg.model import MVG
from mvg.montage import prediction_montage
from mvg.postprocessing import keep_largest_components
from mvg.pixels import unit_float
from storage.scratch import scratch_beside
from storage.shards import CorruptShard
from storage.store import StoredDataset

MODEL = "model"
COPY_PROMPT = "copy-prompt"
IDENTITY = "identity"
BASELINE_BY_TASK = {"segmentation": COPY_PROMPT, "synthesis": IDENTITY, "inpainting": IDENTITY, "denoising": IDENTITY}
IMAGE_METRICS = ("MAE", "PSNR", "SSIM")
MASKED = " (mask)"  # suffix of the inpainting scores taken inside the mask
MONTAGE_DEPTHS = (0.25, 0.5, 0.75)  # relative depths of the montage rows


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
    on_case: Callable[[str], None] | None = None,
) -> DatasetEvaluation:
    """Paint every test case of `dataset` (the first `max_cases`) from `shots` training cases per
    draw, with the model and the task's baseline, and score both (module docstring). `per_class`:
    one binary pass per class (`paint_volume`; default: as the model was trained). `on_case(case)`
    runs after each test case, scored or failed (progress bars)."""
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
    if task == "segmentation" and model.config.largest_components and spec.connected_classes:
        paint = _keeping_largest_components(paint, spec.connected_classes)
    # a pre-defined-colour model is shown the levels it was trained to give this dataset's classes
    colour = partial(trained_colouring, model, dataset.name)
    rows: list[dict] = []
    failed: list[dict] = []
    montage = None
    for index, case in enumerate(tests):
        try:
            case_rows, case_montage = _evaluate_case(paint, colour, dataset, case, index, training, classes, draws, shots, seed)
        except CorruptShard as error:  # a damaged case is reported; the others are still scored
            failed.append({"dataset": dataset.name, "task": task, "case": case, "reason": str(error)})
            case_rows, case_montage = [], None
        if on_case is not None:
            on_case(case)
        rows += case_rows
        montage = case_montage if montage is None else montage
    if not rows:
        raise NoCaseScored(dataset.name, failed)

    metrics = tuple(key for key in rows[0] if key not in ("dataset", "task", "case", "draw", "method", "prompts"))
    return DatasetEvaluation(dataset.name, task, draws, shots, seed, rows, metrics,
                             summarise(rows, metrics, draws), montage, failed)


def _keeping_largest_components(paint: Callable[..., np.ndarray], classes: Sequence[int]) -> Callable[..., np.ndarray]:
    """`paint`, its paintings post-processed by `keep_largest_components` (ModelConfig.largest_components)."""

    def paint_and_keep(*args, **kwargs) -> np.ndarray:
        return keep_largest_components(paint(*args, **kwargs), classes)

    return paint_and_keep


def _evaluate_case(
    paint: Callable[..., np.ndarray],
    colour: Callable[[list[int]], Colouring | None],
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
    its first draw. `paint(prompt_images, prompt_targets, query, task, colouring=...)` is the model's
    `paint_volume`; `colour(classes)` the colouring its prompts get (`trained_colouring`). All or nothing: a damaged shard met in any draw raises before a row is kept."""
    spec = dataset.spec
    task = spec.task
    segmentation = task == "segmentation"
    baseline = BASELINE_BY_TASK[task]
    sample = dataset.read_volume(case)
    query = unit_float(sample.image)
    truth = sample.target if segmentation else unit_float(sample.target)
    mask = None if sample.mask is None or task != "inpainting" else sample.mask.astype(bool)
    case_classes = classes or _classes_in(truth)
    colouring = colour(case_classes) if segmentation else None  # None: the prompt's own colours
    rows: list[dict] = []
    montage = None
    for draw in range(draws):
        rng = np.random.default_rng([seed, draw, index])
        chosen = [training[i] for i in rng.choice(len(training), size=shots, replace=False)]
        prompts = [dataset.read_volume(name) for name in chosen]
        prompt_images = [unit_float(prompt.image) for prompt in prompts]
        prompt_targets = [prompt.target if segmentation else unit_float(prompt.target) for prompt in prompts]
        predictions = {
            MODEL: paint(prompt_images, prompt_targets, query, task, colouring=colouring),
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
    then renamed over it, so a reader never sees half a table. The table gets the mode the umask
    gives (0644 typically), as predicted files do; mkstemp's 0600 would hide it from others."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = scratch_beside(path)
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
