"""Ray Train overhead: episodes/s of `tiny-cpu` through Ray Train beside the same loop in plain
PyTorch in one process, all in one run, at equal total cores and equal global batch.

    python -m benchmarks.train [--steps 130] [--warmup 30] [--out benchmarks/results/train.json]

- plain:        `mvg.train.train` in this process, torch using every core;
- ray-1x<N>:    one Ray Train worker with every core;
- ray-<N>x1:    one worker per core, DDP over gloo, the global batch split between them.
Every variant checkpoints every 50 steps (to disk, or through `ray.train.report`). Throughput is
rank 0's steady state: the episodes of the steps after `warmup`, over their wall time (checkpoints
included), from per-step timestamps. Ray's start-up (cluster, workers, process group) is reported
apart, because a real run pays it once.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import torch

from benchmarks.common import machine, scratch, write_result
from benchmarks.model import build_stores
from mvg.config import MVGConfig, preset
from mvg.distributed import RAY_ENV, Scaling, TrainJob, fit
from mvg.train import train

CHECKPOINT_EVERY = 50


def step_recorder(log: Path):
    """An `on_step` hook (it runs inside Ray workers): rank 0 appends "step time max_rss_mb"."""

    def on_step(step: int, rank: int) -> None:
        if rank == 0:
            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            with open(log, "a") as file:
                file.write(f"{step} {time.time()} {rss_mb}\n")

    return on_step


def steady_state(log: Path, warmup: int, global_batch: int) -> dict:
    rows = [line.split() for line in log.read_text().splitlines()]
    times = {int(step): float(at) for step, at, _ in rows}
    last = max(times)
    elapsed = times[last] - times[warmup]
    return {
        "episodes_per_s": global_batch * (last - warmup) / elapsed,
        "steps_measured": last - warmup,
        "peak_rss_mb_rank0": max(float(rss) for *_, rss in rows),
    }


def run_plain(config: MVGConfig, store: Path, work: Path, warmup: int) -> dict:
    log = work / "plain.log"
    log.unlink(missing_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    hook = step_recorder(log)
    train(config, [store], checkpoint_dir=work / "plain-checkpoint", checkpoint_every=CHECKPOINT_EVERY, log_every=1,
          on_log=lambda row: hook(row["step"], 0))
    return steady_state(log, warmup, config.optim.batch_size)


def run_ray(config: MVGConfig, store: Path, work: Path, warmup: int, workers: int, cpus: int, gpus: float = 0.0) -> dict:
    name = f"ray-{workers}x{cpus}" + ("-gpu" if gpus else "")
    log = work / f"{name}.log"
    log.unlink(missing_ok=True)
    per_worker = config.with_overrides(optim={"batch_size": config.optim.batch_size // workers})
    job = TrainJob(per_worker, (str(store),), f"{name}-{time.time_ns()}", str(work / "ray"), Scaling(workers, gpus, cpus),
                   checkpoint_every=CHECKPOINT_EVERY, log_every=CHECKPOINT_EVERY, sample_every=0)
    started = time.time()
    fit(job, on_step=step_recorder(log))
    first_step = float(log.read_text().splitlines()[0].split()[1])
    result = steady_state(log, warmup, config.optim.batch_size)
    result["startup_s"] = first_step - started
    return {name: result}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=130)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--work", type=Path, help="keep stores here (reused between runs)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train.json"))
    args = parser.parse_args(argv)
    import ray

    cores = os.cpu_count() or 1
    config = preset("tiny-cpu").with_overrides(optim={"steps": args.steps})
    with scratch(args.work, "mvg-bench-train-") as work:
        store = build_stores(work, size=80, cases=6, slices=16)
        plain = run_plain(config, store, work, args.warmup)
        print(f"plain: {plain['episodes_per_s']:.1f} episodes/s")
        ray.init(num_cpus=cores, runtime_env={"env_vars": RAY_ENV})
        variants = {}
        for workers, cpus in ((1, cores), (cores, 1)):
            variants.update(run_ray(config, store, work, args.warmup, workers, cpus))
            name = f"ray-{workers}x{cpus}"
            print(f"{name}: {variants[name]['episodes_per_s']:.1f} episodes/s, start-up {variants[name]['startup_s']:.1f} s")
        ray.shutdown()
    for result in variants.values():
        result["ratio_to_plain"] = result["episodes_per_s"] / plain["episodes_per_s"]
        result["overhead"] = 1 - result["ratio_to_plain"]
    write_result(
        args.out,
        {
            "machine": machine(),
            "preset": "tiny-cpu",
            "global_batch": config.optim.batch_size,
            "steps": args.steps,
            "warmup_steps": args.warmup,
            "checkpoint_every": CHECKPOINT_EVERY,
            "plain": plain,
            "ray": variants,
            "target": "Ray overhead under 15 % at equal total cores",
            "gpu": "large preset on GPU: not measured by this script yet",
        },
    )


if __name__ == "__main__":
    main()
