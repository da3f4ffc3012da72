"""After an ingest is killed, a reader of the catalog sees every published case: a case is
published by its worker before its result reaches the catalog writer, so the saved catalog of an
unfinished ingest is not trusted; readers rebuild it from the cases' own records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage.catalog import Catalog, IncompleteCatalog
from storage.ingest import CatalogWriter, IngestOptions, ingest_case
from storage.layouts import plan_dataset
from storage.store import ZarrStore, dataset_dir
from tests.conftest import ct_case, write_nnunet

REPOSITORY = Path(__file__).resolve().parents[1]
SIZE = 16

# An ingest in a process of its own, one case at a time; the pause stands in for a case's work
# on real data, so that the test can kill it between cases.
SLOW_INGEST = """
import sys, time

from storage.ingest import CatalogWriter, IngestOptions, ingest_case
from storage.layouts import plan_dataset


def main(source, store):
    plan = plan_dataset(source)
    writer = CatalogWriter(store, plan)
    for case in plan.cases:
        writer.add(ingest_case(case, plan.spec, writer.directory, plan.declared_labels, IngestOptions(size=16)))
        time.sleep(0.4)
    writer.finish()


if __name__ == "__main__":
    main(*sys.argv[1:])
"""


@pytest.fixture
def many_cases(tmp_path) -> Path:
    return write_nnunet(tmp_path / "Dataset050_Killed", {f"k_{i:02d}": ct_case(i) for i in range(12)})


def published_cases(directory: Path) -> list[str]:
    """Cases whose record is in place: what a kill leaves published."""
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and (p / "zarr.json").exists())


def kill_after_published(process: subprocess.Popen, directory: Path, count: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not (directory.is_dir() and len(published_cases(directory)) >= count):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the ingest ended or stalled before publishing {count} cases: {process.communicate()}")
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def test_every_case_published_before_a_kill_is_in_the_catalog(many_cases, tmp_path):
    script = tmp_path / "slow_ingest.py"
    script.write_text(SLOW_INGEST)
    store = tmp_path / "store"
    process = subprocess.Popen(
        [sys.executable, str(script), str(many_cases), str(store)],
        cwd=REPOSITORY, env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    directory = Path(dataset_dir(store, "killed"))
    kill_after_published(process, directory, count=4)
    assert process.returncode == -signal.SIGKILL

    published = published_cases(directory)
    assert 4 <= len(published) < 12, "killed mid-ingest"
    assert ZarrStore(store).dataset("killed").cases() == published
    with pytest.raises(IncompleteCatalog):
        Catalog.load(directory)

    # the next ingest skips what was published and leaves a complete catalog
    plan = plan_dataset(many_cases)
    writer = CatalogWriter(store, plan)
    for case in plan.cases:
        writer.add(ingest_case(case, plan.spec, writer.directory, plan.declared_labels, IngestOptions(size=SIZE)))
    report = writer.finish()
    assert report.counts() == {"ingested": 12 - len(published), "skipped": len(published), "failed": 0}
    assert len(Catalog.load(directory).cases) == 12


def test_a_case_published_but_never_reported_is_read(many_cases, tmp_path):
    """The narrowest window: the worker published the case, the writer never heard of it."""
    plan = plan_dataset(many_cases)
    writer = CatalogWriter(tmp_path / "store", plan)
    first, second = plan.cases[:2]
    writer.add(ingest_case(first, plan.spec, writer.directory, plan.declared_labels, IngestOptions(size=SIZE)))
    ingest_case(second, plan.spec, writer.directory, plan.declared_labels, IngestOptions(size=SIZE))  # result lost
    writer.catalog.save(writer.directory)  # the writer's own view, saved, lists the first case alone
    assert ZarrStore(tmp_path / "store").dataset("killed").cases() == sorted([first.case, second.case])


def test_a_finished_ingest_leaves_a_catalog_readers_load_as_it_is(many_cases, tmp_path):
    plan = plan_dataset(many_cases)
    writer = CatalogWriter(tmp_path / "store", plan)
    for case in plan.cases[:3]:
        writer.add(ingest_case(case, plan.spec, writer.directory, plan.declared_labels, IngestOptions(size=SIZE)))
    writer.finish()
    catalog = Catalog.load(dataset_dir(tmp_path / "store", "killed"))
    assert catalog.complete and sorted(catalog.cases) == sorted(c.case for c in plan.cases[:3])
