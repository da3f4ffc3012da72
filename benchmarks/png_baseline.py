"""The storage format's yardstick: a Painter-style export of one 8-bit PNG per slice, and the
episodes `EpisodeSampler` draws, decoded from that export instead of the Zarr store.

Benchmarks only (benchmarks/model.py, benchmarks/store.py): `PngEpisodeSource` draws the same
episodes (same cases, slices, crops and colours) as an `EpisodeSampler` with the same arguments,
so the figure beside it isolates the cost of the storage format.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mvg.config import DataConfig, ObjectiveConfig
from mvg.episodes import EpisodeSampler
from storage.store import ZarrStore


def png_path(root: str | Path, dataset: str, case: str, index: int, role: str) -> Path:
    return Path(root) / dataset / case / f"{index:04d}_{role}.png"


def export_pngs(store_root: str | Path, out_dir: str | Path, datasets: Sequence[str] | None = None) -> Path:
    """Write a Painter-style export of a store: one 8-bit PNG per slice and role, at
    `out_dir/<dataset>/<case>/NNNN_image.png` and `NNNN_target.png` (labels as values; labels
    above 255 as 16-bit PNG). Images are quantised to 8 bits, as such exports do."""
    out = Path(out_dir)
    store = ZarrStore(store_root)
    for name in datasets or store.datasets():
        dataset = store.dataset(name)
        for case in dataset.cases():
            volume = dataset.read_volume(case)
            folder = out / name / case
            folder.mkdir(parents=True, exist_ok=True)
            for role, stack in (("image", volume.image), ("target", volume.target)):
                if stack is None:
                    continue
                if np.issubdtype(stack.dtype, np.floating):
                    stack = np.round(np.clip(stack.astype(np.float32), 0, 1) * 255).astype(np.uint8)
                elif stack.max(initial=0) > np.iinfo(np.uint16).max:  # a cast would wrap the label
                    raise ValueError(f"{name}/{case}: label value {stack.max()} does not fit a 16-bit PNG")
                elif stack.max(initial=0) > 255:
                    stack = stack.astype(np.uint16)
                else:
                    stack = stack.astype(np.uint8)
                for index, plane in enumerate(stack):
                    Image.fromarray(plane).save(png_path(out, name, case, index, role))
    return out


def read_png(root: str | Path, dataset: str, case: str, index: int, role: str) -> np.ndarray:
    """One slice of the export, decoded."""
    with Image.open(png_path(root, dataset, case, index, role)) as image:
        return np.asarray(image)


class PngEpisodeSource(EpisodeSampler):
    """The episodes `EpisodeSampler` with the same arguments draws, pixels decoded from
    `export_pngs` output instead of Zarr. The catalog still comes from the store; only the pixel
    source differs."""

    def __init__(self, png_root: str | Path, store_roots, data: DataConfig, objective: ObjectiveConfig, **kwargs):
        super().__init__(store_roots, data, objective, **kwargs)
        self.png_root = Path(png_root)

    def _read(self, dataset, case: str, role: str, index: int) -> np.ndarray:
        return read_png(self.png_root, dataset.name, case, index, role)
