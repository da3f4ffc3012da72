"""Episodes: the training examples of in-context learning (paper 3.3 and 4.1).

An episode is k prompt pairs (image, target) and one query pair of the same dataset, cropped to
the model's image size. `EpisodeSampler.sample()` draws one in the paper's order:

1. the task, by `DataConfig.task_weights` renormalised over the tasks the store holds
   (segmentation 0.5, the rest share 0.5);
2. a dataset of that task, uniformly (the paper), or with `DataConfig.dataset_weighting =
   "sqrt-slices"` in proportion to the square root of its training slices, so a four-image set
   is not drawn as often as a 1,300-slice one ("slices": in proportion to them);
3. the training path: "mim" or "ar" from `ObjectiveConfig` (segmentation is all AR in the paper);
4. a query case, uniformly, and a slice of it: with probability `foreground_probability` one that
   holds foreground (segmentation: labelled classes; inpainting: a region to fill), else any slice;
5. k prompt pairs from other cases of the same split, each at the query's relative depth,
   slice `floor(n * N_prompt / N_query)` -- the rule the paper uses to pick prompts at inference;
6. resize to `DataConfig.resize` (bilinear for images, nearest for labels) and an independent
   random crop of `DataConfig.crop` for each pair -- the paper's only augmentation. The image and
   the target of one pair share their crop window;
7. segmentation only: colour the label maps with one `Colouring` for the whole episode, so the
   same class has the same grey level in every prompt target and the query target;
8. with `DataConfig.dihedral` (a departure from the paper), or for the tasks in
   `DataConfig.dihedral_tasks`, one of the square's eight symmetries for the whole episode: every
   image and target of it is flipped and turned alike;
9. denoising only, with `DataConfig.noise_scale` (a departure from the paper): each pair's input
   noise, input minus target, scaled by its own factor drawn from that range.

With `DataConfig.hole_episodes` (a departure from the paper), that share of the inpainting episodes
is cut instead of read, after step 3: full slices of another volume of the inpainting datasets'
region and modality, voided under a moved inpainting mask (`mvg.holes`).

Resize and crop are one step: only the pixels of the crop window are interpolated, straight from
the stored slice, and float16 becomes float32 only on the crop. The sampler uses numpy alone (no
torch), so it is cheap to test and to run in DataLoader workers; `collate` and `EpisodeStream`
bring the episodes to torch.

DataLoader workers may fork (Linux's default) as well as spawn. Slices are read with
`storage.shards.SliceReader`, which holds no event-loop thread; zarr-python, still used for volumes
and for any array the reader cannot handle, runs an asyncio thread, but resets it in a forked child
(`zarr.core.sync` registers that with `os.register_at_fork`); and `storage.location` opens a fresh
fsspec file system in each process. tests/test_episodes.py forks workers after the parent has used zarr.

The benchmarks' baseline, the same episodes decoded from one PNG per slice, subclasses
`EpisodeSampler` in benchmarks/png_baseline.py: it overrides `_read`, the one place pixels come from.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from mvg.colouring import LOOKUP_LIMIT, Colouring, PredefinedTable, colouring_for
from mvg.config import TASKS, DataConfig, ObjectiveConfig
from mvg.draws import weighted_index
from mvg.holes import HoleCutter, void
from mvg.pixels import unit_float
from storage.location import Location
from storage.shards import SliceReader
from storage.store import DATASET_SUFFIX, StoredDataset, ZarrStore

FOREGROUND_TASKS = ("segmentation", "inpainting")  # tasks whose catalog says which slices hold something


@dataclass
class Episode:
    task: str  # one of mvg.config.TASKS
    dataset: str
    mode: str  # "mim" or "ar"
    prompt_images: np.ndarray  # (k, crop, crop) float32 in [0, 1]
    prompt_targets: np.ndarray  # (k, crop, crop) float32 in [0, 1]; coloured grey levels for segmentation
    query_image: np.ndarray  # (crop, crop) float32 in [0, 1]
    query_target: np.ndarray  # (crop, crop) float32 in [0, 1]
    colouring: dict[int, float] = field(default_factory=dict)  # class id -> level; empty unless segmentation
    source: dict = field(default_factory=dict)  # provenance, see EpisodeSampler.sample


# --------------------------------------------------------------------------------- resize + crop


@dataclass(frozen=True)
class _Axis:
    """Where each pixel of one axis resized from `source` to `size` pixels samples the source:
    pixel centres aligned (half-pixel convention), clamped at the edges."""

    lower: np.ndarray  # bilinear: the two neighbours and the weight of the upper one
    upper: np.ndarray
    weight: np.ndarray
    nearest: np.ndarray


@lru_cache(maxsize=64)
def _axis(source: int, size: int) -> _Axis:
    scale = source / size
    position = np.clip((np.arange(size) + 0.5) * scale - 0.5, 0, source - 1)
    lower = np.floor(position).astype(np.intp)
    upper = np.minimum(lower + 1, source - 1)
    nearest = np.minimum(((np.arange(size) + 0.5) * scale).astype(np.intp), source - 1)
    return _Axis(lower, upper, (position - lower).astype(np.float32), nearest)


def resized_crop(
    array: np.ndarray, size: int, top: int, left: int, crop: int, labels: bool = False, out: np.ndarray | None = None
) -> np.ndarray:
    """The `crop` x `crop` window at (top, left) of `array` resized to `size` x `size`, computing
    only the window's pixels (the same pixels as scipy.ndimage.zoom(..., grid_mode=True,
    mode="nearest") then cropping). Images: bilinear, float32 in [0, 1], into `out` when given;
    labels: nearest, dtype kept (a view when no resizing is needed; `out` is not used)."""
    height, width = array.shape
    if (height, width) == (size, size):
        window = array[top : top + crop, left : left + crop]
        return window if labels else unit_float(window, out)
    rows, columns = _axis(height, size), _axis(width, size)
    if labels:
        return array[rows.nearest[top : top + crop]][:, columns.nearest[left : left + crop]]
    y0, y1, wy = rows.lower[top : top + crop], rows.upper[top : top + crop], rows.weight[top : top + crop, None]
    x0, x1 = columns.lower[left : left + crop], columns.upper[left : left + crop]
    wx = columns.weight[left : left + crop]
    # widen only the source window the crop reads, not the whole slice
    ylo, xlo = int(y0[0]), int(x0[0])
    window = unit_float(array[ylo : int(y1[-1]) + 1, xlo : int(x1[-1]) + 1])
    top_rows, bottom_rows = window[y0 - ylo], window[y1 - ylo]
    bottom_rows -= top_rows
    bottom_rows *= wy
    top_rows += bottom_rows  # rows blended
    # np.take keeps C order; `rows[:, index]` returns a Fortran-ordered array that makes the
    # arithmetic below 3x slower
    left_columns, right_columns = np.take(top_rows, x0 - xlo, axis=1), np.take(top_rows, x1 - xlo, axis=1)
    if out is None:
        out = np.empty((crop, crop), dtype=np.float32)
    np.subtract(right_columns, left_columns, out=out)
    out *= wx
    out += left_columns
    return np.clip(out, 0.0, 1.0, out=out)


# --------------------------------------------------------------------------------- the sampler


@dataclass
class _Dataset:
    """What the sampler needs of one stored dataset, looked up once."""

    stored: StoredDataset
    name: str
    task: str  # the episode task (a folded detection dataset says "segmentation")
    cases: list[str]
    slices: list[int]
    foreground: list[np.ndarray]  # per case: slices holding foreground (segmentation / inpainting)
    slice_classes: list[list[list[int]]]  # per case and slice: its classes (segmentation)
    labels: bool  # the target is a label map (coloured per episode)
    classes: int  # the largest class id

    def classes_of(self, case: int, index: int) -> list[int]:
        per_slice = self.slice_classes[case]
        return per_slice[index] if per_slice else list(range(1, self.classes + 1))  # a catalog without them


def open_datasets(sources: Sequence[str | Path | StoredDataset]) -> list[StoredDataset]:
    """Store roots, dataset folders (`ROOT/<name>.zarr`) or StoredDataset objects -> datasets."""
    found: list[StoredDataset] = []
    for source in sources:
        if isinstance(source, StoredDataset):
            found.append(source)
            continue
        path = Location.of(source)
        if path.name.endswith(DATASET_SUFFIX) and (path / "zarr.json").exists():
            found.append(StoredDataset(path))
        else:
            store = ZarrStore(path)
            found.extend(store.dataset(name) for name in store.datasets())
    return found


def largest_class(dataset: StoredDataset) -> int:
    """The largest class id a dataset declares or holds in any split."""
    return int(max([*dataset.spec.classes, *(c for r in dataset.catalog.cases.values() for c in r.classes), 0]))


def predefined_table(datasets: Sequence[StoredDataset], include_detection: bool = False) -> PredefinedTable | None:
    """The paper's pre-defined colours over the segmentation datasets (sorted by name), each with
    its largest class id as N_k; None when there are none."""
    tasks = ("segmentation", "detection") if include_detection else ("segmentation",)
    chosen = sorted((d for d in datasets if d.spec.task in tasks), key=lambda d: d.name)
    return PredefinedTable(tuple((d.name, largest_class(d)) for d in chosen)) if chosen else None


class EpisodeSampler:
    """Draws episodes from stored datasets, reproducibly per (seed, rank, worker).

    `store_roots`: store roots, dataset folders, or StoredDataset objects. `datasets`: the names to
    use (default: all found). `include_detection`: the store's detection datasets (DeepLesion, box
    masks) join segmentation as label maps; off by default, because the paper paints detection as
    the image with its box overlaid -- a fifth task our config does not have. `cases`: dataset ->
    the only cases of it to draw from (few-shot fine-tuning on one or a few cases).
    """

    def __init__(
        self,
        store_roots: Sequence[str | Path | StoredDataset],
        data: DataConfig,
        objective: ObjectiveConfig,
        split: str = "train",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        datasets: Sequence[str] | None = None,
        worker: int = 0,
        include_detection: bool = False,
        cases: Mapping[str, Sequence[str]] | None = None,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if data.crop > data.resize:
            raise ValueError(f"crop {data.crop} is larger than the resized image {data.resize}")
        if data.prompts < 1:
            raise ValueError(f"an episode needs at least one prompt pair, not {data.prompts}")
        self.data, self.objective, self.split = data, objective, split
        self.seed, self.rank, self.world_size, self.worker = seed, rank, world_size, worker
        self.only_cases = {name: list(chosen) for name, chosen in (cases or {}).items()}  # few-shot fine-tuning
        self.rng = np.random.default_rng([seed, rank, worker])
        stored = open_datasets(store_roots)
        # the colour table spans every segmentation dataset found, whatever the split or the
        # `datasets` filter, so the same store always gives a class the same colour; a table the
        # objective already holds (a model fine-tuned on a few of its datasets) is kept as it was
        given = objective.colour_table
        self.table = PredefinedTable(given) if given else predefined_table(stored, include_detection)
        if datasets is not None:
            known = {d.name for d in stored}
            missing = sorted(set(datasets) - known)
            if missing:
                raise KeyError(f"no stored dataset {', '.join(missing)} (found: {', '.join(sorted(known)) or 'none'})")
            stored = [d for d in stored if d.name in set(datasets)]
        self.skipped: dict[str, str] = {}  # dataset -> why it takes no part
        self.by_task: dict[str, list[_Dataset]] = {}
        for dataset in sorted(stored, key=lambda d: d.name):
            entry = self._describe(dataset, include_detection)
            if entry is not None:
                self.by_task.setdefault(entry.task, []).append(entry)
        self.tasks = [task for task in TASKS if task in self.by_task and data.task_weights.get(task, 0) > 0]
        if not self.tasks:
            reasons = "; ".join(f"{k}: {v}" for k, v in self.skipped.items()) or "no datasets found"
            raise ValueError(f"no dataset to sample {split!r} episodes from ({reasons})")
        weights = np.array([data.task_weights[task] for task in self.tasks], dtype=np.float64)
        self.task_probabilities = {t: float(w) for t, w in zip(self.tasks, weights / weights.sum())}
        self._cumulative = np.cumsum(weights / weights.sum())
        self._dataset_cumulative = {task: self._dataset_shares(datasets) for task, datasets in self.by_task.items()}
        self._readers: dict[tuple[str, str, str], object] = {}
        every = [d for datasets in self.by_task.values() for d in datasets]
        self._holes = HoleCutter(self.by_task.get("inpainting", []), every) if data.hole_episodes else None

    def _describe(self, dataset: StoredDataset, include_detection: bool) -> _Dataset | None:
        spec = dataset.spec
        task = spec.task
        if task == "detection":
            if not include_detection:
                self.skipped[dataset.name] = "detection (include_detection=False)"
                return None
            task = "segmentation"
        if task not in TASKS:
            self.skipped[dataset.name] = f"task {task!r} is not one of {', '.join(TASKS)}"
            return None
        cases = dataset.cases(self.split)
        if dataset.name in self.only_cases:
            wanted = self.only_cases[dataset.name]
            unknown = sorted(set(wanted) - set(cases))
            if unknown:
                raise KeyError(f"{dataset.name} has no {self.split!r} case {', '.join(unknown)}")
            cases = [case for case in cases if case in set(wanted)]
        if not cases:
            self.skipped[dataset.name] = f"no {self.split!r} cases"
            return None
        records = [dataset.record(case) for case in cases]
        return _Dataset(
            stored=dataset,
            name=dataset.name,
            task=task,
            cases=cases,
            slices=[r.slices for r in records],
            foreground=[np.asarray(r.foreground_slices, dtype=np.int64) for r in records],
            slice_classes=[r.slice_classes for r in records],
            labels=task == "segmentation",
            classes=largest_class(dataset),
        )

    # ------------------------------------------------------------------ reproducibility

    def state_dict(self) -> dict:
        """The RNG state, for checkpoints: `load_state_dict` resumes the same episode sequence."""
        return {"seed": self.seed, "rank": self.rank, "worker": self.worker, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]

    # ------------------------------------------------------------------ sampling

    def _dataset_index(self, task: str, rng: np.random.Generator) -> int:
        """Which of the task's datasets: by `DataConfig.dataset_weighting` (module docstring, step 2)."""
        candidates = self.by_task[task]
        if self.data.dataset_weighting == "uniform":
            return int(rng.integers(len(candidates)))
        return weighted_index(self._dataset_cumulative[task], rng)

    def _dataset_shares(self, datasets: list[_Dataset]) -> np.ndarray:
        """The cumulative draw probabilities of one task's datasets under a slice weighting, fixed
        once the sampler knows its datasets."""
        sizes = np.array([sum(d.slices) for d in datasets], dtype=np.float64)
        if self.data.dataset_weighting == "sqrt-slices":
            sizes = np.sqrt(sizes)
        return np.cumsum(sizes / sizes.sum())

    def sample(self) -> Episode:
        """One episode. `source` records where it came from: dataset, query and prompts as
        (case, slice), their slice counts, and each pair's crop corner (top, left) in the image
        resized to `data.resize`; a cut inpainting episode also its hole (`mvg.holes`)."""
        rng, data = self.rng, self.data
        task = self.tasks[weighted_index(self._cumulative, rng)]
        candidates = self.by_task[task]
        dataset = candidates[self._dataset_index(task, rng)]
        fraction = self.objective.segmentation_mim_fraction if task == "segmentation" else self.objective.mim_fraction
        mode = "mim" if rng.random() < fraction else "ar"
        if task == "inpainting" and self._holes and rng.random() < data.hole_episodes:
            return self._cut_episode(mode)

        query_case = int(rng.integers(len(dataset.cases)))
        query_slice = self._query_slice(dataset, query_case, task)
        prompts = self._prompts(dataset, query_case, query_slice, task)
        chosen = [*prompts, (query_case, query_slice)]
        corners = self._corners(len(chosen))
        images = np.empty((len(chosen), data.crop, data.crop), dtype=np.float32)
        targets = np.empty_like(images)
        label_crops = [
            self._pair(dataset, case, index, corner, images[j], targets[j])
            for j, ((case, index), corner) in enumerate(zip(chosen, corners))
        ]
        colouring: Colouring | None = None
        if dataset.labels:
            colouring = self._colouring(dataset, chosen, label_crops)
            for labels, target in zip(label_crops, targets):
                colour_into(colouring, labels, target)
        return self._episode(task, mode, dataset, chosen, corners, images, targets, colouring)

    def _cut_episode(self, mode: str) -> Episode:
        """An inpainting episode cut from a volume of the inpainting datasets' region and modality:
        each pair's full slice is its target, and the same slice with the episode's hole at 0 its
        input (`DataConfig.hole_episodes`, `mvg.holes`)."""
        data = self.data
        source, holes, chosen = self._holes.draw(self.rng, data.crop, data.prompts)
        dataset = source.dataset
        corners = self._corners(len(chosen))
        images = np.empty((len(chosen), data.crop, data.crop), dtype=np.float32)
        targets = np.empty_like(images)
        for j, ((case, index), (top, left)) in enumerate(zip(chosen, corners)):
            full = self._read(dataset, dataset.cases[case], source.role, index)
            resized_crop(full, data.resize, int(top), int(left), data.crop, out=targets[j])
            stored_mask = holes.mask_at((index + 0.5) / dataset.slices[case], self._read)
            mask = resized_crop(stored_mask, data.resize, int(top), int(left), data.crop, labels=True)
            void(targets[j], holes.moved(mask), images[j])
        hole = {
            "from": f"{dataset.name}/{source.role}",
            "mask": f"{holes.masks.name}/{holes.masks.cases[holes.mask_case]}",
            "shift": holes.shift,
            "mirrored": holes.mirrored,
        }
        return self._episode("inpainting", mode, dataset, chosen, corners, images, targets, None, hole)

    def _corners(self, pairs: int) -> np.ndarray:
        """Each pair's random crop corner (top, left) in the image resized to `data.resize`."""
        return self.rng.integers(self.data.resize - self.data.crop + 1, size=(pairs, 2))

    def _episode(
        self, task: str, mode: str, dataset: _Dataset, chosen: list[tuple[int, int]], corners: np.ndarray,
        images: np.ndarray, targets: np.ndarray, colouring: Colouring | None, hole: dict | None = None,
    ) -> Episode:
        """The episode of these pairs (k prompts, then the query), turned by a symmetry of the
        square when `data.dihedral` or `data.dihedral_tasks` asks, with its provenance."""
        if task == "denoising" and self.data.noise_scale != (1.0, 1.0):
            images = self._rescaled_noise(images, targets)
        symmetry = None
        if self.data.dihedral or task in self.data.dihedral_tasks:
            symmetry = (int(self.rng.integers(4)), bool(self.rng.integers(2)))
            images, targets = dihedral(images, *symmetry), dihedral(targets, *symmetry)
        prompts, (query_case, query_slice) = chosen[:-1], chosen[-1]
        source = {
            "dataset": dataset.name,
            "query": (dataset.cases[query_case], query_slice),
            "prompts": [(dataset.cases[case], index) for case, index in prompts],
            "slices": {"query": dataset.slices[query_case], "prompts": [dataset.slices[case] for case, _ in prompts]},
            "crops": {"query": tuple(map(int, corners[-1])), "prompts": [tuple(map(int, c)) for c in corners[:-1]]},
            "resize": self.data.resize,
            "dihedral": symmetry,  # (quarter turns, transposed first), or None
        }
        if hole is not None:
            source["hole"] = hole
        return Episode(
            task=task,
            dataset=dataset.name,
            mode=mode,
            prompt_images=images[:-1],
            prompt_targets=targets[:-1],
            query_image=images[-1],
            query_target=targets[-1],
            colouring=dict(colouring.levels) if colouring is not None else {},
            source=source,
        )

    def _rescaled_noise(self, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Each pair's input at another dose: target + s * (input - target), s drawn per pair from
        `data.noise_scale`, clipped to [0, 1] as the stored windows are."""
        scales = self.rng.uniform(*self.data.noise_scale, size=(len(images), 1, 1)).astype(np.float32)
        return np.clip(targets + scales * (images - targets), 0.0, 1.0)

    def _query_slice(self, dataset: _Dataset, case: int, task: str) -> int:
        foreground = dataset.foreground[case]
        if task in FOREGROUND_TASKS and len(foreground) and self.rng.random() < self.data.foreground_probability:
            return int(foreground[self.rng.integers(len(foreground))])
        return int(self.rng.integers(dataset.slices[case]))

    def _prompts(self, dataset: _Dataset, query_case: int, query_slice: int, task: str) -> list[tuple[int, int]]:
        """k (case, slice) prompt pairs. Other cases: the slice at the query's relative depth.
        The same case (same_case_prompt, or a one-case dataset): another slice of it, one holding
        foreground when the query's does -- the slice at the same depth would be the query itself."""
        k, rng = self.data.prompts, self.rng
        others = len(dataset.cases) - 1
        if self.data.same_case_prompt or others == 0:
            return [(query_case, self._same_case_slice(dataset, query_case, query_slice, task)) for _ in range(k)]
        drawn = rng.choice(others, size=k, replace=others < k)
        cases = [int(c) + (c >= query_case) for c in drawn]  # skip the query case
        queried = dataset.slices[query_case]
        return [(case, query_slice * dataset.slices[case] // queried) for case in cases]

    def _same_case_slice(self, dataset: _Dataset, case: int, query_slice: int, task: str) -> int:
        foreground = dataset.foreground[case]
        if task in FOREGROUND_TASKS and query_slice in foreground and len(foreground) > 1:
            pool = foreground[foreground != query_slice]
        elif dataset.slices[case] > 1:
            pool = np.delete(np.arange(dataset.slices[case]), query_slice)
        else:
            return query_slice
        return int(pool[self.rng.integers(len(pool))])

    def _pair(
        self, dataset: _Dataset, case: int, index: int, corner, image_out: np.ndarray, target_out: np.ndarray
    ) -> np.ndarray | None:
        """Crop one pair into the episode's arrays; a label map comes back uncoloured instead."""
        name = dataset.cases[case]
        top, left = int(corner[0]), int(corner[1])
        size, crop = self.data.resize, self.data.crop
        resized_crop(self._read(dataset, name, "image", index), size, top, left, crop, out=image_out)
        target = self._read(dataset, name, "target", index)
        if dataset.labels:
            return resized_crop(target, size, top, left, crop, labels=True)
        resized_crop(target, size, top, left, crop, out=target_out)
        return None

    def _colouring(self, dataset: _Dataset, chosen: list[tuple[int, int]], label_crops: list[np.ndarray]) -> Colouring:
        """One colouring for the whole episode, over the classes of its slices as the catalog lists
        them (free to look up; a class the crop cut away only gets an unused level). Binary
        colouring checks the crops, and picks its class among those a prompt and the query both
        show when there are any, so the prompt demonstrates the structure the query asks for."""
        if self.objective.colouring == "binary":
            present = [
                _classes_in(labels, dataset.classes_of(case, index)) for labels, (case, index) in zip(label_crops, chosen)
            ]
            shown = set().union(*present[:-1]) & present[-1]
            classes = sorted(shown) or sorted(present[-1]) or sorted(set().union(*present))
        else:
            classes = sorted({c for case, index in chosen for c in dataset.classes_of(case, index)})
        return colouring_for(self.objective.colouring, classes, self.rng, dataset.name, self.table)

    def _read(self, dataset: _Dataset, case: str, role: str, index: int) -> np.ndarray:
        key = (dataset.name, case, role)
        reader = self._readers.get(key)
        if reader is None:  # our own cache: StoredDataset's is an LRU of 4096 shared by all datasets
            reader = self._readers[key] = dataset.stored.slice_reader(case, role)
            if reader is None:
                raise KeyError(f"{dataset.name}/{case} has no {role} array")
        return reader.read(index) if isinstance(reader, SliceReader) else reader[index]


def dihedral(images: np.ndarray, quarter_turns: int, transposed: bool) -> np.ndarray:
    """(n, s, s) images, each transposed (when asked) then turned `quarter_turns` x 90 degrees: the
    eight symmetries of the square, as one contiguous copy."""
    if transposed:
        images = images.transpose(0, 2, 1)
    return np.ascontiguousarray(np.rot90(images, quarter_turns, axes=(1, 2)))


def _classes_in(labels: np.ndarray, candidates: list[int]) -> set[int]:
    """Which of the slice's classes a crop still shows (one comparison per class: cheaper than a
    bincount, which widens every label to intp)."""
    return {int(c) for c in candidates if (labels == c).any()}


def colour_into(colouring: Colouring, labels: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`colouring.colour(labels)` written into `out`: the same lookup, through np.take, which
    reads uint8 indices directly (2x faster than fancy indexing on a 448 x 448 crop)."""
    top = np.iinfo(labels.dtype).max if labels.dtype.itemsize <= 2 else int(labels.max(initial=0))
    if max(top, *colouring.levels, 0) > LOOKUP_LIMIT:  # uint32 labels: a table that long would not fit
        return colouring.colour_by_class(labels, out)
    lookup = np.zeros(max(top, *colouring.levels, 0) + 1, dtype=np.float32)
    for value, level in colouring.levels.items():
        lookup[value] = level
    return np.take(lookup, labels, out=out, mode="clip")


def keep_freed_memory(limit_mb: int = 512) -> bool:
    """Ask glibc's malloc to keep freed memory for reuse rather than hand it back to the kernel.

    An episode allocates and frees a few MB of crop-sized arrays; by default glibc returns them to
    the kernel (munmap / heap trim) and every new array page-faults its memory in afresh, which
    measured 2.5x slower for a bilinear 448 x 448 resize (3.7 vs 1.4 ms per image; the same effect
    storage/ingest.py notes for Dask's MALLOC_TRIM_THRESHOLD_). A loader worker does nothing else, so
    EpisodeStream calls this in its workers; call it yourself to sample in-process.
    No-op (False) off glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        mmap_threshold, trim_threshold = -3, -1  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
        return bool(libc.mallopt(mmap_threshold, 32 << 20)) and bool(libc.mallopt(trim_threshold, limit_mb << 20))
    except (OSError, AttributeError):
        return False


# --------------------------------------------------------------------------------- torch side


def collate(episodes: Sequence[Episode]) -> dict[str, torch.Tensor]:
    """Episodes -> one batch: prompt_images / prompt_targets (B, k, 1, H, W), query_image /
    query_target (B, 1, H, W) float32; is_segmentation, is_mim (B,) bool; task_index (B,) long
    (an index into mvg.config.TASKS)."""
    return {
        "prompt_images": torch.from_numpy(np.stack([e.prompt_images for e in episodes])[:, :, None]),
        "prompt_targets": torch.from_numpy(np.stack([e.prompt_targets for e in episodes])[:, :, None]),
        "query_image": torch.from_numpy(np.stack([e.query_image for e in episodes])[:, None]),
        "query_target": torch.from_numpy(np.stack([e.query_target for e in episodes])[:, None]),
        "is_segmentation": torch.tensor([e.task == "segmentation" for e in episodes], dtype=torch.bool),
        "is_mim": torch.tensor([e.mode == "mim" for e in episodes], dtype=torch.bool),
        "task_index": torch.tensor([TASKS.index(e.task) for e in episodes], dtype=torch.long),
    }


class EpisodeStream(IterableDataset):
    """An endless stream of collated batches (or of episodes, `batch_size=None`) for a DataLoader.

    Each DataLoader worker builds its own EpisodeSampler in `__iter__`, seeded with
    (seed, rank, worker id), so workers and ranks never repeat each other's episodes. Batches are
    made inside the stream: use `DataLoader(stream, batch_size=None, num_workers=N)`, forked or
    spawned (see the module docstring).
    Batching here or in the DataLoader costs the same (both collate in the worker); batching here
    also works without a DataLoader. `batches`: stop each worker after that many items.
    """

    def __init__(
        self,
        store_roots: Sequence[str | Path | StoredDataset],
        data: DataConfig,
        objective: ObjectiveConfig,
        batch_size: int | None,
        split: str = "train",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        datasets: Sequence[str] | None = None,
        batches: int | None = None,
        include_detection: bool = False,
    ):
        super().__init__()
        # paths, not open datasets, travel to the workers
        self.store_roots = [str(s.directory) if isinstance(s, StoredDataset) else str(Location.of(s)) for s in store_roots]
        self.data, self.objective, self.batch_size, self.split = data, objective, batch_size, split
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.datasets = list(datasets) if datasets is not None else None
        self.batches, self.include_detection = batches, include_detection

    def sampler(self, worker: int = 0) -> EpisodeSampler:
        return EpisodeSampler(
            self.store_roots, self.data, self.objective, self.split, self.seed, self.rank, self.world_size,
            self.datasets, worker=worker, include_detection=self.include_detection,
        )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor] | Episode]:
        info = get_worker_info()
        if info is not None:
            keep_freed_memory()
        sampler = self.sampler(info.id if info is not None else 0)
        produced = 0
        while self.batches is None or produced < self.batches:
            if self.batch_size is None:
                yield sampler.sample()
            else:
                yield collate([sampler.sample() for _ in range(self.batch_size)])
            produced += 1


__all__ = [
    "Episode",
    "EpisodeSampler",
    "EpisodeStream",
    "collate",
    "keep_freed_memory",
    "open_datasets",
    "predefined_table",
    "resized_crop",
]
