"""Check a store's shards end to end: `mvg store --verify` and the nightly `verify-store` flow.

Reads always check the shard index and each slice's CRC32C (storage.shards), but only of what a
training run or an evaluation happens to touch, and only when it touches it. This reads every
shard of every case once, so damage (a torn copy, a failing disk, a truncated upload) is found
while the source data to re-ingest it is still at hand. For each array a case's record lists it
checks:

- the array is there, in the store's layout, with the shape the record says;
- the shard's index checksum, and that the index points inside the shard;
- every slice's length, CRC32C, Blosc decode and decoded size.

Arrays written before slice checksums pass when their index and decodes agree, but are counted as
`unchecksummed`: their slice bytes cannot be checked; re-ingesting rewrites them with checksums.
"""

from __future__ import annotations

from dataclasses import dataclass

from storage.location import Location
from storage.shards import CorruptShard, SliceReader, UnsupportedLayout
from storage.store import StoredDataset, ZarrStore, safe_case_name


@dataclass(frozen=True)
class ShardCheck:
    """The verdict on one array (one shard) of a case."""

    dataset: str
    case: str
    role: str
    problems: tuple[str, ...]  # each names dataset/case/role, the slice where there is one, and the shard
    checksummed: bool  # False for arrays written before slice checksums (or not in the store's layout)

    @property
    def broken(self) -> bool:
        return bool(self.problems)


@dataclass(frozen=True)
class StoreCheck:
    root: str
    shards: list[ShardCheck]

    @property
    def broken(self) -> list[ShardCheck]:
        return [shard for shard in self.shards if shard.broken]

    @property
    def unchecksummed(self) -> list[ShardCheck]:
        return [shard for shard in self.shards if not shard.broken and not shard.checksummed]

    def summary(self) -> str:
        datasets = len({shard.dataset for shard in self.shards})
        text = f"verified {len(self.shards)} shard(s) of {datasets} dataset(s) in {self.root}: {len(self.broken)} broken"
        if self.unchecksummed:
            text += (f"; {len(self.unchecksummed)} written before slice checksums (index checked, slice bytes not:"
                     " re-ingest to add them)")
        return text


def verify_store(root: str | Location, datasets: list[str] | None = None) -> StoreCheck:
    """Check every shard of `datasets` (default: all) in the store at `root`."""
    store = ZarrStore(root)
    names = datasets or store.datasets()
    return StoreCheck(str(store.root), [shard for name in names for shard in verify_dataset(store.dataset(name))])


def verify_dataset(dataset: StoredDataset) -> list[ShardCheck]:
    return [verify_array(dataset, case, role) for case in dataset.cases() for role in dataset.record(case).roles]


def verify_array(dataset: StoredDataset, case: str, role: str) -> ShardCheck:
    """Open the array afresh (not the dataset's cached reader: its index may predate the damage)."""
    name = dataset.array_name(case, role)
    folder = dataset.directory / safe_case_name(case) / role / "0"
    try:
        reader = SliceReader(folder, name=name)
    except FileNotFoundError:
        return ShardCheck(dataset.name, case, role, (f"{name}: missing (no array at {folder})",), False)
    except UnsupportedLayout:
        return _verify_with_zarr(dataset, case, role)
    except (ValueError, KeyError) as error:  # zarr.json itself damaged: not JSON, or fields missing
        return ShardCheck(dataset.name, case, role, (f"{name}: unreadable array metadata ({error!r}) in {folder / 'zarr.json'}",), False)
    problems = _shape_problems(dataset, case, role, reader.shape) + reader.damage()
    return ShardCheck(dataset.name, case, role, tuple(problems), reader.chunk_checksum)


def _shape_problems(dataset: StoredDataset, case: str, role: str, shape: tuple[int, ...]) -> list[str]:
    record = dataset.record(case)
    expected = (record.slices, *tuple(record.shape)[1:])
    if tuple(shape) != expected:
        return [f"{dataset.array_name(case, role)}: shape {tuple(shape)}, the case's record says {expected}"]
    return []


def _verify_with_zarr(dataset: StoredDataset, case: str, role: str) -> ShardCheck:
    """An array in another layout (not written by this store): zarr-python reads it whole, which
    checks whatever checksums its codecs carry."""
    try:
        array = dataset.array(case, role)
        problems = _shape_problems(dataset, case, role, array.shape)
        dataset.read_role(case, role)
    except CorruptShard as error:
        problems = [str(error)]
    return ShardCheck(dataset.name, case, role, tuple(problems), False)
