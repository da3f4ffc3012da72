"""In-context colouring: segmentation label maps <-> single-channel target images (paper 3.2).

The model paints grey levels, not class ids. A `Colouring` maps each class of an episode to one
level in (0, 1]; background is 0. The same mapping colours the prompt target and the query target,
so the model must read which level means which structure from the prompt, not from the level.

- binary:      one class against the rest at level 1 (multi-class: one pass per class, painted
               by mvg.inference.paint_volume for a model trained so);
- predefined:  a fixed level per (dataset, class), the paper's sum_{i<k} i * N_i + n, scaled to (0, 1];
- random:      levels drawn afresh per episode from an evenly spaced palette, distinct per class.

Decoding takes the nearest level among background and the levels present in the prompt target,
then maps levels back to class ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCHEMES = ("binary", "predefined", "random")
PALETTE_SIZE = 16  # random colouring draws from 1/16, 2/16, ..., 1: far enough apart to decode


# Label values up to this are coloured through a lookup table (256 KiB); larger ones class by class.
LOOKUP_LIMIT = 1 << 16


@dataclass(frozen=True)
class Colouring:
    """class id -> grey level in (0, 1]; background (0) is always level 0."""

    levels: dict[int, float]

    def __post_init__(self):
        if 0 in self.levels:
            raise ValueError("background (class 0) is always level 0 and cannot be coloured")
        if any(not 0 < level <= 1 for level in self.levels.values()):
            raise ValueError(f"levels must lie in (0, 1]: {self.levels}")

    def colour(self, labels: np.ndarray) -> np.ndarray:
        """Label map -> float32 target image; classes without a level stay background."""
        top = int(max(labels.max(initial=0), max(self.levels, default=0)))
        if top > LOOKUP_LIMIT:
            return self.colour_by_class(labels)
        lookup = np.zeros(top + 1, dtype=np.float32)
        for value, level in self.levels.items():
            lookup[value] = level
        return np.take(lookup, labels)

    def colour_by_class(self, labels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """`colour` by one comparison per class: for uint32 label values, where a lookup table as
        long as the largest value (up to 4e9 entries) would not fit in memory."""
        if out is None:
            out = np.empty(labels.shape, dtype=np.float32)
        out[...] = 0
        for value, level in self.levels.items():
            out[labels == value] = level
        return out

    def decode(self, prediction: np.ndarray, prompt_target: np.ndarray) -> np.ndarray:
        """Predicted target image -> class ids, by nearest level among background and the levels
        present in the (coloured) prompt target."""
        present = np.unique(np.round(prompt_target.astype(np.float32), 4))
        candidates = {0.0: 0}
        for value, level in self.levels.items():
            if np.any(np.isclose(present, level, atol=1e-3)):
                candidates[level] = value
        ordered = sorted(candidates)  # python floats: float32 copies would miss the dict's keys
        levels = np.array(ordered, dtype=np.float32)
        classes = np.array([candidates[level] for level in ordered], dtype=np.int64)
        nearest = np.abs(prediction.astype(np.float32)[..., None] - levels).argmin(axis=-1)
        return classes[nearest]


def binary(target_class: int) -> Colouring:
    return Colouring({int(target_class): 1.0})


def random_colouring(classes: list[int], rng: np.random.Generator, palette: int = PALETTE_SIZE) -> Colouring:
    if len(classes) > palette:
        raise ValueError(f"{len(classes)} classes but only {palette} distinct levels in the palette")
    drawn = rng.choice(np.arange(1, palette + 1), size=len(classes), replace=False) / palette
    return Colouring({int(c): float(level) for c, level in zip(classes, drawn)})


@dataclass(frozen=True)
class PredefinedTable:
    """The paper's fixed colours: class n of dataset k gets index sum_{i<k} i * N_i + n (k and i
    counted from 1), and indices are scaled so the largest maps to level 1."""

    datasets: tuple[tuple[str, int], ...]  # (dataset name, number of classes N_k), in order

    def index(self, dataset: str, class_id: int) -> int:
        offset = 0
        for k, (name, count) in enumerate(self.datasets, start=1):
            if name == dataset:
                if not 1 <= class_id <= count:
                    raise ValueError(f"dataset {dataset} has classes 1..{count}, not {class_id}")
                return offset + class_id
            offset += k * count
        raise KeyError(f"dataset {dataset!r} is not in the predefined colour table")

    @property
    def largest(self) -> int:
        return max(self.index(name, count) for name, count in self.datasets if count)

    def colouring(self, dataset: str, classes: list[int]) -> Colouring:
        return Colouring({int(c): self.index(dataset, int(c)) / self.largest for c in classes})


def colouring_for(
    scheme: str,
    classes: list[int],
    rng: np.random.Generator,
    dataset: str | None = None,
    table: PredefinedTable | None = None,
) -> Colouring:
    """The colouring of one episode whose target holds `classes`."""
    if scheme == "binary":
        if not classes:
            return Colouring({})
        return binary(int(rng.choice(classes)))
    if scheme == "random":
        if len(classes) > PALETTE_SIZE:  # e.g. a 24-organ CT slice: a random subset is shown, the rest stay background
            classes = sorted(int(c) for c in rng.choice(classes, size=PALETTE_SIZE, replace=False))
        return random_colouring(classes, rng)
    if scheme == "predefined":
        if table is None or dataset is None:
            raise ValueError("predefined colouring needs the colour table and the dataset name")
        return table.colouring(dataset, classes)
    raise ValueError(f"unknown colouring {scheme!r}; expected one of {', '.join(SCHEMES)}")
