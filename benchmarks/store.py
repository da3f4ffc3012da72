"""An `s3://` store root beside a local one, same phantoms, same run: ingest, slice reads, episodes;
and what the slices' CRC32C checksums cost, a local store without them beside one with them.

    python -m benchmarks.store [--cases 6] [--size 256] [--slices 32] [--rounds 5] [--out benchmarks/results/store.json]

The S3 side is moto's standalone server on loopback (the test suite's), so its figures are the cost
of the S3 protocol and of one request per slice on this machine, not of a network: add your
store's first-byte latency (AWS in-region ~10-30 ms, MinIO on a LAN ~1 ms) per request to read them
for a real deployment. Figures:
- ingest:       cases/s through `storage.ingest.ingest` with 2 Dask workers, local vs uploaded;
- open:         seconds to open every case's slice readers: reading shard indexes, and for
                `s3_cached` copying each shard to the local cache (`MVG_CACHE`) once;
- slice_reads:  random (image, target) slice pairs per second, one thread and 8 threads (the way
                several DataLoader workers overlap their requests); `*_zarr_*`: the same pairs read by
                zarr-python itself (`array[index]`), the baseline `storage.shards.SliceReader` exists
                to beat (`fast_reader_vs_zarr`: its reads per zarr-python's, local and S3 direct);
- episodes:     `EpisodeSampler.sample` per second (tiny-cpu's episodes).
Readers: `local` (the baseline), `s3_cached` (the default: shards copied to local disk on first
use) and `s3_direct` (`MVG_CACHE=off`: one ranged GET per slice).

The checksum figures (`checksum`) compare two local stores of the same phantoms, written with
`Codec(checksum=False)` (Blosc only, as stores were before) and with the default `Codec()` (Blosc,
then a CRC32C per slice), in `--rounds` interleaved rounds of each, reporting the median:
- ingest_cases_per_s:   the whole ingest, 2 Dask workers, cluster already up;
- encode_mb_per_s:      `encode_shard` alone (compress + checksum) on the stored volumes, MB/s of voxels;
- slice_reads_per_s:    random (image, target) slice pairs from open readers, 1 thread;
- volume_reads_per_s:   `read_volume` of every case (the evaluation's read);
- png_slice_reads_per_s: the same random pairs decoded from a PNG-per-slice export of the same
                        slices (8-bit images, labels as stored), the read path's yardstick.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import machine, scratch, write_result
from benchmarks.png_baseline import export_pngs, read_png
from mvg.config import preset
from mvg.episodes import EpisodeSampler
from storage.ingest import IngestOptions, dask_client, ingest
from storage.layouts import plan_dataset
from storage.phantoms import write_phantoms
from storage.shards import encode_shard
from storage.store import Codec, ZarrStore
from tests.servers import s3_server

TASKS = ("segmentation", "synthesis")
CHECKSUM_VARIANTS = {"without": Codec(checksum=False), "with": Codec()}


def ingest_rate(sources: list[Path], root: str, size: int) -> dict:
    """Cases/s of a whole ingest (cluster start excluded) into `root`."""
    with dask_client(workers=2) as client:  # started here, so its workers see the S3 variables
        return timed_ingest(client, sources, root, IngestOptions(size=size))


def timed_ingest(client, sources: list[Path], root: str, options: IngestOptions) -> dict:
    started, cases = time.perf_counter(), 0
    for source in sources:
        report = ingest(plan_dataset(source), root, client, options)
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


def zarr_slice_read_rate(slices: list, reads: int, threads: int) -> float:
    """The same random pairs as `slice_read_rate`, read by zarr-python itself (`array[index]` on
    the case's arrays, opened once, as `SliceReader`s are): the baseline `storage.shards` must beat."""
    arrays = {}
    for dataset, case, _ in slices:
        if (dataset.name, case) not in arrays:
            arrays[dataset.name, case] = [dataset.array(case, role) for role in ("image", "target")]
    picks = random.Random(0).choices(slices, k=reads)

    def read(pick) -> None:
        for array in arrays[pick[0].name, pick[1]]:
            if array is not None:
                array[pick[2]]

    started = time.perf_counter()
    if threads == 1:
        for pick in picks:
            read(pick)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(read, picks))
    return reads / (time.perf_counter() - started)


def volume_read_rate(store: ZarrStore) -> float:
    """Whole cases (every role) per second through `read_volume`."""
    started, cases = time.perf_counter(), 0
    for name in store.datasets():
        dataset = store.dataset(name)
        for case in dataset.cases():
            dataset.read_volume(case)
            cases += 1
    return cases / (time.perf_counter() - started)


def encode_rate(store: ZarrStore, codec: Codec) -> float:
    """MB/s of voxels through `encode_shard` (Blosc, and the CRC32C when the codec has it)."""
    volumes = [array for name in store.datasets() for case in store.dataset(name).cases()
               for array in vars(store.dataset(name).read_volume(case)).values() if array is not None]
    started = time.perf_counter()
    for volume in volumes:
        encode_shard(volume, codec.cname, codec.clevel, codec.shuffle, codec.checksum)
    return sum(volume.nbytes for volume in volumes) / 1e6 / (time.perf_counter() - started)


