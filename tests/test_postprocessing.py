"""`mvg.postprocessing.keep_largest_components`, and the specs that declare connected classes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mvg.postprocessing import keep_largest_components
from storage.specs import DatasetSpec, get_spec


def volume() -> np.ndarray:
    labels = np.zeros((4, 12, 12), dtype=np.int64)
    labels[1:3, 2:6, 2:6] = 1  # class 1: a block of 32 voxels ...
    labels[0, 10, 10] = 1  # ... and an island of one
    labels[1:3, 7:10, 7:10] = 2  # class 2: one block of 18 ...
    labels[3, 0, 11] = 2  # ... and an island of one
    return labels


def test_only_the_largest_component_of_a_listed_class_is_kept():
    labels = volume()
    kept = keep_largest_components(labels, [1])
    assert kept[0, 10, 10] == 0
    assert (kept[1:3, 2:6, 2:6] == 1).all()
    np.testing.assert_array_equal(kept == 2, labels == 2)  # class 2 is not listed
    assert labels[0, 10, 10] == 1  # the input is not changed


def test_components_touching_only_at_an_edge_or_a_corner_are_apart():
    labels = np.zeros((3, 6, 6), dtype=np.int64)
    labels[1, 1:3, 1:3] = 5  # four voxels
    labels[1, 3, 3] = 5  # touches the block at a corner, in the slice
    labels[2, 3, 4] = 5  # touches that voxel at an edge, across slices
    kept = keep_largest_components(labels, [5])
    assert kept.sum() == 4 * 5 and (kept[1, 1:3, 1:3] == 5).all()


def test_absent_and_whole_classes_are_left_as_they_are():
    labels = volume()
    kept = keep_largest_components(labels, [3, 7])
    np.testing.assert_array_equal(kept, labels)
    whole = keep_largest_components(np.where(labels == 1, 0, labels), [2, 9])
    assert (whole == 2).sum() == 18


def test_a_spec_declares_connected_classes_among_its_classes_and_keeps_them_through_json():
    with pytest.raises(ValueError, match=r"connected_classes \[4\] are not among its classes"):
        DatasetSpec("x", "x", "Chest", "MRI", "segmentation", "nnunet", {1: "a"}, connected_classes=(1, 4))
    spec = DatasetSpec("x", "x", "Chest", "MRI", "segmentation", "nnunet", {1: "a", 2: "b"}, connected_classes=(2,))
    assert DatasetSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert get_spec("acdc").connected_classes == (1, 2, 3)
    assert get_spec("brats-edema").connected_classes == ()  # edema comes in several parts
