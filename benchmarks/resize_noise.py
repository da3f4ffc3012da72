"""What the store's resize leaves of the low-dose CT task, per patient: the quarter dose's PSNR
against the full dose at the model's size, by the store's resize (linear sampling, no
antialiasing) and by an antialiased one, each beside the gain of the best Gaussian smoothing of
the quarter dose (a denoiser with one parameter, fitted on the very slice it scores).

    python -m benchmarks.resize_noise DATA/ldct-mayo [--size 64] [--out F]

Shrinking a 512 px slice eight times by sampling keeps the dose noise as pixel-scale white noise,
so the task stays a denoising one; an antialiased resize averages most of it away before the
model sees it, which leaves a task whose baseline is far higher and whose headroom is smaller
(docs/model-quality.md).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
from scipy import ndimage

from benchmarks.common import write_result
from storage.preprocess import ct_window, resize_slices
from storage.readers import read_scan
from storage.recipes import RECIPES

SMOOTHING_SIGMAS = (0.3, 0.5, 0.7, 1.0)  # pixels at the model's size


def antialiased(volume: np.ndarray, size: int) -> np.ndarray:
    """`resize_slices` after a Gaussian low-pass of sigma (factor - 1) / 2 in each slice, the
    prefilter scikit-image's `resize(anti_aliasing=True)` applies."""
    factor = volume.shape[-1] / size
    sigma = max(0.0, (factor - 1) / 2)
    smoothed = ndimage.gaussian_filter(volume.astype(np.float32), sigma=(0, sigma, sigma), mode="nearest")
    return resize_slices(smoothed, size)


RESIZES = {"store (linear sampling)": resize_slices, "antialiased": antialiased}


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR of an image in [0, 1] against its reference (peak 1)."""
    return float(-10 * np.log10(np.mean((image.astype(np.float64) - reference) ** 2)))


def best_smoothing_gain(image: np.ndarray, reference: np.ndarray) -> float:
    """dB the best of a few Gaussian smoothings of `image` gains over `image` itself."""
    return max(psnr(ndimage.gaussian_filter(image, sigma), reference) for sigma in SMOOTHING_SIGMAS) - psnr(image, reference)


def patient_table(folder: Path, size: int) -> dict[str, dict]:
    """Per patient: its split, slices, and per resize the mean quarter-dose PSNR and smoothing gain."""
    window = ct_window()
    rows: dict[str, dict] = {}
    for case in RECIPES["ldct-mayo"].plan(folder).cases:
        patient = case.case.split("_")[0]
        quarter, full = (window.apply(read_scan(channel.path).array) for channel in case.channels)
        row = rows.setdefault(patient, {"split": case.split, "slices": 0, "by_resize": {name: {"psnr": [], "gain": []} for name in RESIZES}})
        row["slices"] += len(quarter)
        for name, resize in RESIZES.items():
            for image, reference in zip(resize(quarter, size), resize(full, size)):
                row["by_resize"][name]["psnr"].append(psnr(image, reference))
                row["by_resize"][name]["gain"].append(best_smoothing_gain(image, reference))
    for row in rows.values():
        row["by_resize"] = {name: {key: statistics.fmean(values) for key, values in figures.items()} for name, figures in row["by_resize"].items()}
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the Mayo low-dose CT release (<patient>/quarter, <patient>/full)")
    parser.add_argument("--size", type=int, default=64, help="the model's image size")
    parser.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    args = parser.parse_args(argv)
    table = patient_table(args.folder, args.size)
    names = list(RESIZES)
    print("| patient | split | slices | " + " | ".join(f"{name}: quarter dose dB, smoothing gain" for name in names) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in names) + " |")
    for patient, row in table.items():
        cells = [f"{row['by_resize'][name]['psnr']:.2f}, {row['by_resize'][name]['gain']:+.2f}" for name in names]
        print(f"| {patient} | {row['split']} | {row['slices']} | " + " | ".join(cells) + " |")
    result = {"benchmark": "resize_noise", "folder": args.folder.name, "size": args.size, "patients": table}
    if args.out is not None:
        write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