def png_read_rate(slices: list, reads: int, png_root: Path) -> float:
    """The same random pairs as `slice_read_rate`, decoded from the PNG export."""
    picks = random.Random(0).choices(slices, k=reads)
    started = time.perf_counter()
    for dataset, case, index in picks:
        for role in ("image", "target"):
            read_png(png_root, dataset.name, case, index, role)
    return reads / (time.perf_counter() - started)


def checksum_cost(sources: list[Path], work: Path, size: int, reads: int, rounds: int) -> dict:
    """Stores without and with slice checksums, same phantoms, `rounds` interleaved rounds of each
    figure (the median kept: the machine may be shared); then the read path beside PNG decoding."""
    figures: dict[str, dict[str, list[float]]] = {}

    def measured(figure: str, variant: str, value: float) -> None:
        figures.setdefault(figure, {}).setdefault(variant, []).append(value)

    stores = {}
    with dask_client(workers=2) as client:
        for round_ in range(rounds):
            for variant, codec in CHECKSUM_VARIANTS.items():
                root = work / f"checksum-{variant}-{round_}"
                measured("ingest_cases_per_s", variant, timed_ingest(client, sources, str(root), IngestOptions(size=size, codec=codec))["cases_per_s"])
                stores[variant] = ZarrStore(root)
    slices = {variant: open_readers(store)[1] for variant, store in stores.items()}
    for _ in range(rounds):
        for variant, codec in CHECKSUM_VARIANTS.items():
            measured("encode_mb_per_s", variant, encode_rate(stores[variant], codec))
            measured("slice_reads_per_s", variant, slice_read_rate(slices[variant], reads, threads=1))
            measured("volume_reads_per_s", variant, volume_read_rate(stores[variant]))
    results = {
        figure: {variant: statistics.median(values) for variant, values in by_variant.items()} | {"rounds": by_variant}
        for figure, by_variant in figures.items()
    }
    for figure in results.values():
        figure["change"] = figure["with"] / figure["without"] - 1
    export_pngs(stores["with"].root, work / "png")
    png = statistics.median(png_read_rate(slices["with"], reads, work / "png") for _ in range(rounds))
    results["png_slice_reads_per_s"] = png
    results["store_with_checksums_vs_png"] = results["slice_reads_per_s"]["with"] / png
    return results


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
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of each checksum figure (median kept)")
    parser.add_argument("--checksum-reads", type=int, default=4000, help="random slice pairs per checksum read figure")
    parser.add_argument("--note", default="", help="recorded with the results, e.g. what else ran on the machine")
    parser.add_argument("--work", type=Path, help="keep inputs here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/store.json"))
    args = parser.parse_args()

    with scratch(args.work, "mvg-bench-store-") as work:
        sources = [write_phantoms(t, work / f"phantom-{t}", cases=args.cases, seed=0, size=args.size, slices=args.slices) for t in TASKS]
        local_root = str(work / f"local-{uuid.uuid4().hex[:6]}")
        checksum = checksum_cost(sources, work, args.size, args.checksum_reads, args.rounds)
        print("checksum", {figure: values if not isinstance(values, dict) else {k: v for k, v in values.items() if k != "rounds"}
                           for figure, values in checksum.items()})
        with s3_server(work) as environment:
            os.environ.update(environment)
            import s3fs

            bucket = f"mvg-bench-{uuid.uuid4().hex[:8]}"
            s3fs.S3FileSystem().mkdir(bucket)
            s3_root = f"s3://{bucket}/store"
            results: dict = {"machine": machine(), "data": {"tasks": TASKS, "cases_per_task": args.cases, "size": args.size, "slices": args.slices}}
            if args.note:
                results["note"] = args.note
            results["checksum"] = checksum
            results["ingest"] = {"local": ingest_rate(sources, local_root, args.size), "s3": ingest_rate(sources, s3_root, args.size)}
            for section in ("open_s", "slice_reads_per_s", "episodes_per_s"):
                results[section] = {}
            readers = (("local", local_root, "off"), ("s3_direct", s3_root, "off"), ("s3_cached", s3_root, str(work / "cache")))
            for name, root, cache in readers:
                os.environ["MVG_CACHE"] = cache
                results["open_s"][name], slices = open_readers(ZarrStore(root))
                for threads in (1, 8):
                    suffix = f"{threads}_thread{'s' if threads > 1 else ''}"
                    fast = results["slice_reads_per_s"][f"{name}_{suffix}"] = slice_read_rate(slices, args.reads, threads)
                    if name != "s3_cached":  # zarr-python has no shard cache: on S3 it reads as s3_direct does
                        zarr_rate = results["slice_reads_per_s"][f"{name}_zarr_{suffix}"] = zarr_slice_read_rate(slices, args.reads, threads)
                        results.setdefault("fast_reader_vs_zarr", {})[f"{name}_{suffix}"] = fast / zarr_rate
                results["episodes_per_s"][name] = episode_rate(root, args.episodes)
            results["s3_direct_ms_per_slice_pair"] = 1000 / results["slice_reads_per_s"]["s3_direct_1_thread"]
    for section in ("ingest", "open_s", "slice_reads_per_s", "fast_reader_vs_zarr", "episodes_per_s"):
        print(section, results[section])
    write_result(args.out, results)


if __name__ == "__main__":
    main()
