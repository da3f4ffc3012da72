"""An ablation's comparison: variants x datasets in the paper's layout, mean ± std over seeds, beside
the baseline, as table rows (markdown and CSV through mvg.evaluation) and a bar chart.

Each dataset is compared on its primary metric, the one promotion reads (mIoU for segmentation,
PSNR of the whole image for synthesis, inpainting and denoising); every metric of every trial is in
the long-form scores the flow keeps beside the table. The baseline (copy-prompt, identity) is
scored on the same test cases with the same prompt draws for every variant, so it is one row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

BASELINE_ROW = "baseline"
PANELS_PER_ROW = 4  # bar chart panels side by side; more datasets wrap onto further rows
FAILED = "failed"


@dataclass(frozen=True)
class Score:
    """One trial's primary score on one dataset, and its baseline's on the same cases."""

    variant: str
    seed: int
    dataset: str
    task: str
    metric: str  # the evaluation's column: mIoU or PSNR
    model: float
    baseline: float
    baseline_method: str  # copy-prompt or identity

    def row(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float  # over seeds (ddof 1); NaN with one
    seeds: int

    def cell(self) -> str:
        if self.seeds == 0 or math.isnan(self.mean):
            return FAILED if self.seeds == 0 else "n/a"
        return f"{self.mean:.3f}" if math.isnan(self.std) else f"{self.mean:.3f} ± {self.std:.3f}"


def summarise(values: Sequence[float]) -> Summary:
    kept = np.array([v for v in values if not math.isnan(v)], dtype=np.float64)
    if kept.size == 0:
        return Summary(math.nan, math.nan, len(values))
    return Summary(float(kept.mean()), float(kept.std(ddof=1)) if kept.size > 1 else math.nan, len(values))


@dataclass(frozen=True)
class Comparison:
    variants: tuple[str, ...]  # in the study's order
    columns: tuple[tuple[str, str, str], ...]  # (dataset, metric, baseline method) in the table's order
    cells: dict[tuple[str, str], Summary]  # (variant, dataset) -> over seeds
    baselines: dict[str, Summary]  # dataset -> the baseline's

    def rows(self) -> list[dict]:
        """Table rows: one per variant, then the baseline; a column per dataset."""
        rows = []
        for variant in self.variants:
            row = {"variant": variant}
            row.update({header(d, m): self.cells.get((variant, d), Summary(math.nan, math.nan, 0)).cell() for d, m, _ in self.columns})
            rows.append(row)
        methods = " / ".join(dict.fromkeys(method for _, _, method in self.columns))
        baseline = {"variant": f"{BASELINE_ROW} ({methods})"}
        baseline.update({header(d, m): self.baselines[d].cell() for d, m, _ in self.columns})
        return [*rows, baseline]

    def best(self, among: Sequence[str] | None = None) -> str | None:
        """The variant (of `among`, default all) with the highest mean margin over the baseline
        across datasets (each in its metric's units, as promotion's `mean` rule), among those
        scored on every dataset."""
        margins = {}
        for variant in among if among is not None else self.variants:
            cells = [self.cells.get((variant, d)) for d, _, _ in self.columns]
            if cells and all(c is not None and not math.isnan(c.mean) for c in cells):
                margins[variant] = float(np.mean([c.mean - self.baselines[d].mean for c, (d, _, _) in zip(cells, self.columns)]))
        return max(margins, key=margins.get) if margins else None


def header(dataset: str, metric: str) -> str:
    return f"{dataset} {metric}"


def compare(scores: Sequence[Score], variants: Sequence[str], seeds: int) -> Comparison:
    """The comparison of `scores`; a variant none of whose `seeds` trials scored a dataset shows
    `failed` there (a trial that failed leaves its seed out of the mean)."""
    tasks = {s.dataset: (s.task, s.metric, s.baseline_method) for s in scores}
    order = ("segmentation", "synthesis", "inpainting", "denoising")  # the paper's tables: 2, then 3
    datasets = sorted(tasks, key=lambda d: (order.index(tasks[d][0]) if tasks[d][0] in order else len(order), d))
    cells = {}
    for variant in variants:
        for dataset in datasets:
            values = [s.model for s in scores if s.variant == variant and s.dataset == dataset]
            if values:
                summary = summarise(values)
                cells[(variant, dataset)] = Summary(summary.mean, summary.std, len(values))
    # the same cases and prompt draws for every trial: one value (the mean only evens out rounding)
    baselines = {d: Summary(summarise([s.baseline for s in scores if s.dataset == d]).mean, math.nan, 1) for d in datasets}
    return Comparison(tuple(variants), tuple((d, tasks[d][1], tasks[d][2]) for d in datasets), cells, baselines)


def bar_chart(comparison: Comparison, title: str, path: str | Path) -> Path:
    """One panel per dataset: a bar per variant (error bar: std over seeds), the baseline dashed."""
    import matplotlib

    matplotlib.use("Agg")  # no display: flows run on servers
    from matplotlib import pyplot

    columns = comparison.columns
    across = max(1, min(PANELS_PER_ROW, len(columns)))
    down = max(1, math.ceil(len(columns) / across))
    panel_width = 1.5 + 0.55 * len(comparison.variants)
    figure, axes = pyplot.subplots(down, across, figsize=(panel_width * across, 3.4 * down), squeeze=False)
    for unused in axes.flat[len(columns):]:
        unused.axis("off")
    colours = pyplot.get_cmap("tab10")
    positions = np.arange(len(comparison.variants))
    for axis, (dataset, metric, method) in zip(axes.flat, columns):
        summaries = [comparison.cells.get((v, dataset), Summary(math.nan, math.nan, 0)) for v in comparison.variants]
        means = [0.0 if math.isnan(s.mean) else s.mean for s in summaries]
        errors = [0.0 if math.isnan(s.std) else s.std for s in summaries]
        axis.bar(positions, means, yerr=errors if any(errors) else None, capsize=3, color=[colours(i % 10) for i in range(len(positions))])
        for position, summary in zip(positions, summaries):
            if math.isnan(summary.mean):
                axis.text(position, 0, FAILED, ha="center", va="bottom", rotation=90, fontsize=8)
        baseline = comparison.baselines[dataset].mean
        if not math.isnan(baseline):
            axis.axhline(baseline, color="black", linestyle="--", linewidth=1)
        axis.set_title(f"{dataset}\n(dashed: {method})", fontsize=9)
        axis.set_ylabel(metric)
        axis.set_xticks(positions, comparison.variants, rotation=30, ha="right", fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path
