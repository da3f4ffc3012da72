"""Inpainting episodes cut by the sampler (`DataConfig.hole_episodes`, a departure from the paper).

Public inpainting releases are small: the real store's BraTS-Local has one training volume, voided
under the one published mask. Trained on it alone, a model learns that volume's fill rather than
inpainting: the 30-minute `tiny-cpu` model painted its training volume's holes at 19.7 dB and the
held-out volume's at 11.4 dB. So a share of the inpainting episodes is cut from the store's other
volumes of the same body region and modality (for BraTS-Local: the brain MRI of the synthesis and
edema releases, every contrast): the full slice is the target, and the input is that slice with a
hole at 0, as the releases void theirs. The hole is an inpainting release's own mask at the pair's
relative depth, moved by one random shift and mirror per episode, so prompt and query show the
same hole at the same place, as at inference, where both come from volumes voided under one mask.

Only training cases are read (the sampler's split); nothing here writes to the store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mvg.draws import weighted_index

# the role an image volume is cut from, per task of the dataset that holds it: an inpainting
# release's own input is voided already, a segmentation's target is a label map
IMAGE_ROLES = {"inpainting": ("target",), "segmentation": ("image",), "synthesis": ("image", "target"), "denoising": ("image", "target")}


@dataclass(frozen=True)
class HoleSource:
    dataset: object  # the sampler's description of a stored dataset (`mvg.episodes._Dataset`)
    role: str  # the stored array the full slices come from


@dataclass(frozen=True)
class Holes:
    """One episode's hole: the mask volume it comes from and the move applied to it."""

    masks: object  # the inpainting dataset whose mask volume gives the hole
    mask_case: int
    shift: tuple[int, int]  # rows, columns
    mirrored: bool

    def mask_at(self, depth: float, read: Callable[[object, str, str, int], np.ndarray]) -> np.ndarray:
        """The mask slice at relative `depth` in [0, 1), as stored."""
        index = _slice_at(depth, self.masks.slices[self.mask_case])
        return read(self.masks, self.masks.cases[self.mask_case], self.masks.stored.spec.label_role, index)

    def moved(self, mask: np.ndarray) -> np.ndarray:
        """`mask` mirrored left-right (when drawn) and shifted, what leaves the square dropped."""
        if self.mirrored:
            mask = mask[:, ::-1]
        moved = np.zeros_like(mask)
        rows, columns = mask.shape
        dy, dx = self.shift
        moved[max(dy, 0) : rows + min(dy, 0), max(dx, 0) : columns + min(dx, 0)] = mask[
            max(-dy, 0) : rows + min(-dy, 0), max(-dx, 0) : columns + min(-dx, 0)
        ]
        return moved


class HoleCutter:
    """Chooses what a cut inpainting episode is made of; the sampler reads and crops the pixels."""

    def __init__(self, inpainting: Sequence[object], others: Sequence[object]):
        """`inpainting`: the sampler's inpainting datasets (their masks give the holes); `others`:
        every dataset it holds, whatever its task (the candidates to cut from)."""
        self.masks = [d for d in inpainting if any(len(f) for f in d.foreground)]
        # per mask dataset, the cases whose mask volume holds a hole somewhere
        self._holding_cases = [[c for c, f in enumerate(d.foreground) if len(f)] for d in self.masks]
        kinds = {(d.stored.spec.region, d.stored.spec.modality) for d in self.masks}
        self.sources = [
            HoleSource(d, role)
            for d in others
            if (d.stored.spec.region, d.stored.spec.modality) in kinds
            for role in IMAGE_ROLES.get(d.task, ())
        ]
        # every source slice alike: a five-volume release gives more episodes than a one-volume one
        sizes = np.array([sum(source.dataset.slices) for source in self.sources], dtype=np.float64)
        self._cumulative = np.cumsum(sizes / sizes.sum()) if len(sizes) else np.array([])

    def __bool__(self) -> bool:
        return bool(self.masks and self.sources)

    def draw(self, rng: np.random.Generator, crop: int, prompts: int) -> tuple[HoleSource, Holes, list[tuple[int, int]]]:
        """The source, the hole, and the (case, slice) pairs: k prompts, then the query. The query
        sits at the relative depth of a mask slice that holds a hole; prompts come from other cases
        at the same depth, or, in a one-case source, from other slices whose depth holds a hole too."""
        source = self.sources[weighted_index(self._cumulative, rng)]
        chosen_masks = int(rng.integers(len(self.masks)))
        masks = self.masks[chosen_masks]
        mask_case = int(rng.choice(self._holding_cases[chosen_masks]))
        holding = masks.foreground[mask_case]
        mask_slices = masks.slices[mask_case]
        reach = crop // 4
        holes = Holes(masks, mask_case, tuple(int(v) for v in rng.integers(-reach, reach + 1, size=2)), bool(rng.integers(2)))

        dataset = source.dataset
        query_case = int(rng.integers(len(dataset.cases)))
        depth = (float(holding[rng.integers(len(holding))]) + 0.5) / mask_slices
        query = (query_case, _slice_at(depth, dataset.slices[query_case]))
        others = [c for c in range(len(dataset.cases)) if c != query_case]
        if others:
            cases = rng.choice(others, size=prompts, replace=len(others) < prompts)
            chosen = [(int(c), _slice_at(depth, dataset.slices[int(c)])) for c in cases]
        else:
            depths = (holding + 0.5) / mask_slices
            candidates = sorted({_slice_at(d, dataset.slices[query_case]) for d in depths} - {query[1]}) or [query[1]]
            chosen = [(query_case, int(candidates[rng.integers(len(candidates))])) for _ in range(prompts)]
        return source, holes, [*chosen, query]


def _slice_at(depth: float, slices: int) -> int:
    return min(int(depth * slices), slices - 1)


def void(full: np.ndarray, mask: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`full` with the mask's pixels at 0 (the releases' voided value), into `out`."""
    np.copyto(out, full)
    out[mask > 0] = 0.0
    return out
