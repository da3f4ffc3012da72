"""Ingest: turn the cases of a planned dataset into published Zarr cases, in parallel with Dask.

`ingest_case` is the unit of work: checksum the sources, skip when the published case has the same
checksum, else read -> validate -> preprocess -> write aside -> publish. It never raises for bad
input: a bad case comes back as a failed `CaseResult` whose reason names the file and the problem,
and nothing of it is published. `ingest` runs the cases on a Dask cluster, one case per task and
one thread per worker process (so memory stays bounded at one case per worker), and writes the
catalog when every result is in (`CatalogWriter`). The Prefect flow in `flows/ingest.py` drives
the same units.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from storage import preprocess
from storage.catalog import CaseRecord
from storage.geometry import planar_geometry
from storage.layouts import FLIP_AXES, CaseSource, DatasetPlan, SourceFile
from storage.location import Location
from storage.readers import ReadError, Scan, read_scan
from storage.specs import DatasetSpec
from storage.store import Codec, prepare_dataset, published_record, rebuild_catalog, write_case

DEFAULT_SIZE = 512


class CaseError(ValueError):
    """A case cannot be ingested; the message names the file and the problem."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True)
class IngestOptions:
    size: int = DEFAULT_SIZE  # in-plane store size, the paper's 512
    codec: Codec = field(default_factory=Codec)


@dataclass
class CaseResult:
    case: str
    status: str  # ingested | skipped | failed
    reason: str = ""
    record: CaseRecord | None = None
    seconds: float = 0.0
    decoded_bytes: int = 0  # bytes of decoded source voxels, for throughput figures

    def row(self) -> dict:
        record = self.record
        return {
            "case": self.case,
            "split": record.split if record else "",
            "slices": record.slices if record else 0,
            "classes": " ".join(map(str, record.classes)) if record else "",
            "status": self.status,
            "reason": self.reason,
        }


# --------------------------------------------------------------------------------- one case


def source_checksum(files: list[str], reading: str = "") -> str:
    """BLAKE2b of the source files' bytes (a DICOM folder: all its files, by name), and of the read
    options (`CaseSource.reading`: slice axis, flips) that change what those bytes become."""
    digest = hashlib.blake2b(digest_size=16)
    if reading:
        digest.update(reading.encode())
    for name in files:
        path = Path(name)
        members = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for member in members:
            digest.update(str(member.relative_to(path.parent)).encode())
            try:
                with member.open("rb") as file:
                    while block := file.read(1 << 22):
                        digest.update(block)
            except FileNotFoundError:
                digest.update(b"<missing>")  # the read that follows reports it, naming the file
    return digest.hexdigest()


RECIPE_VERSION = 1  # bump when preprocessing changes what is stored for the same recipe


def recipe(spec: DatasetSpec, options: IngestOptions) -> dict:
    """Everything besides the source files that decides what a case's arrays hold, in words a user
    can read in the case's metadata; a case is re-ingested when any of it changes."""
    return {
        "version": RECIPE_VERSION,
        "size": options.size,
        "task": spec.task,
        "normalisation": spec.normalisation,
        "input_channel": spec.input_channel,
        "target_channel": spec.target_channel,
        "rescale": list(spec.rescale) if spec.rescale else None,
        "classes": {str(k): v for k, v in sorted(spec.classes.items())},
        "codec": vars(options.codec),
        # only when set, so that the stores written before label maps existed stay unchanged
        **({"label_map": {str(k): v for k, v in sorted(spec.label_map.items())}} if spec.label_map else {}),
    }


def ingest_case(
    source: CaseSource,
    spec: DatasetSpec,
    directory: str | Path | Location,
    declared_labels: dict[int, str] | None = None,
    options: IngestOptions = IngestOptions(),
) -> CaseResult:
    started = time.perf_counter()
    directory = Location.of(directory)
    try:
        checksum, made_by = source_checksum(source.files(), source.reading()), recipe(spec, options)
        existing = published_record(directory, source.case)
        if existing is not None and (existing.checksum, existing.recipe, existing.split) == (checksum, made_by, source.split):
            return CaseResult(source.case, "skipped", "unchanged since last ingest", existing, time.perf_counter() - started)
        arrays, record, decoded = prepare_case(source, spec, declared_labels, options.size)
        record.checksum, record.recipe = checksum, made_by
        write_case(directory, record, arrays, options.codec)
    except (ReadError, CaseError) as error:
        return CaseResult(source.case, "failed", str(error), seconds=time.perf_counter() - started)
    return CaseResult(source.case, "ingested", "", record, time.perf_counter() - started, decoded)


