"""storage.location: one small API over a local folder and an fsspec URL (here `memory://`, fsspec's
in-process filesystem; S3 itself is tested against a server in test_s3_store.py)."""

from __future__ import annotations

import os
import pickle
import uuid

import pytest

from storage.home import ray_storage, store_root
from storage.location import Location


@pytest.fixture
def memory_root() -> Location:
    return Location.of(f"memory://mvg-{uuid.uuid4().hex[:8]}/store")


def test_a_local_path_becomes_absolute_and_stays_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    location = Location.of("store") / "ct.zarr"
    assert location.is_local and location.url == str(tmp_path / "store" / "ct.zarr")
    assert os.fspath(location) == location.url and location.name == "ct.zarr"
    assert location.parent == Location.of(tmp_path / "store")
    assert Location.of(f"file://{tmp_path}") == Location.of(tmp_path)


def test_a_url_keeps_its_protocol_through_joins_parents_and_pickling(memory_root):
    case = memory_root / "ct.zarr" / "case_1"
    assert not case.is_local and case.url == f"{memory_root.url}/ct.zarr/case_1"
    assert case.parent.parent == memory_root and case.name == "case_1"
    assert pickle.loads(pickle.dumps(case)) == case
    with pytest.raises(TypeError, match="not a local path"):
        os.fspath(case)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_whole_writes_ranged_reads_listing_and_removal(where, tmp_path, memory_root):
    root = Location.of(tmp_path / "root") if where == "local" else memory_root
    blob = root / "a.zarr" / "c" / "0"
    blob.write_bytes(bytes(range(100)))
    assert blob.exists() and not blob.is_dir() and (root / "a.zarr").is_dir()
    assert blob.read_range(10, 5) == bytes(range(10, 15))
    assert blob.read_tail(3) == bytes([97, 98, 99])
    blob.write_bytes(b"new")
    assert blob.read_text() == "new"
    (root / "b.zarr" / "zarr.json").write_bytes(b"{}")
    (root / "loose.json").write_bytes(b"{}")
    assert [folder.name for folder in root.folders()] == ["a.zarr", "b.zarr"], "files are not folders"
    assert (root / "missing").folders() == []
    (root / "a.zarr").remove_tree()
    assert not blob.exists() and [folder.name for folder in root.folders()] == ["b.zarr"]
    if where == "local":
        assert sorted(os.listdir(root.url)) == ["b.zarr", "loose.json"], "no temporary file left by the atomic writes"


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640)], ids=["umask-022", "umask-027"])
def test_whole_writes_get_the_mode_the_umask_gives(tmp_path, mask, mode):
    """catalog.json and the other atomic writes read like any file the user writes, not 0600."""
    saved = os.umask(mask)
    try:
        catalog = Location.of(tmp_path / "ct.zarr" / "catalog.json")
        catalog.write_bytes(b"{}")
        catalog.write_bytes(b"{ }")  # replacing an existing file gives the same mode
    finally:
        os.umask(saved)
    assert os.stat(catalog.url).st_mode & 0o777 == mode


def test_an_unknown_protocol_names_the_url():
    with pytest.raises(ValueError, match="nosuch://bucket/x"):
        Location.of("nosuch://bucket/x")


def test_store_and_ray_storage_follow_their_variables_unless_a_home_is_given(tmp_path, monkeypatch):
    monkeypatch.setenv("MVG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MVG_STORE", raising=False)
    monkeypatch.delenv("MVG_RAY_STORAGE", raising=False)
    assert (store_root(), ray_storage()) == (str(tmp_path / "home" / "store"), str(tmp_path / "home" / "ray"))
    monkeypatch.setenv("MVG_STORE", "s3://bucket/mvg/store")
    monkeypatch.setenv("MVG_RAY_STORAGE", "s3://bucket/mvg/ray")
    assert (store_root(), ray_storage()) == ("s3://bucket/mvg/store", "s3://bucket/mvg/ray")
    assert store_root(tmp_path / "other") == str(tmp_path / "other" / "store")
