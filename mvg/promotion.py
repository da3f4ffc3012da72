"""When does an evaluated model become the champion? A pure decision, recorded with its reason.

Each dataset is judged on its primary metric: mIoU for segmentation, PSNR for the image-to-image
tasks (both higher-is-better). Only datasets both models were evaluated on count: a candidate
evaluated on a new dataset is neither helped nor hurt by it.

Rules:
- `every`: at least as good as the champion on every shared dataset (within `tolerance`, in the
  metric's own units: 0.01 mIoU, 0.1 dB);
- `mean`:  at least as good on the mean of the per-dataset differences (losses may be offset by gains).
With no champion yet, the candidate is promoted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

PRIMARY_METRIC = {"segmentation": "miou", "synthesis": "psnr", "inpainting": "psnr", "denoising": "psnr"}
RULES = ("every", "mean")


def primary_scores(recorded: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """{"<dataset> <metric>": value} of the primary metrics among a version's recorded scores
    (dataset -> metric -> value); keyed with the metric so only like is compared with like."""
    primary = set(PRIMARY_METRIC.values())
    return {f"{dataset} {metric}": value for dataset, values in recorded.items() for metric, value in values.items() if metric in primary}


@dataclass(frozen=True)
class PromotionRule:
    mode: str = "every"
    tolerance: float = 0.0

    def __post_init__(self):
        if self.mode not in RULES:
            raise ValueError(f"unknown promotion rule {self.mode!r}; expected one of {', '.join(RULES)}")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, not {self.tolerance}")


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(candidate: Mapping[str, float], champion: Mapping[str, float] | None, rule: PromotionRule = PromotionRule()) -> Decision:
    """`candidate` and `champion`: dataset -> primary metric (higher is better)."""
    if champion is None:
        return Decision(True, "no champion yet")
    shared = sorted(set(candidate) & set(champion))
    if not shared:
        return Decision(False, "no dataset evaluated for both the candidate and the champion")
    differences = {name: candidate[name] - champion[name] for name in shared}
    listing = ", ".join(f"{name} {candidate[name]:.4g} vs {champion[name]:.4g}" for name in shared)
    if rule.mode == "every":
        worse = [name for name, difference in differences.items() if difference < -rule.tolerance]
        if worse:
            return Decision(False, f"worse than the champion on {', '.join(worse)} ({listing})")
        return Decision(True, f"at least as good as the champion on every shared dataset ({listing})")
    mean = sum(differences.values()) / len(differences)
    if mean < -rule.tolerance:
        return Decision(False, f"mean difference {mean:+.4g} below the champion ({listing})")
    return Decision(True, f"mean difference {mean:+.4g} over {len(shared)} shared dataset(s) ({listing})")
