"""Stored label maps hold exactly the values of the source: the integer type is chosen from the
values' range (uint8, uint16, uint32), and a value no stored type holds is refused, naming the case
and the value, never wrapped (70000 once became 4464 in uint16)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mvg.colouring import Colouring
from mvg.episodes import colour_into
from storage import preprocess
from storage.ingest import CatalogWriter, IngestOptions, ingest_case
from storage.layouts import plan_dataset
from storage.store import ZarrStore

SHAPE = (4, 16, 16)  # (z, y, x): .npy volumes are read with slices along the first axis


def labelled_manifest(folder: Path, labels: np.ndarray, classes: dict[int, str] | None = None) -> Path:
    """One case of a random image and `labels`, as .npy files and a JSON manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "image.npy", np.random.default_rng(0).random(SHAPE, dtype=np.float32))
    np.save(folder / "labels.npy", labels)
    manifest = {
        "name": "wide-labels",
        "cases": [{"case": "wide", "image": "image.npy", "target": "labels.npy", "split": "train"}],
        **({"classes": {str(value): name for value, name in classes.items()}} if classes else {}),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder / "manifest.json"


def labels_with(value: int, dtype=np.int64) -> np.ndarray:
    labels = np.zeros(SHAPE, dtype=dtype)
    labels[1, 4:8, 4:8] = 1
    labels[2, 8:12, 8:12] = value
    return labels


def ingest_one(manifest: Path, store: Path):
    plan = plan_dataset(manifest)
    writer = CatalogWriter(store, plan)
    result = ingest_case(plan.cases[0], plan.spec, writer.directory, plan.declared_labels, IngestOptions(size=SHAPE[1]))
    writer.add(result)
    writer.finish()
    return result


@pytest.mark.parametrize(("top", "dtype"), [(255, np.uint8), (256, np.uint16), (65535, np.uint16), (65536, np.uint32)])
def test_label_type_is_the_smallest_that_holds_the_values(top, dtype):
    stored = preprocess.integer_labels(labels_with(top))
    assert stored.dtype == dtype and int(stored.max()) == top


def test_label_values_past_uint32_and_negative_ones_are_refused_naming_the_value():
    with pytest.raises(ValueError, match="label value 4294967296 does not fit"):
        preprocess.integer_labels(labels_with(2**32))
    with pytest.raises(ValueError, match="label value 70000000000 does not fit"):
        preprocess.integer_labels(labels_with(7e10, np.float64))
    with pytest.raises(ValueError, match=r"negative values \(min -3\)"):
        preprocess.integer_labels(labels_with(-3, np.int16))


def test_undeclared_label_70000_is_stored_exactly_and_read_back(tmp_path):
    result = ingest_one(labelled_manifest(tmp_path / "data", labels_with(70000)), tmp_path / "store")
    assert result.status == "ingested", result.reason
    dataset = ZarrStore(tmp_path / "store").dataset("wide-labels")
    assert dataset.record("wide").classes == [1, 70000]
    assert dataset.record("wide").slice_classes == [[], [1], [70000], []]
    volume = dataset.read_volume("wide")
    assert volume.target.dtype == np.uint32 and np.array_equal(volume.target, labels_with(70000))
    one_slice = dataset.read_slice("wide", 2).target  # the single-slice reader of training
    assert one_slice.dtype == np.uint32 and int(one_slice.max()) == 70000
    # Training colours labels through a lookup table; uint32 values must colour, not exhaust memory.
    colouring = Colouring({1: 0.5, 70000: 1.0, 2**32 - 1: 0.25})
    coloured = colour_into(colouring, one_slice, np.empty(one_slice.shape, np.float32))
    assert set(np.unique(coloured).tolist()) == {0.0, 1.0}
    assert np.array_equal(colouring.colour(np.array([0, 1, 70000, 2**32 - 1], np.uint32)), [0, 0.5, 1.0, 0.25])


def test_declared_classes_refuse_70000_naming_it(tmp_path):
    manifest = labelled_manifest(tmp_path / "data", labels_with(70000), classes={1: "organ"})
    result = ingest_one(manifest, tmp_path / "store")
    assert result.status == "failed"
    assert "label values [70000] are not declared" in result.reason, result.reason
    assert "4464" not in result.reason


@pytest.mark.parametrize(("value", "dtype", "named"), [(2**32, np.int64, "label value 4294967296"), (-3, np.int16, "min -3")])
def test_label_values_no_stored_type_holds_fail_the_case_naming_case_and_value(tmp_path, value, dtype, named):
    result = ingest_one(labelled_manifest(tmp_path / "data", labels_with(value, dtype)), tmp_path / "store")
    assert result.status == "failed"
    assert "labels.npy" in result.reason and "case wide" in result.reason and named in result.reason, result.reason
    assert ZarrStore(tmp_path / "store").dataset("wide-labels").cases() == []