def prepare_case(
    source: CaseSource, spec: DatasetSpec, declared_labels: dict[int, str] | None, size: int
) -> tuple[dict[str, np.ndarray], CaseRecord, int]:
    """Read, validate and preprocess one case into the arrays the store keeps."""
    channels = _read_channels(source, spec)
    decoded = sum(scan.array.nbytes for scan in channels if scan is not None)
    image_scan = _channel(channels, spec.input_channel, source)
    _require_finite(image_scan)
    target_scan = None
    if spec.target_channel is not None:
        target_scan = _channel(channels, spec.target_channel, source)
        _require_finite(target_scan)
        _require_same_grid(image_scan, target_scan)
    labels = _read_labels(source, image_scan, spec)

    arrays: dict[str, np.ndarray] = {}
    intensity: dict[str, dict[str, float]] = {}
    # Inpainting compares the filled region with the untouched rest: both images share one scaling.
    image_scale = (
        preprocess.intensity_scale(target_scan.array, spec.normalisation)
        if spec.task == "inpainting"
        else preprocess.intensity_scale(image_scan.array, spec.normalisation)
    )
    arrays["image"] = _store_image(image_scale, image_scan.array, size)
    intensity["image"] = vars(image_scale)
    if target_scan is not None:
        target_scale = image_scale if spec.task == "inpainting" else preprocess.intensity_scale(target_scan.array, spec.normalisation)
        arrays["target"] = _store_image(target_scale, target_scan.array, size)
        intensity["target"] = vars(target_scale)
        if labels is not None:
            arrays["mask"] = preprocess.resize_slices((labels > 0).astype(np.uint8), size, labels=True)
    slice_classes: list[list[int]] = []
    if target_scan is None and labels is not None:
        source_classes = preprocess.slice_classes(labels)
        _require_declared(source_classes, source, declared_labels or spec.classes)
        arrays["target"] = preprocess.resize_slices(labels, size, labels=True)
        # nearest resizing can drop a one-voxel structure: count classes on what is stored
        slice_classes = source_classes if arrays["target"] is labels else preprocess.slice_classes(arrays["target"])
    elif "mask" in arrays:  # inpainting: which slices hold a region to fill
        slice_classes = preprocess.slice_classes(arrays["mask"])
    geometry = image_scan.geometry
    depth, height, width = image_scan.array.shape
    record = CaseRecord(
        case=source.case,
        split=source.split,
        slices=depth,
        shape=arrays["image"].shape,
        roles=list(arrays),
        checksum="",
        sources=source.files(),
        geometry=geometry.to_dict(),
        spacing=(geometry.spacing[0], geometry.spacing[1] * height / size, geometry.spacing[2] * width / size),
        intensity=intensity,
        classes=sorted({c for classes in slice_classes for c in classes}),
        slice_classes=slice_classes,
    )
    return arrays, record, decoded


def _store_image(scale: preprocess.IntensityScale, image: np.ndarray, size: int) -> np.ndarray:
    # float16 keeps ~3 decimal digits in [0, 1]: PSNR stays far above what uint8 would cap (~59 dB)
    if image.shape[1:] == (size, size):
        return scale.apply(image, np.float16)
    return preprocess.resize_slices(scale.apply(image), size).astype(np.float16)


