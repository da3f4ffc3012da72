"""Prediction montages: one row per example, columns prompt image | prompt target | query |
prediction | ground truth, so a person sees at a glance whether the model paints what the prompt asks.
Used for the sample predictions logged during training and the evaluation montages."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

COLUMNS = ("prompt image", "prompt target", "query", "prediction", "ground truth")
HEADER = 16  # pixels of column titles


def prediction_montage(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str] = COLUMNS, tile: int = 128) -> np.ndarray:
    """rows: each a sequence of 2-D arrays in [0, 1], one per title. Returns an RGB uint8 image."""
    if not rows:
        raise ValueError("a montage needs at least one row")
    canvas = Image.new("RGB", (tile * len(titles), HEADER + tile * len(rows)), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for column, title in enumerate(titles):
        draw.text((column * tile + 4, 2), title, fill=(230, 230, 230))
    for row, images in enumerate(rows):
        if len(images) != len(titles):
            raise ValueError(f"row {row} has {len(images)} images for {len(titles)} columns")
        for column, image in enumerate(images):
            grey = (np.clip(np.asarray(image, dtype=np.float32), 0, 1) * 255).astype(np.uint8)
            canvas.paste(Image.fromarray(grey).resize((tile, tile), Image.Resampling.BILINEAR).convert("RGB"),
                         (column * tile, HEADER + row * tile))
    return np.asarray(canvas)
