"""The noise estimator behind the low-dose CT note in docs/model-quality.md."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.dose_noise import immerkaer_sigma


@pytest.mark.parametrize("sigma", [0.01, 0.03, 0.06])
def test_the_estimate_reads_white_noise_on_a_smooth_image(sigma):
    rng = np.random.default_rng(0)
    rows, columns = np.mgrid[0:256, 0:256] / 256
    smooth = 0.3 + 0.2 * rows + 0.1 * columns  # a plane: second differences cancel it
    assert immerkaer_sigma(smooth + rng.normal(0, sigma, smooth.shape)) == pytest.approx(sigma, rel=0.05)


def test_clipped_pixels_hold_no_noise_and_are_left_out():
    rng = np.random.default_rng(1)
    noisy = 0.5 + rng.normal(0, 0.03, (256, 256))
    clipped = noisy.copy()
    clipped[:, :128] = 0.0  # air below the window
    assert immerkaer_sigma(clipped) == pytest.approx(immerkaer_sigma(noisy[:, 130:]), rel=0.05)
    with pytest.raises(ValueError, match="nothing to estimate"):
        immerkaer_sigma(np.zeros((16, 16)))


def test_an_antialiased_resize_averages_the_noise_that_sampling_keeps():
    """Eight times smaller: sampling keeps white noise near full strength, the antialiased resize
    leaves a fraction of it, and both keep a flat image flat."""
    from benchmarks.resize_noise import antialiased, best_smoothing_gain
    from storage.preprocess import resize_slices

    rng = np.random.default_rng(2)
    flat = np.full((1, 512, 512), 0.5, dtype=np.float32)
    noisy = flat + rng.normal(0, 0.05, flat.shape).astype(np.float32)
    sampled, averaged = resize_slices(noisy, 64), antialiased(noisy, 64)
    assert sampled.shape == averaged.shape == (1, 64, 64)
    assert np.allclose(antialiased(flat, 64), 0.5, atol=1e-6)
    assert np.std(sampled) > 0.02 and np.std(averaged) < np.std(sampled) / 4
    assert best_smoothing_gain(sampled[0], flat[0, :64, :64]) > 3, "white noise on a flat image: smoothing gains"