def read_source(file: SourceFile) -> Scan:
    """One source of a case as a Scan: a file, or a stack of files along z, read with its options
    (key, slice axis) and flipped where the release is known to store it flipped."""
    parts = [read_scan(path, file.key, file.slice_axis) for path in file.paths()]
    scan = parts[0]
    if len(parts) > 1:
        for part in parts:
            if part.geometry.spacing_known:
                raise CaseError(part.path, "has its own geometry: only files without one (HDF5, PNG, .npy ...) are stacked")
            if part.array.ndim != 3 or part.array.shape[1:] != scan.array.shape[1:]:
                raise CaseError(part.path, f"shape {part.array.shape} cannot be stacked on {scan.path}'s {scan.array.shape}")
        array = np.concatenate([part.array for part in parts])
        scan = Scan(array, planar_geometry(array.shape), scan.path)
    if file.flip:
        if scan.geometry.spacing_known:
            raise CaseError(scan.path, "has a geometry: flipping its array would contradict it")
        axes = tuple(FLIP_AXES.index(axis) + scan.array.ndim - 3 for axis in file.flip)
        scan = Scan(np.ascontiguousarray(np.flip(scan.array, axes)), scan.geometry, scan.path)
    return scan


def _read_channels(source: CaseSource, spec: DatasetSpec) -> list[Scan | None]:
    """The case's channels; with one file per channel only the input and target files are decoded
    (None stands for the others: BraTS' four contrasts for a two-channel synthesis pair)."""
    needed = {spec.input_channel, spec.target_channel}
    scans: list[Scan | None] = []
    for index, file in enumerate(source.channels):
        if len(source.channels) > 1 and index not in needed:
            scans.append(None)
            continue
        scan = read_source(file)
        if scan.array.ndim == 4:
            if spec.layout == "msd" and len(source.channels) == 1:
                scans.extend(scan.channel(c) for c in range(scan.channels))  # MSD keeps channels in one 4-D file
                continue
            if file.channel is None:
                raise CaseError(file.path, f"is 4-D {scan.array.shape} where a 3-D volume is expected")
            scan = scan.channel(file.channel)
        scans.append(scan)
    if spec.rescale is not None:
        slope, intercept = spec.rescale
        scans = [
            s if s is None else Scan(s.array.astype(np.float32) * np.float32(slope) + np.float32(intercept), s.geometry, s.path)
            for s in scans
        ]
    return scans


def _channel(channels: list[Scan | None], index: int, source: CaseSource) -> Scan:
    if index >= len(channels):
        raise CaseError(source.channels[0].path, f"case {source.case} has {len(channels)} channel(s); the spec needs channel {index}")
    return channels[index]


def _require_finite(scan: Scan) -> None:
    if np.issubdtype(scan.array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(scan.array)))
        if bad:
            raise CaseError(scan.path, f"has {bad} NaN/inf voxel(s)")


def _require_same_grid(reference: Scan, other: Scan) -> None:
    if other.array.shape != reference.array.shape:
        raise CaseError(other.path, f"shape {other.array.shape} does not match the image's {reference.array.shape} ({reference.path})")
    if reference.geometry.spacing_known and other.geometry.spacing_known:
        if not np.allclose(reference.geometry.affine, other.geometry.affine, rtol=1e-4, atol=1e-3):
            raise CaseError(other.path, f"affine differs from the image's ({reference.path}): the two are not on one voxel grid")


def _read_labels(source: CaseSource, image: Scan, spec: DatasetSpec) -> np.ndarray | None:
    if spec.label_role == "ignore" or not source.has_label:
        if spec.label_role in ("target", "mask") and not source.has_label:
            raise CaseError(source.channels[0].path, f"case {source.case} has no label file")
        return None
    if source.label_parts:
        masks = [(value, _label_scan(part, image).array) for value, part in source.label_parts]
        try:
            return preprocess.merge_binary_masks(masks, image.array.shape)
        except ValueError as error:
            raise CaseError(source.label_parts[0][1].path, f"case {source.case}: {error}") from None
    scan = _label_scan(source.label, image)
    try:
        labels = preprocess.integer_labels(scan.array)
        if spec.label_map:
            labels = preprocess.map_labels(labels, spec.label_map)
    except ValueError as error:
        raise CaseError(scan.path, f"case {source.case}: {error}") from None
    if spec.label_role == "mask":
        return (labels > 0).astype(np.uint8)
    return labels


