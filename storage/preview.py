"""Preview montages of stored datasets: look at what was ingested before training on it.

One row per case: the image, then the target (label colours over the image, or the target image),
then the mask for inpainting. The slice shown is the middle one holding foreground, if any.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from storage.store import Sample, StoredDataset

# Distinct, colour-blind-friendly label colours (Okabe-Ito), cycled for many classes.
LABEL_COLOURS = np.array(
    [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0), (204, 121, 167)],
    dtype=np.float32,
)
TILE = 192


def _grey(values: np.ndarray) -> np.ndarray:
    return np.repeat((np.clip(values.astype(np.float32), 0, 1) * 255)[..., None], 3, axis=-1)


def _overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    rgb = _grey(image)
    foreground = labels > 0
    colours = LABEL_COLOURS[(labels[foreground].astype(np.int64) - 1) % len(LABEL_COLOURS)]
    rgb[foreground] = 0.45 * rgb[foreground] + 0.55 * colours
    return rgb


def _tile(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(rgb.astype(np.uint8)).resize((TILE, TILE), Image.Resampling.BILINEAR)


def preview_slice(dataset: StoredDataset, case: str) -> int:
    record = dataset.record(case)
    foreground = record.foreground_slices
    return foreground[len(foreground) // 2] if foreground else record.slices // 2


def dataset_montage(dataset: StoredDataset, cases: int = 4) -> Image.Image:
    names = dataset.cases()[:cases]
    if not names:
        raise ValueError(f"dataset {dataset.name} has no cases to preview")
    rows = []
    for case in names:
        sample = dataset.read_slice(case, preview_slice(dataset, case))
        if dataset.geometry(case).spacing_known:
            # canonical RAS rows run posterior -> anterior: show them as radiologists do, anterior up
            # and the patient's right on the viewer's left
            sample = Sample(*(None if a is None else a[::-1, ::-1] for a in (sample.image, sample.target, sample.mask)))
        tiles = [_grey(sample.image)]
        if sample.target is not None:
            integer = np.issubdtype(sample.target.dtype, np.integer)
            tiles.append(_overlay(sample.image, sample.target) if integer else _grey(sample.target))
        if sample.mask is not None:
            tiles.append(_overlay(sample.image, sample.mask))
        rows.append((case, [_tile(t) for t in tiles]))
    columns = max(len(tiles) for _, tiles in rows)
    header = 18
    canvas = Image.new("RGB", (columns * TILE, len(rows) * (TILE + header)), "black")
    draw = ImageDraw.Draw(canvas)
    for row, (case, tiles) in enumerate(rows):
        top = row * (TILE + header)
        draw.text((4, top + 3), f"{dataset.name} / {case}", fill="white")
        for column, tile in enumerate(tiles):
            canvas.paste(tile, (column * TILE, top + header))
    return canvas


def write_previews(store_root: str | Path, out: str | Path, cases: int = 4) -> list[Path]:
    """One PNG montage per stored dataset, written to `out`."""
    from storage.store import ZarrStore

    store = ZarrStore(store_root)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in store.datasets():
        path = out / f"{name}.png"
        dataset_montage(store.dataset(name), cases).save(path)
        written.append(path)
    return written
