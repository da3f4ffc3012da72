"""How noisy each split's low-dose CT inputs are, and whether the noise can be read from an image
alone at the store's size.

    python -m benchmarks.dose_noise STORE [--dataset ldct-mayo] [--out F]

For each split: the noise the model is asked to remove, the standard deviation of input minus
target (quarter minus full dose, in the CT window's [0, 1] units), beside Immerkær's estimate of
an image's noise from that image alone (J. Immerkær, "Fast noise variance estimation", CVIU
1996: the mean absolute response to a kernel of second differences, which cancels planes and
lines), taken over the pixels whose 3 x 3 neighbourhood the window does not clip. Where the
estimate follows the true noise, a painting could be scaled to the query's own noise; where the
anatomy's own second differences swamp it (64 px slices), it cannot (docs/model-quality.md).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
from scipy.ndimage import convolve, minimum_filter

from benchmarks.common import write_result
from storage.store import ZarrStore

SECOND_DIFFERENCES = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)


def immerkaer_sigma(image: np.ndarray) -> float:
    """Immerkær's noise standard deviation of one 2-D image in [0, 1], over the pixels whose 3 x 3
    neighbourhood lies strictly inside (0, 1): a clipped pixel (air, bone past the window) holds
    no noise, and counting it would read every scan as cleaner than it is."""
    image = np.asarray(image, dtype=np.float64)
    inside = minimum_filter(((image > 0) & (image < 1)).astype(np.uint8), size=3) > 0
    if not inside.any():
        raise ValueError("no pixel lies inside the window with its neighbours: nothing to estimate from")
    response = convolve(image, SECOND_DIFFERENCES, mode="nearest")
    # the kernel's response to white noise of sigma s has mean absolute value 6 s sqrt(2 / pi)
    return float(np.sqrt(np.pi / 2) / 6 * np.abs(response[inside]).mean())


def split_noise(store: ZarrStore, dataset: str) -> dict[str, dict]:
    """Per split: slices, mean true noise (input - target), mean estimate on the input and on the target."""
    stored = store.dataset(dataset)
    table = {}
    for split in ("train", "test"):
        true, on_input, on_target = [], [], []
        for case in stored.cases(split):
            sample = stored.read_volume(case)
            for image, target in zip(sample.image.astype(np.float64), sample.target.astype(np.float64)):
                true.append(float(np.std(image - target)))
                on_input.append(immerkaer_sigma(image))
                on_target.append(immerkaer_sigma(target))
        if true:
            table[split] = {
                "slices": len(true),
                "true_noise": statistics.fmean(true),
                "estimate_input": statistics.fmean(on_input),
                "estimate_target": statistics.fmean(on_target),
            }
    return table


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", type=Path, help="a store holding the low-dose CT dataset")
    parser.add_argument("--dataset", default="ldct-mayo")
    parser.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    args = parser.parse_args(argv)
    table = split_noise(ZarrStore(args.store), args.dataset)
    print("| split | slices | true noise (input - target) | estimate on the input | estimate on the target |")
    print("| --- | --- | --- | --- | --- |")
    for split, row in table.items():
        print(f"| {split} | {row['slices']} | {row['true_noise']:.4f} | {row['estimate_input']:.4f} | {row['estimate_target']:.4f} |")
    result = {"benchmark": "dose_noise", "dataset": args.dataset, "splits": table}
    if args.out is not None:
        write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
