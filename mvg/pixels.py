"""Stored pixels -> float32 in [0, 1], the one conversion training, evaluation and serving share,
and how an inpainting input's void is shown to the model.

It lives alone, with numpy as its only import, because the logged model ships this package without
the storage layer: `mvg.inference` needs it as much as the episode sampler does.
"""

from __future__ import annotations

import numpy as np

HALF_TO_SINGLE = np.float32(2.0**112)  # 2^(127 - 15): float32 exponent bias minus float16's


def unit_float(pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Stored image pixels -> float32 in [0, 1], into `out` when given: float16 exactly as stored,
    8-bit PNG divided by 255, float32 copied.

    float16 is widened by moving its exponent and mantissa bits into place and rescaling by
    2^112, exact for every finite half (subnormals included; the store holds no inf or NaN), and
    about 5x faster than numpy's `astype`, which has no vectorised float16 cast (measured 78 vs
    396 us for a 448 x 448 crop): that cast was the largest single cost of an episode."""
    if out is None:
        out = np.empty(pixels.shape, dtype=np.float32)
    if pixels.dtype == np.float16:
        bits = out.view(np.uint32)
        np.left_shift(pixels.view(np.uint16), 13, out=bits, dtype=np.uint32)
        if pixels.size and bits.max() >= 1 << 28:  # negative halves: move the sign bit to float32's
            negative = (bits & (1 << 28)) != 0
            bits &= (1 << 28) - 1
            bits[negative] |= 1 << 31
        np.multiply(out, HALF_TO_SINGLE, out=out)
    elif pixels.dtype == np.uint8:
        np.multiply(pixels, np.float32(1 / 255), out=out)
    else:
        np.copyto(out, pixels, casting="same_kind")
    return out



def show_void(images, level: float):
    """Inpainting inputs (a torch tensor) as the model is shown them: every pixel at exactly 0 at
    `level` (`ModelConfig.void_level`; 0 leaves them as they are). Both the void and the air around
    the anatomy are 0 in the releases; the painting tells them apart by context, as before, but no
    longer confuses them with the zeros of another task's input."""
    return images if level == 0 else images.masked_fill(images == 0, level)
