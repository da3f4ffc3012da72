"""Model figures, each beside its baseline measured in the same run.

    python -m benchmarks.model [--out benchmarks/results/model.json]

- train_step:  episodes/s of one `tiny-cpu` training step (forward, loss, backward, AdamW) on CPU,
               on batches drawn by the episode sampler from phantom stores of every task;
- loader:      episodes/s of the episode sampler reading the Zarr store against the same episodes
               (same draws, same crops) decoded from a Painter-style PNG-per-slice export, at the
               tiny preset's crop and at the paper's 448 px crop from a 512 px store; and the
               loader's rate against the training step's consumption;
- inference:   a 100-slice volume against one prompt, slices/s with the prompt cache (prompt keys
               and values computed once) against naive re-encoding of the prompt with every slice.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.common import machine, scratch, write_result
from benchmarks.png_baseline import PngEpisodeSource, export_pngs
from mvg.config import preset
from mvg.episodes import EpisodeSampler, collate
from mvg.model import MVG
from mvg.step import episode_losses
from storage.ingest import DEFAULT_SIZE, IngestOptions, dask_client, ingest
from storage.layouts import plan_dataset
from storage.phantoms import write_phantoms

TASKS = ("segmentation", "synthesis", "inpainting", "denoising")


def build_stores(work: Path, size: int, cases: int, slices: int, tasks=TASKS) -> Path:
    store = work / f"store-{size}"
    with dask_client(workers=2) as client:
        for task in tasks:
            source = work / f"phantom-{task}-{size}"
            if not (source / "dataset.json").exists():
                write_phantoms(task, source, cases=cases, seed=0, size=size, slices=slices)
            report = ingest(plan_dataset(source), store, client, IngestOptions(size=size))
            assert not report.failed, [r.reason for r in report.failed]
    return store


def rate(function, seconds: float = 3.0, minimum: int = 20) -> float:
    """Calls per second of `function`, after one warm-up call."""
    function()
    calls, started = 0, time.perf_counter()
    while calls < minimum or time.perf_counter() - started < seconds:
        function()
        calls += 1
    return calls / (time.perf_counter() - started)


def loader_rates(store: Path, png_root: Path, data, objective, samples: int = 300) -> dict:
    zarr_source = EpisodeSampler([store], data, objective, seed=0)
    png_source = PngEpisodeSource(png_root, [store], data, objective, seed=0)
    zarr_rate = rate(zarr_source.sample, minimum=samples)
    png_rate = rate(png_source.sample, minimum=samples)
    return {"crop": data.crop, "resize": data.resize, "zarr_episodes_per_s": zarr_rate, "png_episodes_per_s": png_rate, "ratio": zarr_rate / png_rate}


def train_step_rate(store: Path, steps: int = 20) -> dict:
    config = preset("tiny-cpu")
    torch.manual_seed(0)
    model = MVG(config.model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    sampler = EpisodeSampler([store], config.data, config.objective, seed=0)
    batches = [collate([sampler.sample() for _ in range(config.optim.batch_size)]) for _ in range(steps)]

    def step(batch):
        loss = episode_losses(model, batch, config.objective).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step(batches[0])
    started = time.perf_counter()
    for batch in batches:
        step(batch)
    seconds = time.perf_counter() - started
    return {
        "preset": "tiny-cpu",
        "batch_size": config.optim.batch_size,
        "image_size": config.model.image_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "episodes_per_s": steps * config.optim.batch_size / seconds,
        "threads": torch.get_num_threads(),
    }


def inference_rates(slices: int = 100, chunk: int = 25) -> dict:
    config = preset("tiny-cpu").model
    torch.manual_seed(0)
    model = MVG(config).eval()
    size = config.image_size
    volume = torch.rand(slices, 1, size, size)
    prompt_image, prompt_target = torch.rand(1, 1, 1, size, size), torch.rand(1, 1, 1, size, size)

    def cached():
        cache = model.encode_prompts(prompt_image, prompt_target)
        return torch.cat([model.predict_cached(volume[i : i + chunk], cache) for i in range(0, slices, chunk)])

    def naive():
        return torch.cat(
            [
                model.predict_uncached(volume[i : i + chunk], prompt_image.expand(len(volume[i : i + chunk]), -1, -1, -1, -1), prompt_target.expand(len(volume[i : i + chunk]), -1, -1, -1, -1))
                for i in range(0, slices, chunk)
            ]
        )

    assert torch.allclose(cached(), naive(), atol=1e-5), "cache must not change the prediction"
    cached_rate = rate(cached, minimum=5) * slices
    naive_rate = rate(naive, minimum=5) * slices
    return {"preset": "tiny-cpu", "slices": slices, "batch": chunk, "cached_slices_per_s": cached_rate, "naive_slices_per_s": naive_rate, "ratio": cached_rate / naive_rate, "target_ratio": 1.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/model.json"))
    args = parser.parse_args()
    with scratch(args.work, "mvg-bench-model-") as work:
        results: dict = {"machine": {**machine(), "torch": torch.__version__, "cuda": torch.cuda.is_available()}}
        small = build_stores(work, size=128, cases=4, slices=16)
        print("train step ...")
        results["train_step"] = train_step_rate(small)
        print(json.dumps(results["train_step"]))
        tiny = preset("tiny-cpu")
        results["loader_tiny"] = loader_rates(small, export_pngs(small, work / "png-128"), tiny.data, tiny.objective)
        print(json.dumps(results["loader_tiny"]))
        results["loader_vs_training"] = results["loader_tiny"]["zarr_episodes_per_s"] / results["train_step"]["episodes_per_s"]
        large = build_stores(work, size=DEFAULT_SIZE, cases=3, slices=8, tasks=("segmentation", "synthesis"))
        paper = replace(tiny.data, resize=DEFAULT_SIZE, crop=448)
        results["loader_paper_crop"] = loader_rates(large, export_pngs(large, work / f"png-{DEFAULT_SIZE}"), paper, tiny.objective, samples=60)
        print(json.dumps(results["loader_paper_crop"]))
        results["inference"] = inference_rates()
        print(json.dumps(results["inference"]))
        results["gpu"] = "no GPU in this run: the large-preset step, its MFU and the loader against GPU consumption are not measured"
        write_result(args.out, results)


if __name__ == "__main__":
    main()
