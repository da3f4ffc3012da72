"""When does an evaluated model become the champion? A pure decision, recorded with its reason.

Each dataset is judged on its primary metric: mIoU for segmentation, PSNR for the image-to-image
tasks (both higher-is-better; for inpainting the PSNR of the whole image, the one the evaluate flow
records). The decision has two steps, and a first candidate goes through both:

1. The baseline gate. The candidate must beat the baseline of each dataset it was evaluated on --
   copy-prompt for segmentation, identity for the image tasks, scored by the same evaluation run:
   - `every`: strictly better than the baseline on every dataset;
   - `mean`:  the mean of the per-dataset differences to the baselines is strictly positive.
   The gate is strict (a tie with doing nothing does not beat it) and `tolerance` does not apply to
   it: the tolerance forgives losses to the champion, not to the baselines. Like the `mean` rule
   against the champion, the mean adds differences in each metric's own units (mIoU, dB), so a
   few dB weigh more than a few hundredths of mIoU. A dataset with no baseline score recorded (a
   version evaluated before baselines were recorded) is refused: re-run `mvg evaluate`.
2. The champion comparison, on the datasets both the candidate and the champion were evaluated on
   (a candidate evaluated on a new dataset is neither helped nor hurt by it there):
   - `every`: at least as good as the champion on every shared dataset (within `tolerance`, in the
     metric's own units: 0.01 mIoU, 0.1 dB);
   - `mean`:  at least as good on the mean of the per-dataset differences (losses may be offset by gains).
   With no champion yet, a candidate that passed the gate is promoted.

Before both: a candidate whose evaluation had failed test cases (a damaged store shard, reported
and left unscored) is not promoted. Its scores cover only the cases that could be read, and a
dataset none of whose cases could be is missing from them altogether, so they are not comparable
with the baselines' or the champion's; repair the store (`mvg store --verify`) and evaluate again.

The reason lists the figures: the candidate beside each baseline, then beside the champion.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

PRIMARY_METRIC = {"segmentation": "miou", "synthesis": "psnr", "inpainting": "psnr", "denoising": "psnr"}
BASELINE_BY_METRIC = {"miou": "copy-prompt", "psnr": "identity"}  # mvg.evaluation.BASELINE_BY_TASK, by metric
RULES = ("every", "mean")
NO_BASELINES = "no baseline scores recorded; re-run mvg evaluate"


def failed_evaluation(failed_cases: int) -> str:
    return (
        f"its evaluation had {failed_cases} failed test case(s), left unscored; "
        "repair the store (mvg store --verify) and re-run mvg evaluate"
    )


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


def _baseline_name(key: str) -> str:
    return BASELINE_BY_METRIC.get(key.rpartition(" ")[2], "baseline")


def baseline_gate(candidate: Mapping[str, float], baselines: Mapping[str, float], rule: PromotionRule = PromotionRule()) -> Decision:
    """Step 1 (module docstring): does the candidate beat the baselines? Both mappings are keyed
    "<dataset> <metric>" (`primary_scores`); the reason lists "<dataset> <metric> <model> vs <baseline name> <score>"."""
    if not candidate:
        return Decision(False, "no evaluation recorded")
    names = sorted(candidate)
    missing = [name for name in names if name not in baselines]
    if missing:
        if len(missing) == len(names):
            return Decision(False, NO_BASELINES)
        return Decision(False, f"no baseline scores recorded for {', '.join(missing)}; re-run mvg evaluate")
    listing = ", ".join(f"{name} {candidate[name]:.4g} vs {_baseline_name(name)} {baselines[name]:.4g}" for name in names)
    differences = {name: candidate[name] - baselines[name] for name in names}
    if rule.mode == "every":
        losing = [name for name in names if not differences[name] > 0]
        if losing:
            return Decision(False, f"does not beat its baseline on {', '.join(losing)} ({listing})")
        return Decision(True, f"beats its baseline on every dataset ({listing})")
    mean = sum(differences.values()) / len(differences)
    if not mean > 0:
        return Decision(False, f"mean difference to the baselines {mean:+.4g} is not above 0 ({listing})")
    return Decision(True, f"mean difference to the baselines {mean:+.4g} over {len(names)} dataset(s) ({listing})")


def decide(
    candidate: Mapping[str, float],
    baselines: Mapping[str, float],
    champion: Mapping[str, float] | None,
    rule: PromotionRule = PromotionRule(),
    failed_cases: int = 0,
) -> Decision:
    """`candidate`, `baselines` (the candidate's own evaluation's baseline scores) and `champion`:
    "<dataset> <metric>" -> primary metric (higher is better); `failed_cases`: how many test cases
    that evaluation could not score. An evaluation with failed cases refuses; else the baseline
    gate, then the champion; the reason carries the figures of every step taken."""
    if failed_cases:
        return Decision(False, failed_evaluation(failed_cases))
    gate = baseline_gate(candidate, baselines, rule)
    if not gate.promote:
        return gate
    if champion is None:
        return Decision(True, f"{gate.reason}; no champion yet")
    shared = sorted(set(candidate) & set(champion))
    if not shared:
        return Decision(False, f"{gate.reason}; but no dataset evaluated for both the candidate and the champion")
    differences = {name: candidate[name] - champion[name] for name in shared}
    listing = ", ".join(f"{name} {candidate[name]:.4g} vs {champion[name]:.4g}" for name in shared)
    if rule.mode == "every":
        worse = [name for name, difference in differences.items() if difference < -rule.tolerance]
        if worse:
            return Decision(False, f"{gate.reason}; but worse than the champion on {', '.join(worse)} ({listing})")
        return Decision(True, f"{gate.reason}; at least as good as the champion on every shared dataset ({listing})")
    mean = sum(differences.values()) / len(differences)
    if mean < -rule.tolerance:
        return Decision(False, f"{gate.reason}; but mean difference {mean:+.4g} below the champion ({listing})")
    return Decision(True, f"{gate.reason}; mean difference {mean:+.4g} to the champion over {len(shared)} shared dataset(s) ({listing})")
