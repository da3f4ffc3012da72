"""Evaluation metrics (paper 4.1): mIoU for segmentation; MAE, PSNR, SSIM for synthesis, inpainting
and denoising. Pure numpy and scipy.ndimage functions; tests check them against scikit-image.

Inputs are volumes (z, y, x) or 2-D images (y, x); intensities are in [0, 1] (data_range 1). Any
float dtype is accepted and everything is computed in float64, so a float16 prediction and a float64
reference are compared exactly as given.

Conventions (the paper names the metrics, not their edge cases):

- IoU and Dice are counted per class over the whole volume; mIoU is then the mean over classes of one
  volume (per class per volume, then the mean). A class absent from both prediction and truth has
  no overlap to measure and is NaN: scoring it 1 would reward every volume that simply lacks the organ,
  scoring it 0 would punish a correct empty prediction. `mean_over_classes` skips NaN. A class that is
  predicted but absent from the truth (or present but missed) scores 0.
- PSNR of a volume is taken over all its voxels at once, 10 log10(range^2 / MSE); identical inputs
  give inf (as scikit-image does) rather than an arbitrary cap, so callers see a perfect copy as such.
- SSIM follows scikit-image's defaults (7x7 uniform window, K1 0.01, K2 0.03, sample covariance,
  reflect padding, mean over the map with (7 - 1) // 2 border pixels cropped). Volumes are measured per
  axial slice, in-plane windows only, because the model paints slices and the slice spacing differs
  from the in-plane spacing; the volume SSIM is the plain mean over slices. Every slice has the same
  number of uncropped pixels, so this equals the mean over all uncropped voxels.
- `mask=` restricts a metric to the masked voxels (inpainting is scored inside its mask). MAE and PSNR
  use the masked voxels only. SSIM keeps the same windows as unmasked (a window at the mask's edge
  also sees pixels outside it) and averages the SSIM map over masked pixels outside the cropped
  border, i.e. scikit-image's `full=True` map, cropped, at the cropped mask. An all-true mask thus
  gives exactly the unmasked SSIM; in a volume, slices weigh by their masked pixel count.
  A mask that selects nothing raises ValueError: there is nothing to score and a silent NaN would hide
  a bug in the mask.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from scipy.ndimage import uniform_filter1d

SSIM_WINDOW = 7  # scikit-image's default window side
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_BORDER = (SSIM_WINDOW - 1) // 2  # pixels whose window leaves the image; scikit-image crops them
# Slices are scored a chunk at a time: one 512 x 512 slice per chunk measured fastest here (its working
# set stays in cache; a whole 100-slice volume at once was 4x slower) and keeps memory to ~30 MB.
SSIM_PIXELS_PER_CHUNK = 512 * 512


# --- segmentation ---------------------------------------------------------------------------------


def iou_per_class(prediction: np.ndarray, truth: np.ndarray, classes: Iterable[int]) -> dict[int, float]:
    """Intersection over union of each class over the whole label map; NaN where the class is absent
    from both (see the module docstring)."""
    return {
        value: _ratio_or_nan(intersection, predicted + true - intersection)
        for value, (intersection, predicted, true) in _overlap_counts(prediction, truth, classes).items()
    }


def dice_per_class(prediction: np.ndarray, truth: np.ndarray, classes: Iterable[int]) -> dict[int, float]:
    """Dice coefficient 2|P & T| / (|P| + |T|) of each class; NaN where the class is absent from both."""
    return {
        value: _ratio_or_nan(2 * intersection, predicted + true)
        for value, (intersection, predicted, true) in _overlap_counts(prediction, truth, classes).items()
    }


def mean_over_classes(per_class: dict[int, float]) -> float:
    """Mean of per-class scores, skipping NaN (classes with nothing to measure); NaN if all are."""
    scores = np.array([score for score in per_class.values() if not math.isnan(score)], dtype=np.float64)
    return float(scores.mean()) if scores.size else math.nan


mean_iou = mean_over_classes  # the paper's name for the mean of `iou_per_class`
mean_dice = mean_over_classes


def _overlap_counts(
    prediction: np.ndarray, truth: np.ndarray, classes: Iterable[int]
) -> dict[int, tuple[int, int, int]]:
    """class -> (voxels in both, voxels predicted, voxels true)."""
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    _require_same_shape(prediction, truth)
    counts = {}
    for value in classes:
        predicted, true = prediction == value, truth == value
        counts[int(value)] = (
            int(np.count_nonzero(predicted & true)),
            int(np.count_nonzero(predicted)),
            int(np.count_nonzero(true)),
        )
    return counts


def _ratio_or_nan(numerator: int, denominator: int) -> float:
    # The denominator is zero only when the class is absent from prediction and truth alike.
    return numerator / denominator if denominator else math.nan


# --- intensity images -----------------------------------------------------------------------------


def mae(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error over all voxels, or over the masked ones."""
    difference = _masked_difference(prediction, truth, mask)
    return float(np.abs(difference).mean())


def psnr(
    prediction: np.ndarray, truth: np.ndarray, data_range: float = 1.0, mask: np.ndarray | None = None
) -> float:
    """Peak signal-to-noise ratio in dB over all voxels (or the masked ones); inf when they are equal."""
    difference = _masked_difference(prediction, truth, mask)
    mean_squared_error = float(np.mean(difference * difference))
    if mean_squared_error == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mean_squared_error)


