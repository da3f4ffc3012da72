"""Segmentation post-processing: a class that is one connected structure keeps its largest part.

A painting can leave islands of a class away from the structure: a few voxels of right ventricle
in the liver, of left lung under the diaphragm. Where a dataset's spec declares a class one
connected structure (`DatasetSpec.connected_classes`), every component of that class but the
largest is set to background, as nnU-Net's post-processing does. Components are face-connected
(6 neighbours in a volume, 4 in a slice: scipy's default, and nnU-Net v1's): two parts that touch
only at an edge or a corner count apart, and the smaller goes. On the real benchmark that scored
better than 26 neighbours (ACDC 0.574 against 0.569 on the same paintings).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage


def keep_largest_components(labels: np.ndarray, classes: Iterable[int]) -> np.ndarray:
    """A copy of the label volume `labels` in which each of `classes` keeps only its largest
    face-connected component; the voxels of its other components become background (0). Classes
    not listed, and a class in one piece or absent, are left as they are."""
    kept = np.array(labels, copy=True)
    for value in classes:
        components, count = ndimage.label(labels == value)
        if count < 2:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0  # the voxels of other classes
        kept[(components != 0) & (components != sizes.argmax())] = 0
    return kept
