"""`mvg store --verify` and the `verify-store` flow: every shard checked, the broken ones named,
the exit status says whether any is broken."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from storage.catalog import CaseRecord
from storage.geometry import planar_geometry
from storage.specs import DatasetSpec
from storage.store import Codec, prepare_dataset, write_case
from storage.verify import verify_store

SHAPE = (6, 16, 20)


def record(case: str, roles: list[str], split: str = "train") -> CaseRecord:
    return CaseRecord(
        case=case, split=split, slices=SHAPE[0], shape=SHAPE, roles=roles, checksum="x", sources=[],
        geometry=planar_geometry(SHAPE).to_dict(), spacing=(1.0, 1.0, 1.0), intensity={},
    )


def write_dataset(root: Path, name: str, cases: list[str], codec: Codec = Codec()) -> None:
    spec = DatasetSpec(name, name, "test", "CT", "segmentation", "manifest", {1: "a"}, "ct")
    directory = prepare_dataset(root, spec)
    rng = np.random.default_rng(len(name))
    for case in cases:
        arrays = {"image": rng.random(SHAPE).astype(np.float16), "target": rng.integers(0, 2, SHAPE).astype(np.uint8)}
        write_case(directory, record(case, list(arrays)), arrays, codec)


def shard(root: Path, dataset: str, case: str, role: str) -> Path:
    return root / f"{dataset}.zarr" / case / role / "0" / "c" / "0" / "0" / "0"


def flip_byte(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.fixture
def store(tmp_path) -> Path:
    root = tmp_path / "store"
    write_dataset(root, "alpha", ["a1", "a2"])
    write_dataset(root, "beta", ["b1"])
    return root


def test_an_intact_store_verifies_and_exits_0(store, capsys):
    assert main(["store", "--store", str(store), "--verify"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"verified 6 shard(s) of 2 dataset(s) in {store}: 0 broken"


def test_broken_shards_are_listed_by_name_and_exit_1(store, capsys):
    truncated = shard(store, "alpha", "a2", "image")
    truncated.write_bytes(truncated.read_bytes()[:100])
    flip_byte(shard(store, "beta", "b1", "target"), 40)  # inside slice 0's bytes
    assert main(["store", "--store", str(store), "--verify"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("alpha/a2/image: shard truncated: 100 of ") and str(truncated) in lines[0]
    assert lines[1].startswith("beta/b1/target slice 0: checksum mismatch (shard ")
    assert lines[2] == f"verified 6 shard(s) of 2 dataset(s) in {store}: 2 broken"

    assert main(["store", "--store", str(store), "--verify", "--datasets", "beta"]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith("of 1 dataset(s) in " + str(store) + ": 1 broken")
    assert main(["store", "--store", str(store), "--verify", "--datasets", "nope"]) == 2
    assert "has no dataset 'nope'" in capsys.readouterr().err


def test_an_index_flip_a_missing_shard_a_wrong_shape_and_bad_metadata_are_each_named(store):
    index_flipped = shard(store, "alpha", "a1", "target")
    flip_byte(index_flipped, index_flipped.stat().st_size - 10)
    shard(store, "alpha", "a2", "target").unlink()
    metadata_path = store / "beta.zarr" / "b1" / "image" / "0" / "zarr.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["shape"] = [SHAPE[0] - 1, *SHAPE[1:]]  # no longer what the case's record says
    metadata["chunk_grid"]["configuration"]["chunk_shape"] = metadata["shape"]
    metadata_path.write_text(json.dumps(metadata))
    (store / "beta.zarr" / "b1" / "target" / "0" / "zarr.json").write_text("{not json")
    check = verify_store(store)
    problems = {(s.dataset, s.case, s.role): s.problems for s in check.broken}
    assert set(problems) == {("alpha", "a1", "target"), ("alpha", "a2", "target"), ("beta", "b1", "image"), ("beta", "b1", "target")}
    assert problems["beta", "b1", "target"][0].startswith("beta/b1/target: unreadable array metadata (")
    assert problems["alpha", "a1", "target"][0].startswith("alpha/a1/target: shard index checksum mismatch (shard ")
    assert problems["alpha", "a2", "target"][0].startswith("alpha/a2/target: shard missing (")
    assert problems["beta", "b1", "image"][0] == "beta/b1/image: shape (5, 16, 20), the case's record says (6, 16, 20)"


def test_a_store_written_before_checksums_passes_with_a_note(tmp_path, capsys):
    root = tmp_path / "old-store"
    write_dataset(root, "old", ["o1"], Codec(checksum=False))
    assert main(["store", "--store", str(root), "--verify"]) == 0
    assert "0 broken; 2 written before slice checksums (index checked, slice bytes not: re-ingest to add them)" in capsys.readouterr().out


def test_preview_of_a_truncated_shard_names_the_case_instead_of_a_memory_error(store, tmp_path, capsys):
    path = shard(store, "alpha", "a1", "image")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert main(["store", "--store", str(store), "--preview", str(tmp_path / "previews")]) == 2
    assert "mvg store: error: alpha/a1/image slice 3: shard truncated: " in capsys.readouterr().err


@pytest.mark.slow
def test_the_verify_flow_fails_on_a_broken_shard(store, prefect_server):
    from flows.verify import BrokenShards, verify_store_flow

    assert verify_store_flow(store=str(store)) == {"store": str(store), "shards": 6, "broken": 0, "unchecksummed": 0}
    flip_byte(shard(store, "beta", "b1", "image"), 30)
    with pytest.raises(BrokenShards, match=r"1 broken:\nbeta/b1/image slice 0: checksum mismatch"):
        verify_store_flow(store=str(store), datasets=["beta"])


def test_the_next_ingest_rewrites_cases_stored_without_checksums(small_ct_dataset, tmp_path):
    from storage.ingest import IngestOptions, ingest_case
    from storage.layouts import plan_dataset

    plan = plan_dataset(small_ct_dataset)
    directory = prepare_dataset(tmp_path / "store", plan.spec)
    source = plan.cases[0]
    assert ingest_case(source, plan.spec, directory, options=IngestOptions(size=32, codec=Codec(checksum=False))).status == "ingested"
    assert verify_store(tmp_path / "store").unchecksummed
    assert ingest_case(source, plan.spec, directory, options=IngestOptions(size=32)).status == "ingested", "the recipe's codec changed"
    assert ingest_case(source, plan.spec, directory, options=IngestOptions(size=32)).status == "skipped"
    check = verify_store(tmp_path / "store")
    assert not check.unchecksummed and not check.broken and len(check.shards) == 2
