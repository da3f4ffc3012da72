"""The champion rule: better, worse, no champion yet, and only shared datasets count."""

from __future__ import annotations

import pytest

from mvg.promotion import PromotionRule, decide


def test_no_champion_yet_promotes():
    decision = decide({"acdc": 0.7}, None)
    assert decision.promote and decision.reason == "no champion yet"


def test_better_or_equal_everywhere_promotes_and_worse_anywhere_does_not():
    champion = {"acdc": 0.70, "brats-synthesis": 24.0}
    assert decide({"acdc": 0.72, "brats-synthesis": 24.0}, champion).promote
    worse = decide({"acdc": 0.80, "brats-synthesis": 23.5}, champion)
    assert not worse.promote and "brats-synthesis" in worse.reason and "acdc" not in worse.reason.split("(")[0]


def test_tolerance_forgives_small_losses():
    champion = {"acdc": 0.70}
    assert not decide({"acdc": 0.695}, champion).promote
    assert decide({"acdc": 0.695}, champion, PromotionRule(tolerance=0.01)).promote


def test_mean_rule_lets_gains_offset_losses():
    champion = {"a": 0.70, "b": 0.70}
    candidate = {"a": 0.80, "b": 0.65}
    assert not decide(candidate, champion, PromotionRule("every")).promote
    assert decide(candidate, champion, PromotionRule("mean")).promote
    assert not decide({"a": 0.72, "b": 0.60}, champion, PromotionRule("mean")).promote


def test_only_datasets_both_were_evaluated_on_count():
    champion = {"acdc": 0.70, "old": 0.99}
    assert decide({"acdc": 0.71, "new": 0.01}, champion).promote
    disjoint = decide({"new": 0.9}, champion)
    assert not disjoint.promote and "no dataset" in disjoint.reason


def test_unknown_rule_and_negative_tolerance_are_refused():
    with pytest.raises(ValueError, match="unknown promotion rule"):
        PromotionRule("best")
    with pytest.raises(ValueError, match="tolerance"):
        PromotionRule(tolerance=-1)


def test_primary_scores_keep_only_primary_metrics_keyed_by_metric():
    from mvg.promotion import primary_scores

    recorded = {"acdc": {"miou": 0.7, "dice": 0.8}, "brats": {"psnr": 21.0, "ssim": 0.7}}
    assert primary_scores(recorded) == {"acdc miou": 0.7, "brats psnr": 21.0}
    # a dataset scored by another metric elsewhere is not compared with it
    assert not set(primary_scores({"x": {"miou": 0.5}})) & set(primary_scores({"x": {"psnr": 20.0}}))
