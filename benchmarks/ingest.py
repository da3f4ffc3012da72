"""Ingest throughput and random slice reads, each beside its baseline measured in the same run.

    python -m benchmarks.ingest [--cases 20] [--size 512] [--slices 100] [--out benchmarks/results/ingest.json]

Figures (decoded-voxel MB/s = bytes of decoded source image + label voxels per second):
- limit:       nibabel decode alone, one process (the per-worker yardstick);
- our readers: our NIfTI reader alone (ISA-L inflate + reorientation), to show how much of ingest's
               margin over the limit comes from the faster decoder;
- png_export:  what Painter-style code does, decode -> normalise -> one PNG per slice (image + label);
- ingest_wN:   our ingest (decode, validate, normalise, float16, shards in the store's codec --
               Blosc-lz4, storage/store.py -- publish) with N Dask workers, cluster already up;
- reads:       random single-slice (image + target) reads per second from the store vs decoding the
               same slices from the PNG export.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from benchmarks.common import machine, scratch, write_result
from storage.ingest import DEFAULT_SIZE, IngestOptions, dask_client, ingest
from storage.layouts import plan_dataset
from storage.phantoms import write_phantoms
from storage.preprocess import ct_window
from storage.store import ZarrStore


def decode_only(cases) -> tuple[float, int]:
    started = time.perf_counter()
    total = 0
    for case in cases:
        for file in (case.channels[0].path, case.label.path):
            total += np.asanyarray(nib.load(file).dataobj).nbytes
    return time.perf_counter() - started, total


def our_decode(cases) -> float:
    """Our readers alone (ISA-L inflate + reorientation): how much of the gain is the decoder's."""
    from storage.readers import read_scan

    started = time.perf_counter()
    for case in cases:
        read_scan(case.channels[0].path), read_scan(case.label.path)
    return time.perf_counter() - started


def png_export(cases, out: Path) -> float:
    """Painter-style preprocessing: every slice of image and label written as an 8-bit PNG."""
    started = time.perf_counter()
    window = ct_window()
    for case in cases:
        image = np.asanyarray(nib.load(case.channels[0].path).dataobj)
        labels = np.asanyarray(nib.load(case.label.path).dataobj)
        image8 = (window.apply(image) * 255).astype(np.uint8)
        folder = out / case.case
        folder.mkdir(parents=True)
        for z in range(image.shape[2]):
            Image.fromarray(image8[:, :, z]).save(folder / f"{z:04d}_image.png")
            Image.fromarray(labels[:, :, z].astype(np.uint8)).save(folder / f"{z:04d}_label.png")
    return time.perf_counter() - started


def timed_ingest(plan, store: Path, workers: int, size: int) -> tuple[float, float, dict]:
    started = time.perf_counter()
    with dask_client(workers=workers) as client:
        client.wait_for_workers(workers)
        ready = time.perf_counter()
        report = ingest(plan, store, client, IngestOptions(size=size))
        finished = time.perf_counter()
    assert not report.failed, [r.reason for r in report.failed]
    return finished - ready, ready - started, report.counts()


def random_reads(store: Path, dataset: str, png_root: Path, samples: int, seed: int = 0) -> dict:
    stored = ZarrStore(store).dataset(dataset)
    cases = stored.cases()
    rng = random.Random(seed)
    picks = [(c, rng.randrange(stored.record(c).slices)) for c in (rng.choice(cases) for _ in range(samples))]
    for case in cases:  # open the readers (shard indexes) once, as a training loader does
        stored.slice_reader(case, "image"), stored.slice_reader(case, "target")

    started = time.perf_counter()
    for case, z in picks:
        stored.read_slice(case, z)
    store_s = time.perf_counter() - started

    started = time.perf_counter()
    for case, z in picks:
        np.asarray(Image.open(png_root / case / f"{z:04d}_image.png"))
        np.asarray(Image.open(png_root / case / f"{z:04d}_label.png"))
    png_s = time.perf_counter() - started
    return {
        "samples": samples,
        "store_slices_per_s": samples / store_s,
        "png_slices_per_s": samples / png_s,
        "ratio": png_s / store_s,
        "target_ratio": 3.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ingest.json"))
    args = parser.parse_args()

    with scratch(args.work, "mvg-bench-") as work:
        source = work / "phantoms"
        if not (source / "dataset.json").exists():
            print(f"writing {args.cases} phantom volumes {args.size}x{args.size}x{args.slices} ...")
            write_phantoms("segmentation", source, cases=args.cases, seed=0, size=args.size, slices=args.slices)
        plan = plan_dataset(source)
        decode_s, decoded = decode_only(plan.cases)
        mb = decoded / 1e6
        results: dict = {
            "machine": machine(),
            "dataset": {"cases": args.cases, "shape": [args.size, args.size, args.slices], "decoded_mb": mb},
            "limit_decode_only": {"seconds": decode_s, "mb_per_s": mb / decode_s},
        }
        print(f"decode only: {mb / decode_s:.0f} MB/s")
        ours_s = our_decode(plan.cases)
        results["our_readers_alone"] = {"seconds": ours_s, "mb_per_s": mb / ours_s, "vs_limit": decode_s / ours_s}
        print(f"our readers: {mb / ours_s:.0f} MB/s (ISA-L inflate)")
        png_root = work / "png"
        png_s = png_export(plan.cases, png_root)
        results["baseline_png_export"] = {"seconds": png_s, "mb_per_s": mb / png_s}
        print(f"png export:  {mb / png_s:.0f} MB/s")
        for workers in (1, 2):
            store = work / f"store-w{workers}"
            seconds, startup, counts = timed_ingest(plan, store, workers, args.size)
            rate = mb / seconds
            results[f"ingest_w{workers}"] = {
                "workers": workers,
                "seconds": seconds,
                "cluster_startup_s": startup,
                "mb_per_s": rate,
                "mb_per_s_per_worker": rate / workers,
                "per_worker_vs_limit": rate / workers / results["limit_decode_only"]["mb_per_s"],
                "vs_png_export": rate / results["baseline_png_export"]["mb_per_s"],
                "counts": counts,
            }
            print(f"ingest x{workers}:   {rate:.0f} MB/s ({rate / workers:.0f} per worker)")
        results["targets"] = {
            "per_worker_vs_limit": 0.6,
            "vs_png_export": 2.0,
            "met_per_worker": all(results[f"ingest_w{w}"]["per_worker_vs_limit"] >= 0.6 for w in (1, 2)),
            "met_vs_png": results["ingest_w1"]["vs_png_export"] >= 2.0,
        }
        results["random_reads"] = random_reads(work / "store-w1", plan.spec.name, png_root, args.reads)
        print(f"reads: store {results['random_reads']['store_slices_per_s']:.0f}/s vs png {results['random_reads']['png_slices_per_s']:.0f}/s")
        write_result(args.out, results)


if __name__ == "__main__":
    main()
