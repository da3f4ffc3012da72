"""Preview montages show what was stored: one row per case, labels in colour."""

from __future__ import annotations

import numpy as np
from PIL import Image

from storage.ingest import IngestOptions, ingest
from storage.layouts import plan_dataset
from storage.preview import TILE, dataset_montage, preview_slice, write_previews
from storage.store import ZarrStore


def test_montage_rows_columns_and_colours(small_ct_dataset, tmp_path, dask_cluster):
    ingest(plan_dataset(small_ct_dataset), tmp_path / "store", dask_cluster, IngestOptions(size=64))
    dataset = ZarrStore(tmp_path / "store").dataset("smallct")
    montage = np.asarray(dataset_montage(dataset, cases=3))
    assert montage.shape[1] == 2 * TILE and montage.shape[0] > 3 * TILE
    image_tile, target_tile = montage[18 : 18 + TILE, :TILE], montage[18 : 18 + TILE, TILE:]
    grey = np.ptp(image_tile.astype(int), axis=-1).max()
    coloured = (np.ptp(target_tile.astype(int), axis=-1) > 30).mean()
    assert grey <= 1, "the image column is grey"
    assert coloured > 0.01, "labels are painted in colour on the target column"
    record = dataset.record(dataset.cases()[0])
    assert record.slice_classes[preview_slice(dataset, dataset.cases()[0])], "the preview shows a slice with foreground"
    written = write_previews(tmp_path / "store", tmp_path / "previews")
    assert [p.name for p in written] == ["smallct.png"] and Image.open(written[0]).size[0] == 2 * TILE
