"""Metrics: IoU and Dice by counting by hand; MAE, PSNR and SSIM against scikit-image as the reference."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.util import crop

from mvg.metrics import (
    dice_per_class,
    iou_per_class,
    mae,
    mean_dice,
    mean_iou,
    mean_over_classes,
    psnr,
    ssim,
)

BORDER = 3  # scikit-image crops (7 - 1) // 2 pixels before averaging its SSIM map


def reference_ssim(prediction: np.ndarray, truth: np.ndarray, data_range: float = 1.0) -> float:
    """scikit-image on each slice in float64 (our precision), then the plain mean over slices."""
    prediction, truth = np.atleast_3d(prediction.T).T.astype(np.float64), np.atleast_3d(truth.T).T.astype(np.float64)
    return float(np.mean([structural_similarity(p, t, data_range=data_range) for p, t in zip(prediction, truth)]))


def reference_ssim_map(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    _, similarity = structural_similarity(
        prediction.astype(np.float64), truth.astype(np.float64), data_range=1.0, full=True
    )
    return similarity


def noisy_copy(truth: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(truth + rng.normal(0, sigma, truth.shape), 0, 1).astype(truth.dtype)


def phantom(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A disc, a bright bar and a gradient over a flat background: edges, flat areas and smooth ramps."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]] / np.array(shape).reshape(2, 1, 1)
    centre = rng.uniform(0.35, 0.65, 2)
    image = 0.2 + 0.3 * x
    image[(y - centre[0]) ** 2 + (x - centre[1]) ** 2 < 0.06] = 0.7
    image[int(shape[0] * 0.1) : int(shape[0] * 0.25), int(shape[1] * 0.2) : int(shape[1] * 0.8)] = 1.0
    image[: shape[0] // 8] = 0.0  # an exactly flat strip: variances there are zero up to rounding
    return image


# --- SSIM -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7, 7), (9, 13), (64, 80), (128, 96)])
def test_ssim_of_an_image_equals_scikit_image_on_random_inputs(shape):
    truth = np.random.default_rng(1).random(shape)
    prediction = noisy_copy(truth, 0.2, seed=2)
    expected = structural_similarity(prediction, truth, data_range=1.0)
    assert ssim(prediction, truth) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("degrade", ["blur", "noise", "shift", "flat"])
def test_ssim_of_an_image_equals_scikit_image_on_structured_inputs(degrade):
    truth = phantom((96, 112))
    prediction = {
        "blur": gaussian_filter(truth, 1.5),
        "noise": noisy_copy(truth, 0.05, seed=3),
        "shift": np.roll(truth, 4, axis=1),
        "flat": np.full_like(truth, 0.5),
    }[degrade]
    expected = structural_similarity(prediction, truth, data_range=1.0)
    assert ssim(prediction, truth) == pytest.approx(expected, abs=1e-10)
    assert ssim(prediction, truth) < 0.99, "the degradation must be visible for the comparison to mean anything"


def test_ssim_of_identical_images_is_one_and_of_constants_follows_the_luminance_term():
    flat = np.full((16, 16), 0.5)
    assert ssim(flat, flat) == pytest.approx(1.0, abs=1e-12)
    other = np.full((16, 16), 0.25)
    # Flat windows have no structure term left: SSIM = (2 a b + c1) / (a^2 + b^2 + c1).
    c1 = 0.01**2
    assert ssim(other, flat) == pytest.approx((2 * 0.25 * 0.5 + c1) / (0.25**2 + 0.5**2 + c1), abs=1e-12)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_ssim_computes_in_float64_whatever_the_input_dtype(dtype):
    truth = phantom((64, 64)).astype(dtype)
    prediction = noisy_copy(truth, 0.05, seed=4)
    assert ssim(prediction, truth) == pytest.approx(reference_ssim(prediction, truth), abs=1e-10)


def test_ssim_honours_data_range():
    truth = 2.0 * phantom((48, 48))
    prediction = np.clip(truth + np.random.default_rng(5).normal(0, 0.1, truth.shape), 0, 2)
    expected = structural_similarity(prediction, truth, data_range=2.0)
    assert ssim(prediction, truth, data_range=2.0) == pytest.approx(expected, abs=1e-10)
    assert ssim(prediction, truth, data_range=1.0) != pytest.approx(expected, abs=1e-4)


def test_ssim_of_a_volume_is_the_mean_of_scikit_image_per_axial_slice():
    # Slices differ in content and in noise, so a window that leaked across z would show.
    truth = np.stack([phantom((40, 56), seed=index) for index in range(5)])
    prediction = np.stack([noisy_copy(image, 0.02 * (index + 1), index) for index, image in enumerate(truth)])
    assert ssim(prediction, truth) == pytest.approx(reference_ssim(prediction, truth), abs=1e-10)


def test_ssim_of_a_random_float32_volume_matches_per_slice_scikit_image():
    rng = np.random.default_rng(6)
    truth = rng.random((11, 33, 47), dtype=np.float32)
    prediction = noisy_copy(truth, 0.1, seed=7)
    per_slice_as_given = np.mean([structural_similarity(p, t, data_range=1.0) for p, t in zip(prediction, truth)])
    assert ssim(prediction, truth) == pytest.approx(reference_ssim(prediction, truth), abs=1e-10)
    # scikit-image works in float32 on float32 input; the two agree to float32 rounding.
    assert ssim(prediction, truth) == pytest.approx(per_slice_as_given, abs=1e-6)


def test_masked_ssim_averages_scikit_image_map_over_the_cropped_mask():
    truth = phantom((64, 72))
    prediction = gaussian_filter(truth, 1.0)
    mask = np.zeros(truth.shape, dtype=bool)
    mask[20:50, 0:40] = True  # reaches the left border: those pixels are cropped, as in the unmasked SSIM
    similarity = reference_ssim_map(prediction, truth)
    expected = crop(similarity, BORDER)[crop(mask, BORDER)].mean()
    assert ssim(prediction, truth, mask=mask) == pytest.approx(expected, abs=1e-10)
    assert ssim(prediction, truth, mask=mask) != pytest.approx(ssim(prediction, truth), abs=1e-3)


def test_masked_ssim_of_a_volume_pools_masked_pixels_over_slices():
    truth = np.stack([phantom((32, 40), seed=index) for index in range(3)])
    prediction = np.stack([gaussian_filter(image, 0.5 + index) for index, image in enumerate(truth)])
    mask = np.zeros(truth.shape, dtype=bool)
    mask[0, 10:20, 10:30] = True  # 200 pixels
    mask[2, 5:10, 8:12] = True  # 20 pixels: this slice counts a tenth as much; slice 1 not at all
    pooled = np.concatenate(
        [crop(reference_ssim_map(p, t), BORDER)[crop(m, BORDER)] for p, t, m in zip(prediction, truth, mask)]
    )
    assert ssim(prediction, truth, mask=mask) == pytest.approx(pooled.mean(), abs=1e-10)


def test_an_all_true_mask_gives_the_unmasked_ssim():
    truth = np.stack([phantom((30, 30), seed=index) for index in range(2)])
    prediction = noisy_copy(truth, 0.05, seed=8)
    everywhere = np.ones(truth.shape, dtype=bool)
    assert ssim(prediction, truth, mask=everywhere) == pytest.approx(ssim(prediction, truth), abs=1e-12)


def test_ssim_refuses_a_mask_that_lies_only_in_the_cropped_border():
    image = phantom((20, 20))
    mask = np.zeros(image.shape, dtype=bool)
    mask[:BORDER, :] = True
    with pytest.raises(ValueError, match="border"):
        ssim(image, image, mask=mask)


@pytest.mark.parametrize("shape", [(6, 20), (20, 6), (3, 6, 20), (20,), (2, 2, 20, 20)])
def test_ssim_refuses_slices_smaller_than_the_window_or_other_dimensions(shape):
    with pytest.raises(ValueError):
        ssim(np.zeros(shape), np.zeros(shape))


# --- PSNR and MAE -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(50, 60), (4, 30, 20)])
def test_psnr_equals_scikit_image_over_all_voxels(shape):
    truth = np.random.default_rng(9).random(shape, dtype=np.float32)
    prediction = noisy_copy(truth, 0.05, seed=10)
    as_given = peak_signal_noise_ratio(truth, prediction, data_range=1.0)  # float32 arithmetic
    in_float64 = peak_signal_noise_ratio(truth.astype(np.float64), prediction.astype(np.float64), data_range=1.0)
    assert psnr(prediction, truth) == pytest.approx(in_float64, abs=1e-10)
    assert psnr(prediction, truth) == pytest.approx(as_given, abs=1e-4)


def test_psnr_honours_data_range():
    truth = 255 * phantom((32, 32))
    prediction = truth + np.random.default_rng(11).normal(0, 5, truth.shape)
    expected = peak_signal_noise_ratio(truth, prediction, data_range=255)
    assert psnr(prediction, truth, data_range=255) == pytest.approx(expected, abs=1e-10)


@pytest.mark.filterwarnings("error")
def test_psnr_of_identical_images_is_infinite_without_warnings():
    image = phantom((16, 16))
    assert psnr(image, image.copy()) == math.inf


def test_masked_psnr_and_mae_use_the_masked_voxels_only():
    truth = np.stack([phantom((24, 24), seed=index) for index in range(3)])
    prediction = truth.copy()
    mask = np.zeros(truth.shape, dtype=bool)
    mask[1, 5:15, 5:15] = True
    prediction[mask] = np.clip(truth[mask] + 0.1, 0, 1)  # errors only inside the mask
    prediction[0] = 1 - truth[0]  # large errors outside it, which must not count
    expected_psnr = peak_signal_noise_ratio(truth[mask], prediction[mask], data_range=1.0)
    assert psnr(prediction, truth, mask=mask) == pytest.approx(expected_psnr, abs=1e-10)
    expected_mae = np.abs(prediction[mask] - truth[mask]).mean()
    assert mae(prediction, truth, mask=mask) == pytest.approx(expected_mae, abs=1e-12)
    assert mae(prediction, truth, mask=mask) < mae(prediction, truth)


def test_mae_is_the_mean_absolute_error():
    truth = np.array([[0.0, 0.5], [1.0, 0.25]])
    prediction = np.array([[0.1, 0.5], [0.5, 0.75]])
    assert mae(prediction, truth) == pytest.approx((0.1 + 0.0 + 0.5 + 0.5) / 4, abs=1e-15)


def test_mae_and_psnr_compute_in_float64_for_float16_inputs():
    rng = np.random.default_rng(12)
    truth = rng.random((64, 64)).astype(np.float16)
    prediction = rng.random((64, 64)).astype(np.float16)
    as_float64 = prediction.astype(np.float64) - truth.astype(np.float64)
    # float16 arithmetic would be off by about 1e-4 here.
    assert mae(prediction, truth) == pytest.approx(np.abs(as_float64).mean(), abs=1e-12)
    assert psnr(prediction, truth) == pytest.approx(10 * np.log10(1 / np.mean(as_float64**2)), abs=1e-10)


@pytest.mark.parametrize("metric", [mae, psnr])
def test_an_empty_mask_is_refused(metric):
    image = phantom((8, 8))
    with pytest.raises(ValueError, match="no voxels"):
        metric(image, image, mask=np.zeros(image.shape, bool))


# --- IoU and Dice -----------------------------------------------------------------------------------


def test_iou_and_dice_count_a_hand_made_label_map():
    truth = np.array(
        [
            [0, 1, 1, 0],
            [0, 1, 1, 0],
            [2, 2, 0, 0],
            [2, 2, 0, 0],
        ]
    )
    prediction = np.array(
        [
            [0, 1, 1, 1],  # class 1: 4 true, 5 predicted, 3 in both
            [0, 1, 0, 1],
            [2, 2, 2, 0],  # class 2: 4 true, 4 predicted, 3 in both (a stray 2 replaces a missed one)
            [0, 2, 0, 0],
        ]
    )
    assert iou_per_class(prediction, truth, [1, 2]) == pytest.approx({1: 3 / 6, 2: 3 / 5})
    assert dice_per_class(prediction, truth, [1, 2]) == pytest.approx({1: 2 * 3 / 9, 2: 2 * 3 / 8})
    # Background is a class like any other when asked for: 8 true, 7 predicted, 5 in both.
    assert iou_per_class(prediction, truth, [0])[0] == pytest.approx(5 / 10)


def test_iou_counts_over_the_whole_volume_not_per_slice():
    truth = np.zeros((2, 3, 3), dtype=np.uint8)
    prediction = np.zeros_like(truth)
    truth[0, :, :2] = 1  # 6 voxels in slice 0
    prediction[0, :, :2] = 1  # slice 0 perfect
    prediction[1, 0, 0] = 1  # one false positive in slice 1, where class 1 is absent
    # Per volume: 6 / 7. A per-slice mean would give (1 + 0) / 2.
    assert iou_per_class(prediction, truth, [1]) == pytest.approx({1: 6 / 7})
    assert dice_per_class(prediction, truth, [1]) == pytest.approx({1: 12 / 13})


def test_class_conventions_absent_missed_and_spurious():
    truth = np.array([[1, 1, 0], [0, 3, 0]])
    prediction = np.array([[1, 1, 2], [0, 0, 0]])
    iou = iou_per_class(prediction, truth, [1, 2, 3, 4])
    dice = dice_per_class(prediction, truth, [1, 2, 3, 4])
    for scores in (iou, dice):
        assert scores[1] == 1.0
        assert scores[2] == 0.0, "predicted but absent from the truth"
        assert scores[3] == 0.0, "present in the truth but missed"
        assert math.isnan(scores[4]), "absent from both: nothing to measure"
    assert mean_iou(iou) == pytest.approx(1 / 3)
    assert mean_dice(dice) == pytest.approx(1 / 3)


def test_mean_over_classes_skips_nan_and_is_nan_when_nothing_is_measured():
    assert mean_over_classes({1: 0.5, 2: math.nan, 3: 1.0}) == pytest.approx(0.75)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" warning on the way to NaN
        assert math.isnan(mean_over_classes({1: math.nan, 2: math.nan}))
        assert math.isnan(mean_over_classes({}))


def test_perfect_segmentation_scores_one_for_every_present_class():
    labels = np.random.default_rng(13).integers(0, 4, (3, 16, 16))
    assert iou_per_class(labels, labels.copy(), [1, 2, 3]) == {1: 1.0, 2: 1.0, 3: 1.0}
    assert dice_per_class(labels, labels.copy(), [1, 2, 3]) == {1: 1.0, 2: 1.0, 3: 1.0}


# --- shapes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metric",
    [
        lambda p, t: iou_per_class(p, t, [1]),
        lambda p, t: dice_per_class(p, t, [1]),
        mae,
        psnr,
        ssim,
    ],
    ids=["iou", "dice", "mae", "psnr", "ssim"],
)
def test_a_shape_mismatch_names_both_shapes(metric):
    with pytest.raises(ValueError, match=r"\(2, 16, 16\).*\(2, 16, 17\)"):
        metric(np.zeros((2, 16, 16)), np.zeros((2, 16, 17)))


@pytest.mark.parametrize("metric", [mae, psnr, ssim])
def test_a_mask_of_another_shape_is_refused(metric):
    image = np.zeros((2, 16, 16))
    with pytest.raises(ValueError, match=r"mask shape \(16, 16\)"):
        metric(image, image, mask=np.ones((16, 16), bool))
