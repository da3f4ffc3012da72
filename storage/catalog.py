"""The catalog of a stored dataset: its cases, splits, slice counts and per-slice classes.

Each published case group carries its own `CaseRecord` (so the catalog can always be rebuilt from
what is on disk); `catalog.json` beside the cases is the index readers load in one go. It is
replaced atomically (a rename locally, one PUT on an object store), so a reader never sees a
half-written catalog. An ingest marks it incomplete when it starts and complete when every case's
result is in; an incomplete catalog (an ingest running, or killed) may lack cases that are already
published, so it is not loaded: readers rebuild the catalog from the published records instead.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from storage.location import Location

CATALOG_FILE = "catalog.json"


class IncompleteCatalog(ValueError):
    """catalog.json was written by an ingest that has not finished: it may lack published cases."""


@dataclass
class CaseRecord:
    case: str
    split: str
    slices: int
    shape: tuple[int, int, int]  # stored (z, y, x)
    roles: list[str]  # arrays of the case: image, target, and mask for inpainting
    checksum: str  # of the source files: re-ingest skips a case whose sources are unchanged
    sources: list[str]
    geometry: dict  # storage.geometry.Geometry of the source, to write outputs back in place
    spacing: tuple[float, float, float]  # stored (z, y, x) voxel size in mm
    intensity: dict[str, dict[str, float]]  # role -> {low, high}: the [0, 1] scaling applied
    recipe: dict = field(default_factory=dict)  # how it was made (storage.ingest.recipe): a change re-ingests
    classes: list[int] = field(default_factory=list)  # foreground classes anywhere in the case
    slice_classes: list[list[int]] = field(default_factory=list)  # per slice; empty for image targets

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CaseRecord:
        data = dict(data)
        data["shape"] = tuple(data["shape"])
        data["spacing"] = tuple(data["spacing"])
        return cls(**data)

    @property
    def foreground_slices(self) -> list[int]:
        return [index for index, classes in enumerate(self.slice_classes) if classes]


@dataclass
class Catalog:
    dataset: str
    spec: dict
    cases: dict[str, CaseRecord] = field(default_factory=dict)
    complete: bool = True  # False while an ingest that may publish more cases has not finished

    def split(self, name: str | None) -> list[str]:
        return sorted(c for c, r in self.cases.items() if name is None or r.split == name)

    def summary(self) -> dict:
        splits: dict[str, int] = {}
        for record in self.cases.values():
            splits[record.split] = splits.get(record.split, 0) + 1
        return {
            "dataset": self.dataset,
            "task": self.spec.get("task"),
            "modality": self.spec.get("modality"),
            "cases": len(self.cases),
            "splits": splits,
            "slices": sum(r.slices for r in self.cases.values()),
            "classes": sorted({c for r in self.cases.values() for c in r.classes}),
        }

    def version(self) -> str:
        """A short fingerprint of what the dataset holds: which cases, on which side of the split,
        from which source checksums, made by which recipe. Training runs record it, so a model
        names the exact data it learnt from; re-ingesting unchanged sources keeps it."""
        content = [(c, r.split, r.checksum, r.recipe) for c, r in sorted(self.cases.items())]
        return hashlib.blake2b(json.dumps(content, sort_keys=True).encode(), digest_size=8).hexdigest()

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "spec": self.spec,
            "summary": self.summary(),
            "complete": self.complete,
            "cases": {name: record.to_dict() for name, record in sorted(self.cases.items())},
        }

    def save(self, dataset_dir: str | Path | Location) -> None:
        write_json_atomic(Location.of(dataset_dir) / CATALOG_FILE, self.to_dict())

    @classmethod
    def load(cls, dataset_dir: str | Path | Location) -> Catalog:
        """The saved catalog; refuses (IncompleteCatalog) one an unfinished ingest left. Catalogs
        written before the mark existed are taken as complete, as they always were."""
        path = Location.of(dataset_dir) / CATALOG_FILE
        data = json.loads(path.read_text())
        if not data.get("complete", True):
            raise IncompleteCatalog(f"{path}: written by an ingest that has not finished (running, or killed)")
        return cls(data["dataset"], data["spec"], {k: CaseRecord.from_dict(v) for k, v in data["cases"].items()})


def write_json_atomic(path: str | Path | Location, data: dict) -> None:
    """Replace `path` with `data` as JSON, whole or not at all (see Location.write_bytes)."""
    Location.of(path).write_bytes(json.dumps(data, indent=1).encode())
