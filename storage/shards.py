"""Fast single-slice reads and whole-shard writes for the store's sharded Zarr arrays.

Training samples one slice at a time from thousands of cases. Going through zarr-python costs about
a millisecond of asyncio machinery and a fresh read of the shard index for every slice, more than
decoding the slice itself. Our arrays all have one known shape (one shard per case, one slice per
inner chunk, Blosc-compressed, index at the end), so this reader reads the shard index once per
array, then each slice with one positioned read and one Blosc decode. It holds no event-loop thread,
so DataLoader workers may fork. From an object store it first copies the shard (one case) to a
local cache (`storage.home.remote_cache`), once per version of the case: a ranged GET per slice
gave ~50x fewer training episodes per second than the copy (benchmarks/store.py); with the cache
off it does that.

Writing a whole case is the same story in reverse: zarr-python writes the metadata (it stays the
format's authority), `write_shard` writes the shard bytes in one go, about 0.2 s per 512 x 512 x 100
case faster than zarr-python's per-chunk asyncio pipeline, a third of ingest's own work.

Integrity: Blosc-lz4 carries no checksum, so a flipped bit in a slice decodes to wrong voxels
without a word. Every slice (inner chunk) therefore ends in a CRC32C (Zarr v3's `crc32c` codec,
after Blosc), as does the shard index; this reader checks both on every read, as zarr-python does,
and a damaged shard raises `CorruptShard` naming the array, the slice and the file instead of
returning wrong values. Arrays written before slice checksums (chunk codecs `bytes, blosc`) still
read: their index checksum and slice lengths are checked, their slice bytes cannot be
(`mvg store --verify` lists them; re-ingesting rewrites them with checksums).

Any array that is not laid out as `storage.store.write_case` writes it is refused with
`UnsupportedLayout`; callers fall back to zarr-python. `tests/test_shards.py` checks slice for
slice against zarr-python, both ways, including the empty chunks zarr does not write.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import google_crc32c
import numpy as np
from numcodecs import blosc

from storage.home import remote_cache
from storage.location import Location

EMPTY = np.iinfo(np.uint64).max  # offset and length of a chunk that was never written
CRC_BYTES = 4
INDEX_ENTRY_BYTES = 16  # (offset, length), two little-endian uint64
ATTRIBUTE_KEY = "mvg"  # the array's own attributes: {"shard_bytes": size written}, to name truncation
CHUNK_CODECS = ["bytes", "blosc"]
CHECKSUMMED_CHUNK_CODECS = ["bytes", "blosc", "crc32c"]


class UnsupportedLayout(ValueError):
    """The array is not a one-shard, one-slice-per-chunk, Blosc-compressed Zarr v3 array."""


class CorruptShard(ValueError):
    """A shard's bytes disagree with its checksums or its index. The message names the array
    (`dataset/case/role` in a store), the slice when one was read, the problem and the shard file."""


class _Damage(Exception):
    """What is wrong with a shard, before the reader adds where it is."""


def crc32c_bytes(data) -> bytes:
    return google_crc32c.value(data).to_bytes(CRC_BYTES, "little")


def _verified(chunk: np.ndarray) -> np.ndarray:
    """`chunk` without its trailing CRC32C, once the CRC agrees with the bytes before it."""
    body, stored = chunk[:-CRC_BYTES], chunk[-CRC_BYTES:].tobytes()
    if len(chunk) < CRC_BYTES or crc32c_bytes(body) != stored:
        raise _Damage("checksum mismatch")
    return body


def _written(offsets: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """(slice, offset, length) of every slice the index says was written."""
    for index, (offset, length) in enumerate(offsets.tolist()):
        if offset != EMPTY:
            yield index, offset, length


class SliceReader:
    """Reads (y, x) slices of one `(z, y, x)` array written as a single shard. `name` says which
    array it is in error messages (default: its folder)."""

    def __init__(self, array_dir: str | Path | Location, name: str | None = None):
        self.array_dir = Location.of(array_dir)
        self.name = name or str(self.array_dir)
        metadata = json.loads((self.array_dir / "zarr.json").read_text())
        self.shape = tuple(metadata["shape"])
        self.dtype = np.dtype(metadata["data_type"])
        self.fill_value = metadata.get("fill_value", 0)
        self.chunk_checksum = self._check_layout(metadata)
        # recorded when written; absent for arrays written before it was, or by zarr-python
        self.written_bytes = metadata.get("attributes", {}).get(ATTRIBUTE_KEY, {}).get("shard_bytes")
        self.shard_path = self.array_dir / "c" / "0" / "0" / "0"
        cache = remote_cache()
        if not self.shard_path.is_local and cache is not None:
            try:
                self.shard_path = self.shard_path.cached_copy(cache)
            except FileNotFoundError:
                pass  # no shard: every slice is the fill value (below)
        self._index: np.ndarray | None = None
        self._index_read = False

    @property
    def index_bytes(self) -> int:
        return self.shape[0] * INDEX_ENTRY_BYTES + CRC_BYTES

    @property
    def slice_bytes(self) -> int:
        return self.shape[1] * self.shape[2] * self.dtype.itemsize

    def _check_layout(self, metadata: dict) -> bool:
        """Refuse any other layout; True when every slice carries a CRC32C."""
        codecs = metadata.get("codecs", [])
        sharding = codecs[0].get("configuration", {}) if len(codecs) == 1 and codecs[0]["name"] == "sharding_indexed" else None
        depth, height, width = self.shape
        grid = metadata.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape")
        encoding = metadata.get("chunk_key_encoding", {})
        chunk_codecs = [c["name"] for c in sharding.get("codecs", [])] if sharding else []
        if (
            sharding is None
            or grid != [depth, height, width]
            or sharding.get("chunk_shape") != [1, height, width]
            or sharding.get("index_location", "end") != "end"
            or chunk_codecs not in (CHUNK_CODECS, CHECKSUMMED_CHUNK_CODECS)
            or [c["name"] for c in sharding.get("index_codecs", [])] != ["bytes", "crc32c"]
            or encoding.get("name") != "default"
            or encoding.get("configuration", {}).get("separator", "/") != "/"
            or (self.dtype.itemsize > 1 and sharding["codecs"][0].get("configuration", {}).get("endian", "little") != "little")
        ):
            raise UnsupportedLayout(f"{self.array_dir}: not a single-shard, slice-chunked Blosc array")
        return chunk_codecs == CHECKSUMMED_CHUNK_CODECS

    # ------------------------------------------------------------------------------- reading

    def read(self, index: int) -> np.ndarray:
        if not -self.shape[0] <= index < self.shape[0]:
            raise IndexError(f"{self.array_dir}: slice {index} out of range 0..{self.shape[0] - 1}")
        index %= self.shape[0]
        try:
            offsets = self._offsets()
            if offsets is None or offsets[index, 0] == EMPTY:
                return np.full(self.shape[1:], self.fill_value, dtype=self.dtype)
            offset, length = (int(v) for v in offsets[index])
            return self._decode(self.shard_path.read_range(offset, length), length)
        except _Damage as damage:
            raise self._corrupt(damage, index) from None

    def read_volume(self) -> np.ndarray:
        """Every slice, from one read of the whole shard (whose own index is used and checked)."""
        volume = np.full(self.shape, self.fill_value, dtype=self.dtype)
        try:
            whole = self._whole_shard()
        except _Damage as damage:
            raise self._corrupt(damage) from None
        if whole is not None:
            shard, offsets = whole
            for index, offset, length in _written(offsets):
                try:
                    volume[index] = self._decode(shard[offset : offset + length], length)
                except _Damage as damage:
                    raise self._corrupt(damage, index) from None
        return volume

    def damage(self) -> list[str]:
        """Every problem of the shard, each message naming the array, the slice and the file;
        empty when the index and every slice's checksum, length and decoded size agree. Reads and
        decodes the whole shard."""
        try:
            whole = self._whole_shard()
        except _Damage as damage:
            return [str(self._corrupt(damage))]
        if whole is None:
            return []  # never written by zarr-python: every slice is the fill value
        problems, (shard, offsets) = [], whole
        for index, offset, length in _written(offsets):
            try:
                self._decode(shard[offset : offset + length], length)
            except _Damage as damage:
                problems.append(str(self._corrupt(damage, index)))
        return problems

    def _whole_shard(self) -> tuple[memoryview, np.ndarray] | None:
        """The shard's bytes (slices of a memoryview are not copies) and its checked index; None
        when no shard was written."""
        try:
            shard = self.shard_path.read_bytes()
        except FileNotFoundError:
            return self._never_written()
        return memoryview(shard), self._parse_index(shard[-self.index_bytes :], len(shard))

    def _never_written(self) -> None:
        """zarr-python writes no shard whose slices all equal the fill value; ours always does, so
        a missing one that we recorded writing is lost data, not zeros."""
        if self.written_bytes is not None:
            raise _Damage(f"shard missing ({self.written_bytes} bytes were written)")

    def _corrupt(self, damage: _Damage, index: int | None = None) -> CorruptShard:
        where = self.name if index is None else f"{self.name} slice {index}"
        return CorruptShard(f"{where}: {damage} (shard {self.shard_path})")

    def _offsets(self) -> np.ndarray | None:
        """(offset, length) per slice from the index at the end of the shard, read once and
        checked; None when no shard was written (every slice equal to the fill value)."""
        if not self._index_read:
            try:
                self._index = self._parse_index(self.shard_path.read_tail(self.index_bytes))
            except FileNotFoundError:
                self._index = self._never_written()
            self._index_read = True
        return self._index

    def _parse_index(self, tail: bytes, shard_size: int | None = None) -> np.ndarray:
        """The checked (offset, length) table of an index's bytes. A shard cut short loses its
        index (its tail is then slice bytes), so a failed check says so when the size shows it."""
        try:
            body = _verified(np.frombuffer(tail, dtype=np.uint8))
        except _Damage:
            raise _Damage(self._index_problem(len(tail), shard_size)) from None
        offsets = np.frombuffer(body, dtype="<u8").reshape(self.shape[0], 2)
        written = offsets[:, 0] != EMPTY
        end = offsets[written, 0] + offsets[written, 1]
        data_bytes = None if shard_size is None else shard_size - self.index_bytes
        if data_bytes is not None and end.size and int(end.max()) > data_bytes:
            raise _Damage(f"shard index points past the slice data ({int(end.max())} > {data_bytes} bytes)")
        return offsets

    def _index_problem(self, tail_bytes: int, shard_size: int | None) -> str:
        if tail_bytes < self.index_bytes:
            return f"shard truncated: {tail_bytes} bytes, shorter than its {self.index_bytes}-byte index"
        if shard_size is None:
            try:
                shard_size = self.shard_path.size()
            except OSError:
                shard_size = None
        if self.written_bytes is None or shard_size is None or shard_size == self.written_bytes:
            return "shard index checksum mismatch"
        if shard_size < self.written_bytes:
            return f"shard truncated: {shard_size} of {self.written_bytes} bytes"
        return f"shard grew: {shard_size} bytes, {self.written_bytes} written"

    def _decode(self, chunk: bytes | memoryview, length: int) -> np.ndarray:
        """One slice from its stored bytes: length, then checksum, then Blosc, then decoded size."""
        if len(chunk) != length:
            raise _Damage(f"truncated: {len(chunk)} of the slice's {length} bytes")
        data = np.frombuffer(chunk, dtype=np.uint8)
        if self.chunk_checksum:
            data = _verified(data)
        try:
            raw = blosc.decompress(data)
        except RuntimeError:
            raise _Damage("Blosc cannot decode the slice") from None
        if len(raw) != self.slice_bytes:
            raise _Damage(f"slice decodes to {len(raw)} bytes, not {self.slice_bytes}")
        return np.frombuffer(raw, dtype=self.dtype).reshape(self.shape[1:])


# ----------------------------------------------------------------------------------- writing


def encode_shard(data: np.ndarray, cname: str, clevel: int, shuffle: str, checksum: bool = True) -> bytes:
    """The single shard of a `(z, y, x)` array: Blosc-compressed slices back to back, each followed
    by its CRC32C when `checksum` (chunk codecs `bytes, blosc, crc32c`), then the (offset, length)
    index and its CRC32C."""
    shuffles = {"noshuffle": blosc.NOSHUFFLE, "shuffle": blosc.SHUFFLE, "bitshuffle": blosc.BITSHUFFLE}
    data = np.ascontiguousarray(data, dtype=np.dtype(data.dtype).newbyteorder("<"))
    blobs = [blosc.compress(plane, cname.encode(), clevel, shuffles[shuffle]) for plane in data]
    if checksum:
        blobs = [blob + crc32c_bytes(blob) for blob in blobs]
    lengths = np.array([len(blob) for blob in blobs], dtype="<u8")
    index = np.stack([np.cumsum(lengths) - lengths, lengths], axis=1).astype("<u8").tobytes()
    return b"".join([*blobs, index, crc32c_bytes(index)])


def shard_attributes(shard: bytes) -> dict:
    """The array attributes that record what `write_shard` wrote, so a reader can tell a shard cut
    short from one whose index is damaged."""
    return {ATTRIBUTE_KEY: {"shard_bytes": len(shard)}}


def write_shard(array_dir: str | Path, shard: bytes) -> None:
    """Write `encode_shard`'s bytes as the single shard of the array whose zarr.json is in `array_dir`."""
    path = Path(array_dir) / "c" / "0" / "0" / "0"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(shard)
