"""The fast slice reader agrees with zarr-python on every slice, empty ones included."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from storage.catalog import CaseRecord
from storage.geometry import planar_geometry
from storage.shards import CorruptShard, SliceReader, UnsupportedLayout
from storage.specs import DatasetSpec
from storage.store import Codec, StoredDataset, prepare_dataset, write_case


def record(case: str, depth: int, roles: list[str]) -> CaseRecord:
    return CaseRecord(
        case=case, split="train", slices=depth, shape=(depth, 24, 32), roles=roles, checksum="x", sources=[],
        geometry=planar_geometry((depth, 24, 32)).to_dict(), spacing=(1.0, 1.0, 1.0), intensity={},
    )


@pytest.fixture
def stored(tmp_path):
    spec = DatasetSpec("shards", "shards", "test", "CT", "segmentation", "manifest", {1: "a", 2: "b"}, "ct")
    directory = prepare_dataset(tmp_path, spec)
    rng = np.random.default_rng(0)
    image = rng.random((9, 24, 32)).astype(np.float16)
    labels = np.zeros((9, 24, 32), np.uint8)
    labels[3:6, 5:15, 4:20] = rng.integers(1, 3, (3, 10, 16))  # slices 0-2 and 6-8 stay empty (unwritten chunks)
    write_case(directory, record("c1", 9, ["image", "target"]), {"image": image, "target": labels})
    write_case(directory, record("blank", 4, ["image", "target"]), {"image": np.zeros((4, 24, 32), np.float16), "target": np.zeros((4, 24, 32), np.uint8)})
    return directory, image, labels


@pytest.mark.parametrize("codec", [Codec(), Codec("zstd", 1, "bitshuffle")])
def test_every_slice_matches_zarr(tmp_path, codec):
    spec = DatasetSpec("codecs", "codecs", "test", "CT", "segmentation", "manifest")
    directory = prepare_dataset(tmp_path, spec)
    data = np.random.default_rng(1).random((5, 24, 32)).astype(np.float16)
    data[2] = 0
    write_case(directory, record("c", 5, ["image"]), {"image": data}, codec)
    reader = SliceReader(directory / "c" / "image" / "0")
    reference = zarr.open_array(str(directory / "c" / "image" / "0"), mode="r")
    for z in range(5):
        assert np.array_equal(reader.read(z), reference[z]) and np.array_equal(reader.read(z), data[z])
    assert np.array_equal(reader.read(-1), data[4])
    with pytest.raises(IndexError):
        reader.read(5)


def test_dataset_slices_equal_volume_slices(stored):
    directory, image, labels = stored
    dataset = StoredDataset(directory)
    volume = dataset.read_volume("c1")
    for z in range(9):
        sample = dataset.read_slice("c1", z)
        assert sample.image.dtype == np.float16 and np.array_equal(sample.image, volume.image[z])
        assert np.array_equal(sample.target, labels[z]) and sample.target.dtype == np.uint8
    assert isinstance(dataset.slice_reader("c1", "image"), SliceReader)


def test_blank_cases_and_unwritten_shards_read_as_fill_value(stored, tmp_path):
    directory, _, _ = stored
    assert np.array_equal(StoredDataset(directory).read_slice("blank", 2).target, np.zeros((24, 32), np.uint8))
    # zarr-python skips shards that are all fill value; the reader must cope with their absence
    from zarr.codecs import BloscCodec

    never_written = zarr.create_array(
        str(tmp_path / "never"), shape=(3, 8, 8), chunks=(1, 8, 8), shards=(3, 8, 8), dtype="u1", fill_value=0,
        compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=1),
    )
    never_written[...] = 0
    reader = SliceReader(tmp_path / "never")
    assert not reader.shard_path.exists()
    assert np.array_equal(reader.read(1), np.zeros((8, 8), np.uint8))


def test_zarr_reads_what_write_shard_wrote_with_its_index_checksum(stored):
    directory, image, labels = stored
    for role, expected in (("image", image), ("target", labels)):
        array = zarr.open_array(str(directory / "c1" / role / "0"), mode="r")
        assert np.array_equal(array[...], expected)


def test_other_layouts_are_refused_and_fall_back(tmp_path):
    plain = zarr.create_array(str(tmp_path / "plain"), shape=(3, 8, 8), chunks=(1, 8, 8), dtype="f2")
    plain[...] = 1
    with pytest.raises(UnsupportedLayout):
        SliceReader(tmp_path / "plain")


# ------------------------------------------------------------------------------ damaged shards


def shard_file(directory, case: str, role: str) -> Path:
    return Path(directory / case / role / "0" / "c" / "0" / "0" / "0")


def flip_bit(path, byte: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[byte] ^= 1 << bit
    path.write_bytes(bytes(data))


def slice_range(reader: SliceReader, index: int) -> tuple[int, int]:
    offset, length = (int(v) for v in reader._offsets()[index])
    return offset, length


def test_slices_and_the_index_carry_checksums_zarr_checks_too(stored):
    directory, image, _ = stored
    reader = StoredDataset(directory).slice_reader("c1", "image")
    assert reader.chunk_checksum and reader.written_bytes == shard_file(directory, "c1", "image").stat().st_size
    offset, length = slice_range(reader, 4)
    flip_bit(shard_file(directory, "c1", "image"), offset + length // 2)
    array = zarr.open_array(str(directory / "c1" / "image" / "0"), mode="r")
    with pytest.raises(ValueError, match="checksum"):
        array[4]
    assert np.array_equal(array[3], image[3])


def test_a_flipped_bit_in_a_slice_is_caught_and_named(stored):
    directory, image, _ = stored
    reader = SliceReader(directory / "c1" / "image" / "0")
    offset, length = slice_range(reader, 7)
    flip_bit(shard_file(directory, "c1", "image"), offset + length // 3, bit=5)
    dataset = StoredDataset(directory)
    with pytest.raises(CorruptShard, match=r"^shards/c1/image slice 7: checksum mismatch \(shard .*c1/image/0/c/0/0/0\)$"):
        dataset.read_slice("c1", 7)
    with pytest.raises(CorruptShard, match=r"^shards/c1/image slice 7: checksum mismatch"):
        dataset.read_volume("c1")
    assert np.array_equal(dataset.read_slice("c1", 6).image, image[6]), "the other slices still read"


def test_a_flipped_bit_in_the_index_is_caught_and_named(stored):
    directory, _, _ = stored
    path = shard_file(directory, "c1", "target")
    flip_bit(path, path.stat().st_size - 20, bit=3)  # inside the (offset, length) table
    dataset = StoredDataset(directory)
    with pytest.raises(CorruptShard, match=r"^shards/c1/target slice 2: shard index checksum mismatch \(shard "):
        dataset.read_slice("c1", 2)
    with pytest.raises(CorruptShard, match=r"^shards/c1/target: shard index checksum mismatch"):
        dataset.read_volume("c1")


def test_a_truncated_shard_is_named_not_a_memory_error(stored):
    directory, _, _ = stored
    path = shard_file(directory, "c1", "image")
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2])
    dataset = StoredDataset(directory)
    with pytest.raises(CorruptShard, match=rf"^shards/c1/image slice 0: shard truncated: {size // 2} of {size} bytes \(shard "):
        dataset.read_slice("c1", 0)
    path.write_bytes(b"\0" * 10)  # shorter than the index itself
    with pytest.raises(CorruptShard, match=r"shards/c1/image: shard truncated: 10 bytes, shorter than its"):
        StoredDataset(directory).read_volume("c1")


def test_every_single_bit_flip_anywhere_in_a_shard_is_caught(tmp_path):
    """Blosc-lz4 alone let most single-bit flips through as wrong voxels; CRC32C catches them all."""
    spec = DatasetSpec("flips", "flips", "test", "CT", "segmentation", "manifest")
    directory = prepare_dataset(tmp_path, spec)
    write_case(directory, record("c", 4, ["image"]), {"image": np.random.default_rng(2).random((4, 24, 32)).astype(np.float16)})
    path = shard_file(directory, "c", "image")
    intact = path.read_bytes()
    rng = np.random.default_rng(3)
    for position in rng.choice(len(intact) * 8, size=320, replace=False):
        path.write_bytes(intact)
        flip_bit(path, int(position) // 8, int(position) % 8)
        with pytest.raises(CorruptShard):
            SliceReader(directory / "c" / "image" / "0").read_volume()
    path.write_bytes(intact)
    assert SliceReader(directory / "c" / "image" / "0").damage() == []


def test_stores_written_before_checksums_still_read(tmp_path):
    spec = DatasetSpec("legacy", "legacy", "test", "CT", "segmentation", "manifest")
    directory = prepare_dataset(tmp_path, spec)
    data = np.random.default_rng(4).random((3, 24, 32)).astype(np.float16)
    write_case(directory, record("old", 3, ["image"]), {"image": data}, Codec(checksum=False))
    metadata = json.loads((directory / "old" / "image" / "0" / "zarr.json").read_text())
    assert [c["name"] for c in metadata["codecs"][0]["configuration"]["codecs"]] == ["bytes", "blosc"]
    reader = StoredDataset(directory).slice_reader("old", "image")
    assert isinstance(reader, SliceReader) and not reader.chunk_checksum
    assert np.array_equal(reader.read(1), data[1]) and np.array_equal(StoredDataset(directory).read_volume("old").image, data)
    path = shard_file(directory, "old", "image")
    flip_bit(path, path.stat().st_size - 20)  # their index has always had its checksum
    with pytest.raises(CorruptShard, match="shard index checksum mismatch"):
        StoredDataset(directory).read_slice("old", 0)
