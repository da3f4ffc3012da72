"""Preprocessing: named, pure steps from a read scan to the arrays the store keeps.

Each step is a plain function of arrays, so the same step serves ingest, `mvg predict` and tests.
The paper's choices: CT windowed to [-100, 200] HU -> [0, 1]; MR, ultrasound and X-ray clipped to
their 0.5-99.5 percentiles -> [0, 1]; every slice resized to the store size (by default
`storage.ingest.DEFAULT_SIZE`), bilinear for images, nearest for labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

CT_WINDOW = (-100.0, 200.0)
PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class IntensityScale:
    """The linear map `clip((x - low) / (high - low), 0, 1)` applied to an image; kept in the store
    so that an output can be mapped back to the scanner's units."""

    low: float
    high: float

    def apply(self, image: np.ndarray, dtype=np.float32) -> np.ndarray:
        """Scaled copy of a (z, y, x) image in `dtype`, computed a few slices at a time: the float32
        temporaries stay in cache, which makes this several times faster on whole volumes."""
        out = np.empty(image.shape, dtype=dtype)
        span = self.high - self.low
        if span <= 0:  # a constant image carries no contrast: map it to 0 rather than divide by 0
            out[...] = 0
            return out
        low, inverse = np.float32(self.low), np.float32(1.0 / span)
        step = max(1, (1 << 18) // max(1, image[0].size)) if image.ndim == 3 else len(image)
        for start in range(0, len(image), step):
            block = image[start : start + step].astype(np.float32)
            block -= low
            block *= inverse
            np.clip(block, 0.0, 1.0, out=out[start : start + step], casting="same_kind")
        return out


def ct_window(window: tuple[float, float] = CT_WINDOW) -> IntensityScale:
    return IntensityScale(*window)


def percentile_scale(image: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> IntensityScale:
    # Percentiles of a strided subsample: the same clip points to within noise, at a fraction of the cost.
    sample = image.ravel()[:: max(1, image.size // 2_000_000)]
    low, high = np.percentile(sample, percentiles)
    return IntensityScale(float(low), float(high))


def intensity_scale(image: np.ndarray, normalisation: str) -> IntensityScale:
    if normalisation == "ct":
        return ct_window()
    if normalisation == "percentile":
        return percentile_scale(image)
    raise ValueError(f"unknown normalisation {normalisation!r}")


def resize_slices(volume: np.ndarray, size: int, labels: bool = False) -> np.ndarray:
    """Resize every (y, x) slice of a (z, y, x) volume to (size, size); z is never resampled."""
    _, height, width = volume.shape
    if (height, width) == (size, size):
        return volume
    zoom = (1.0, size / height, size / width)
    if labels:
        return ndimage.zoom(volume, zoom, order=0, mode="nearest", grid_mode=True)
    return ndimage.zoom(volume.astype(np.float32, copy=False), zoom, order=1, mode="nearest", grid_mode=True)


LABEL_DTYPES = (np.uint8, np.uint16, np.uint32)


def label_dtype(top: int) -> np.dtype:
    """The smallest stored label type that holds values up to `top`. Past uint32 is refused rather
    than cast: a cast wraps silently (70000 became 4464 in uint16), which corrupts the labels."""
    for dtype in LABEL_DTYPES:
        if top <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"label value {top} does not fit a stored label map (at most {np.iinfo(np.uint32).max})")


def integer_labels(labels: np.ndarray) -> np.ndarray:
    """Label maps as the smallest unsigned integer type that holds them; refuses fractional and
    negative values and values past uint32, naming the value."""
    if not np.issubdtype(labels.dtype, np.integer):
        rounded = np.rint(labels)
        if not np.array_equal(rounded, labels):
            raise ValueError("label map has non-integer values")
        labels = rounded
    if not labels.size:
        return labels.astype(np.uint8)
    lowest, top = labels.min(), labels.max()
    if lowest < 0:
        raise ValueError(f"label map has negative values (min {_exact(lowest)})")
    return labels.astype(label_dtype(_exact(top)))


def _exact(value) -> int | float:
    """A label value as Python prints it exactly: an int when it is one, so 70000.0 reads 70000."""
    return int(value) if float(value).is_integer() else float(value)


def map_labels(labels: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """A release's label values -> the stored classes (MS-CMRSeg's 200/500/600 -> 1/2/3); 0 stays 0
    and any other value is refused, naming it, rather than silently dropped."""
    present = np.unique(labels)
    unknown = sorted(int(v) for v in present if v != 0 and int(v) not in mapping)
    if unknown:
        raise ValueError(f"label values {unknown} are not in the spec's label map {dict(sorted(mapping.items()))}")
    table = np.zeros(int(present.max(initial=0)) + 1, dtype=label_dtype(max(mapping.values(), default=0)))
    for value, target in mapping.items():
        if value < len(table):
            table[value] = target
    return table[labels]


def merge_binary_masks(masks: list[tuple[int, np.ndarray]], shape: tuple[int, ...]) -> np.ndarray:
    """Binary per-class masks -> one label map; where masks overlap the later class wins."""
    merged = np.zeros(shape, dtype=label_dtype(max((v for v, _ in masks), default=0)))
    for value, mask in masks:
        merged[mask != 0] = value
    return merged


def slice_classes(labels: np.ndarray) -> list[list[int]]:
    """Foreground classes present in each slice: the sampler uses them to prefer informative slices.
    `find_objects` scans a slice once in C without widening uint8 to intp, unlike bincount; it
    lists every value up to the largest, so uint32 labels (up to 4e9) are listed by np.unique."""
    if labels.dtype.itemsize > 2:
        return [[int(value) for value in np.unique(plane) if value != 0] for plane in labels]
    return [
        [value for value, box in enumerate(ndimage.find_objects(plane), start=1) if box is not None]
        for plane in labels
    ]
