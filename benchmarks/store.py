"""An `s3://` store root beside a local one, same phantoms, same run: ingest, slice reads, episodes.

    python -m benchmarks.store [--cases 6] [--size 256] [--slices 32] [--out benchmarks/results/store.json]

The S3 side is moto's standalone server on loopback (the test suite's), so its figures are the cost
of the S3 protocol and of one request per slice on this machine, not of a network: add your
store's first-byte latency (AWS in-region ~10-30 ms, MinIO on a LAN ~1 ms) per request to read them
for a real deployment. Figures:
- ingest:       cases/s through `storage.ingest.ingest` with 2 Dask workers, local vs uploaded;
- open:         seconds to open every case's slice readers: reading shard indexes, and for
                `s3_cached` copying each shard to the local cache (`MVG_CACHE`) once;
- slice_reads:  random (image, target) slice pairs per second, one thread and 8 threads (the way
                several DataLoader workers overlap their requests);
- episodes:     `EpisodeSampler.sample` per second (tiny-cpu's episodes).
Readers: `local` (the baseline), `s3_cached` (the default: shards copied to local disk on first
use) and `s3_direct` (`MVG_CACHE=off`: one ranged GET per slice).
"""

from __future__ import annotations

import argparse
import os
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import machine, scratch, write_result
from mvg.config import preset
from mvg.episodes import EpisodeSampler
from storage.ingest import IngestOptions, dask_client, ingest
from storage.layouts import plan_dataset
from storage.phantoms import write_phantoms
from storage.store import ZarrStore
from tests.servers import s3_server

TASKS = ("segmentation", "synthesis")


def ingest_rate(sources: list[Path], root: str, size: int) -> dict:
    """Cases/s of a whole ingest (cluster start excluded) into `root`."""
    with dask_client(workers=2) as client:  # started here, so its workers see the S3 variables
        started, cases = time.perf_counter(), 0
        for source in sources:
            report = ingest(plan_dataset(source), root, client, IngestOptions(size=size))
            assert not report.failed, [r.reason for r in report.failed]
            cases += len(report.results)
        seconds = time.perf_counter() - started
    return {"cases": cases, "seconds": seconds, "cases_per_s": cases / seconds}


def open_readers(store: ZarrStore) -> tuple[float, list]:
    """Seconds to open every case's slice readers, and every (dataset, case, slice) of the store."""
    started, slices = time.perf_counter(), []
    for name in store.datasets():
        dataset = store.dataset(name)
        for case in dataset.cases():
            dataset.read_slice(case, 0)
            slices += [(dataset, case, index) for index in range(dataset.record(case).slices)]
    return time.perf_counter() - started, slices


def slice_read_rate(slices: list, reads: int, threads: int) -> float:
    """Random (image, target) slice pairs per second from readers already open."""
    picks = random.Random(0).choices(slices, k=reads)
    started = time.perf_counter()
    if threads == 1:
        for dataset, case, index in picks:
            dataset.read_slice(case, index)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda pick: pick[0].read_slice(pick[1], pick[2]), picks))
    return reads / (time.perf_counter() - started)


def episode_rate(root: str, episodes: int) -> float:
    config = preset("tiny-cpu")
    sampler = EpisodeSampler([root], config.data, config.objective, seed=0)
    for _ in range(episodes):  # steady state: every case's readers open (a training run's normal)
        sampler.sample()
    started = time.perf_counter()
    for _ in range(episodes):
        sampler.sample()
    return episodes / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--reads", type=int, default=400)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--work", type=Path, help="keep inputs here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/store.json"))
    args = parser.parse_args()

    with scratch(args.work, "mvg-bench-store-") as work:
        sources = [write_phantoms(t, work / f"phantom-{t}", cases=args.cases, seed=0, size=args.size, slices=args.slices) for t in TASKS]
        local_root = str(work / f"local-{uuid.uuid4().hex[:6]}")
        with s3_server(work) as environment:
            os.environ.update(environment)
            import s3fs

            bucket = f"mvg-bench-{uuid.uuid4().hex[:8]}"
            s3fs.S3FileSystem().mkdir(bucket)
            s3_root = f"s3://{bucket}/store"
            results: dict = {"machine": machine(), "data": {"tasks": TASKS, "cases_per_task": args.cases, "size": args.size, "slices": args.slices}}
            results["ingest"] = {"local": ingest_rate(sources, local_root, args.size), "s3": ingest_rate(sources, s3_root, args.size)}
            for section in ("open_s", "slice_reads_per_s", "episodes_per_s"):
                results[section] = {}
            readers = (("local", local_root, "off"), ("s3_direct", s3_root, "off"), ("s3_cached", s3_root, str(work / "cache")))
            for name, root, cache in readers:
                os.environ["MVG_CACHE"] = cache
                results["open_s"][name], slices = open_readers(ZarrStore(root))
                for threads in (1, 8):
                    results["slice_reads_per_s"][f"{name}_{threads}_thread{'s' if threads > 1 else ''}"] = slice_read_rate(slices, args.reads, threads)
                results["episodes_per_s"][name] = episode_rate(root, args.episodes)
            results["s3_direct_ms_per_slice_pair"] = 1000 / results["slice_reads_per_s"]["s3_direct_1_thread"]
    for section in ("ingest", "open_s", "slice_reads_per_s", "episodes_per_s"):
        print(section, results[section])
    write_result(args.out, results)


if __name__ == "__main__":
    main()
