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

Any array that is not laid out as `storage.store.write_case` writes it is refused with
`UnsupportedLayout`; callers fall back to zarr-python. `tests/test_shards.py` checks slice for
slice against zarr-python, both ways, including the empty chunks zarr does not write.
"""

from __future__ import annotations

import json
from pathlib import Path

import google_crc32c
import numpy as np
from numcodecs import blosc

from storage.home import remote_cache
from storage.location import Location

EMPTY = np.iinfo(np.uint64).max  # offset and length of a chunk that was never written
CRC_BYTES = 4


class UnsupportedLayout(ValueError):
    """The array is not a one-shard, one-slice-per-chunk, Blosc-compressed Zarr v3 array."""


class SliceReader:
    """Reads (y, x) slices of one `(z, y, x)` array written as a single shard."""

    def __init__(self, array_dir: str | Path | Location):
        self.array_dir = Location.of(array_dir)
        metadata = json.loads((self.array_dir / "zarr.json").read_text())
        self.shape = tuple(metadata["shape"])
        self.dtype = np.dtype(metadata["data_type"])
        self.fill_value = metadata.get("fill_value", 0)
        self._check_layout(metadata)
        self.shard_path = self.array_dir / "c" / "0" / "0" / "0"
        cache = remote_cache()
        if not self.shard_path.is_local and cache is not None:
            try:
                self.shard_path = self.shard_path.cached_copy(cache)
            except FileNotFoundError:
                pass  # no shard: every slice is the fill value (below)
        self._index = self._read_index()

    def _check_layout(self, metadata: dict) -> None:
        codecs = metadata.get("codecs", [])
        sharding = codecs[0].get("configuration", {}) if len(codecs) == 1 and codecs[0]["name"] == "sharding_indexed" else None
        depth, height, width = self.shape
        grid = metadata.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape")
        encoding = metadata.get("chunk_key_encoding", {})
        if (
            sharding is None
            or grid != [depth, height, width]
            or sharding.get("chunk_shape") != [1, height, width]
            or sharding.get("index_location", "end") != "end"
            or [c["name"] for c in sharding.get("codecs", [])] != ["bytes", "blosc"]
            or [c["name"] for c in sharding.get("index_codecs", [])] != ["bytes", "crc32c"]
            or encoding.get("name") != "default"
            or encoding.get("configuration", {}).get("separator", "/") != "/"
            or (self.dtype.itemsize > 1 and sharding["codecs"][0].get("configuration", {}).get("endian", "little") != "little")
        ):
            raise UnsupportedLayout(f"{self.array_dir}: not a single-shard, slice-chunked Blosc array")

    def _read_index(self) -> np.ndarray | None:
        """(offset, length) per slice, from the index at the end of the shard; None when no shard
        was written (every slice equal to the fill value)."""
        count = self.shape[0]
        size = count * 16 + CRC_BYTES
        try:
            raw = self.shard_path.read_tail(size)
        except FileNotFoundError:
            return None
        return np.frombuffer(raw[: count * 16], dtype="<u8").reshape(count, 2)

    def read(self, index: int) -> np.ndarray:
        if not -self.shape[0] <= index < self.shape[0]:
            raise IndexError(f"{self.array_dir}: slice {index} out of range 0..{self.shape[0] - 1}")
        index %= self.shape[0]
        if self._index is None or self._index[index, 0] == EMPTY:
            return np.full(self.shape[1:], self.fill_value, dtype=self.dtype)
        offset, length = (int(v) for v in self._index[index])
        compressed = self.shard_path.read_range(offset, length)
        return np.frombuffer(blosc.decompress(compressed), dtype=self.dtype).reshape(self.shape[1:])


def write_shard(array_dir: str | Path, data: np.ndarray, cname: str, clevel: int, shuffle: str) -> None:
    """Write `data` (z, y, x) as the single shard of the array whose zarr.json is in `array_dir`:
    Blosc-compressed slices back to back, then the (offset, length) index and its CRC32C."""
    shuffles = {"noshuffle": blosc.NOSHUFFLE, "shuffle": blosc.SHUFFLE, "bitshuffle": blosc.BITSHUFFLE}
    data = np.ascontiguousarray(data, dtype=np.dtype(data.dtype).newbyteorder("<"))
    blobs = [blosc.compress(plane, cname.encode(), clevel, shuffles[shuffle]) for plane in data]
    lengths = np.array([len(blob) for blob in blobs], dtype="<u8")
    index = np.stack([np.cumsum(lengths) - lengths, lengths], axis=1).astype("<u8").tobytes()
    path = Path(array_dir) / "c" / "0" / "0" / "0"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        for blob in blobs:
            file.write(blob)
        file.write(index)
        file.write(google_crc32c.value(index).to_bytes(CRC_BYTES, "little"))