def ssim(
    prediction: np.ndarray, truth: np.ndarray, data_range: float = 1.0, mask: np.ndarray | None = None
) -> float:
    """Structural similarity, scikit-image's defaults, per axial slice; see the module docstring for
    how slices are averaged and how `mask` restricts it."""
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    _require_same_shape(prediction, truth)
    if prediction.ndim not in (2, 3):
        raise ValueError(f"ssim takes a 2-D image (y, x) or a volume (z, y, x), got shape {prediction.shape}")
    if min(prediction.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(
            f"slices of shape {prediction.shape[-2:]} are smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} window"
        )
    checked_mask = None if mask is None else _checked_mask(mask, prediction.shape)
    prediction, truth = _as_slices(prediction), _as_slices(truth)
    interior_mask = None if checked_mask is None else _interior(_as_slices(checked_mask))

    slices_per_chunk = max(1, SSIM_PIXELS_PER_CHUNK // (prediction.shape[1] * prediction.shape[2]))
    total, count = 0.0, 0
    for start in range(0, prediction.shape[0], slices_per_chunk):
        chunk = slice(start, start + slices_per_chunk)
        similarity = _interior_ssim_map(prediction[chunk], truth[chunk], data_range)
        if interior_mask is None:
            total += float(similarity.sum(dtype=np.float64))
            count += similarity.size
        else:
            total += float(similarity[interior_mask[chunk]].sum(dtype=np.float64))
            count += int(np.count_nonzero(interior_mask[chunk]))
    if count == 0:
        raise ValueError("mask selects no pixels outside the SSIM border crop")
    return total / count


def _interior_ssim_map(prediction: np.ndarray, truth: np.ndarray, data_range: float) -> np.ndarray:
    """SSIM map of slices (z, y, x) over the interior that scikit-image averages, in float64.

    The same quantities as scikit-image (window means, sample covariance, the SSIM formula), equal to
    rounding, with less work: interior windows never reach the padding, so the window means can be
    'valid' ones; the two variances are only ever summed, so one window mean of p^2 + t^2 replaces two.
    """
    moments = np.empty((4, *prediction.shape), dtype=np.float64)
    moments[0], moments[1] = prediction, truth  # the float64 conversion happens here, one chunk at a time
    np.multiply(moments[0], moments[0], out=moments[2])
    np.multiply(moments[1], moments[1], out=moments[3])
    moments[2] += moments[3]
    np.multiply(moments[0], moments[1], out=moments[3])
    mean_p, mean_t, mean_squares, mean_product = _valid_window_means(moments)

    sample_covariance = SSIM_WINDOW**2 / (SSIM_WINDOW**2 - 1)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    # In place, so a chunk costs few passes over memory; each buffer is renamed once it holds a factor.
    luminance_numerator = mean_p * mean_t
    structure_numerator = mean_product
    structure_numerator -= luminance_numerator
    structure_numerator *= 2 * sample_covariance
    structure_numerator += c2  # 2 cov(p, t) + c2
    luminance_numerator *= 2
    luminance_numerator += c1  # 2 mean(p) mean(t) + c1
    mean_p *= mean_p
    mean_t *= mean_t
    structure_denominator = mean_squares
    structure_denominator -= mean_p
    structure_denominator -= mean_t
    structure_denominator *= sample_covariance
    structure_denominator += c2  # var(p) + var(t) + c2
    luminance_denominator = mean_p
    luminance_denominator += mean_t
    luminance_denominator += c1  # mean(p)^2 + mean(t)^2 + c1
    similarity = luminance_numerator
    similarity *= structure_numerator
    luminance_denominator *= structure_denominator
    similarity /= luminance_denominator
    return similarity


def _valid_window_means(images: np.ndarray) -> np.ndarray:
    """Means over every SSIM_WINDOW x SSIM_WINDOW window that fits inside the last two axes.

    Along y a running sum over whole rows: scipy's uniform_filter1d along a strided axis was about
    three times slower here (2 CPU cores, 512 x 512 slices).
    """
    along_x = uniform_filter1d(images, SSIM_WINDOW, axis=-1)[..., SSIM_BORDER:-SSIM_BORDER]
    rows = images.shape[-2] - SSIM_WINDOW + 1
    means = np.empty((*images.shape[:-2], rows, along_x.shape[-1]), dtype=np.float64)
    running = along_x[..., :SSIM_WINDOW, :].sum(axis=-2)
    means[..., 0, :] = running
    for row in range(1, rows):
        running += along_x[..., row + SSIM_WINDOW - 1, :]
        running -= along_x[..., row - 1, :]
        means[..., row, :] = running
    means /= SSIM_WINDOW
    return means


def _as_slices(image: np.ndarray) -> np.ndarray:
    # A 2-D image is a volume of one slice, so one code path serves both.
    return image[np.newaxis] if image.ndim == 2 else image


def _interior(mask: np.ndarray) -> np.ndarray:
    """The part of a mask that SSIM can score: scikit-image crops SSIM_BORDER pixels of each slice."""
    return mask[..., SSIM_BORDER:-SSIM_BORDER, SSIM_BORDER:-SSIM_BORDER]


def _masked_difference(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """prediction - truth in float64, flattened to the masked voxels when a mask is given."""
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    _require_same_shape(prediction, truth)
    if mask is None:
        return prediction.astype(np.float64) - truth.astype(np.float64)
    mask = _checked_mask(mask, prediction.shape)
    if not mask.any():
        raise ValueError("mask selects no voxels")
    return prediction[mask].astype(np.float64) - truth[mask].astype(np.float64)


def _checked_mask(mask: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image_shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image_shape}")
    return mask


def _require_same_shape(prediction: np.ndarray, truth: np.ndarray) -> None:
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from truth shape {truth.shape}")