def _require_declared(slice_classes: list[list[int]], source: CaseSource, declared: dict[int, str]) -> None:
    if not declared or source.label is None:
        return
    undeclared = sorted({c for classes in slice_classes for c in classes} - set(declared))
    if undeclared:
        raise CaseError(source.label.path, f"label values {undeclared} are not declared (declared: {sorted(declared)})")


def _label_scan(file: SourceFile, image: Scan) -> Scan:
    scan = read_source(file)
    if scan.array.ndim == 4:
        raise CaseError(file.path, f"is 4-D {scan.array.shape} where a 3-D label map is expected")
    _require_same_grid(image, scan)
    return scan


# --------------------------------------------------------------------------------- many cases


class CatalogWriter:
    """Collects case results into the dataset's catalog; the only writer of `catalog.json`.

    The catalog is saved incomplete when the ingest starts and complete by `finish`. A case is
    published by its worker before its result reaches this writer, so no catalog saved in between
    could list every published case after a kill; an incomplete one sends readers to the cases'
    own records instead (`storage.catalog`).
    """

    def __init__(self, root: str | Path | Location, plan: DatasetPlan):
        self.directory = prepare_dataset(root, plan.spec)
        self.plan = plan
        self.catalog = rebuild_catalog(self.directory)  # trust what is published, not an old index
        self.catalog.spec = plan.spec.to_dict()
        self.catalog.complete = False
        self.results: list[CaseResult] = [CaseResult(p.case, "failed", p.reason) for p in plan.problems]  # unplannable rows
        self.catalog.save(self.directory)

    @property
    def failures(self) -> int:
        return sum(1 for result in self.results if result.status == "failed")

    def add(self, result: CaseResult) -> None:
        self.results.append(result)
        if result.record is not None:
            self.catalog.cases[result.case] = result.record

    def finish(self) -> IngestReport:
        self.catalog.complete = True
        self.catalog.save(self.directory)
        return IngestReport(self.plan.spec.name, str(self.directory), sorted(self.results, key=lambda r: r.case))


@dataclass
class IngestReport:
    dataset: str
    directory: str
    results: list[CaseResult]

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if r.status == "failed"]

    def counts(self) -> dict[str, int]:
        counts = {"ingested": 0, "skipped": 0, "failed": 0}
        for result in self.results:
            counts[result.status] += 1
        return counts

    def rows(self) -> list[dict]:
        return [r.row() for r in self.results]


@contextmanager
def dask_client(workers: int = 2, address: str | None = None) -> Iterator:
    """A Dask client: on an existing scheduler when `address` is given, else a LocalCluster of
    `workers` single-threaded processes (one case in memory per worker)."""
    import logging

    import dask
    from distributed import Client, LocalCluster

    if address:
        with Client(address) as client:
            yield client
        return
    # Dask's default MALLOC_TRIM_THRESHOLD_ turns off glibc's adaptive mmap threshold, so every
    # slice-sized temporary is mmap'd and page-faulted afresh: measured 1.6x slower per case here.
    # Workers hold one case at a time, so the memory it would give back is not worth that.
    environ = {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}
    logging.getLogger("distributed").setLevel(logging.WARNING)  # its INFO chatter drowns the progress bar
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        memory_limit=0,
        silence_logs=logging.WARNING,
    ) as cluster, Client(cluster) as client:
        yield client


def ingest(
    plan: DatasetPlan,
    root: str | Path | Location,
    client,
    options: IngestOptions = IngestOptions(),
    retries: int = 2,
) -> IngestReport:
    """Ingest every planned case on `client` (a distributed.Client); plain Dask, no orchestrator."""
    from distributed import as_completed

    writer = CatalogWriter(root, plan)
    cases = {
        client.submit(
            ingest_case, case, plan.spec, writer.directory, plan.declared_labels, options, retries=retries, pure=False
        ): case.case
        for case in plan.cases
    }
    for future in as_completed(list(cases)):
        try:
            result = future.result()
        except Exception as error:  # noqa: BLE001 - a crashed task (killed worker...) fails its case only
            result = CaseResult(cases[future], "failed", f"{type(error).__name__}: {error}")
        writer.add(result)
    return writer.finish()
