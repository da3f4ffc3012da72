"""The fast slice reader agrees with zarr-python on every slice, empty ones included."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from storage.catalog import CaseRecord
from storage.geometry import planar_geometry
from storage.shards import SliceReader, UnsupportedLayout
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
