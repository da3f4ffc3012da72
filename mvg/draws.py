"""One weighted draw, shared by everything the episode sampler chooses by share (task, dataset,
the source of a cut inpainting episode)."""

from __future__ import annotations

import numpy as np


def weighted_index(cumulative: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn with the probabilities whose running sum is `cumulative` (ending at 1). One
    uniform draw from `rng`; the clip keeps a sum that rounds below 1 from running past the end."""
    return min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(cumulative) - 1)
