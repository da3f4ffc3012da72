"""The champion rule: the baseline gate first (a first candidate included), then better, worse, no
champion yet, and only shared datasets count."""

from __future__ import annotations

import pytest

from mvg.promotion import NO_BASELINES, PromotionRule, decide, failed_evaluation

# baselines the candidates below beat, unless a test says otherwise
LOW = {"acdc miou": 0.1, "brats-synthesis psnr": 15.0, "a miou": 0.1, "b miou": 0.1, "new miou": 0.1}


def test_first_candidate_that_loses_to_a_baseline_on_one_dataset_is_refused_with_the_figures():
    candidate = {"acdc miou": 0.091, "brats-synthesis psnr": 24.0}
    baselines = {"acdc miou": 0.118, "brats-synthesis psnr": 13.7}
    decision = decide(candidate, baselines, None)
    assert not decision.promote
    verdict, figures = decision.reason.split(" (", 1)
    assert "acdc miou" in verdict and "brats-synthesis" not in verdict
    assert "acdc miou 0.091 vs copy-prompt 0.118" in figures and "brats-synthesis psnr 24 vs identity 13.7" in figures
    assert "no champion yet" not in decision.reason


def test_a_tie_with_the_baseline_does_not_beat_it_and_tolerance_does_not_forgive_it():
    assert not decide({"acdc miou": 0.5}, {"acdc miou": 0.5}, None).promote
    assert not decide({"acdc miou": 0.49}, {"acdc miou": 0.5}, None, PromotionRule(tolerance=0.05)).promote


def test_first_candidate_that_beats_every_baseline_is_promoted_with_the_figures():
    decision = decide({"acdc miou": 0.7, "brats-synthesis psnr": 24.0}, {"acdc miou": 0.12, "brats-synthesis psnr": 13.7}, None)
    assert decision.promote and decision.reason.endswith("no champion yet")
    assert "beats its baseline on every dataset" in decision.reason
    assert "acdc miou 0.7 vs copy-prompt 0.12" in decision.reason and "brats-synthesis psnr 24 vs identity 13.7" in decision.reason


def test_mean_rule_gate_lets_a_gain_over_one_baseline_offset_a_loss_to_another():
    baselines = {"a miou": 0.5, "b miou": 0.5}
    candidate = {"a miou": 0.7, "b miou": 0.45}  # +0.2 and -0.05: the mean beats the baselines
    assert not decide(candidate, baselines, None, PromotionRule("every")).promote
    mean = decide(candidate, baselines, None, PromotionRule("mean"))
    assert mean.promote and "+0.075" in mean.reason
    refused = decide({"a miou": 0.52, "b miou": 0.47}, baselines, None, PromotionRule("mean"))
    assert not refused.promote and "not above 0" in refused.reason


def test_a_version_without_baseline_scores_is_refused():
    assert decide({"acdc miou": 0.9}, {}, None) == decide({"acdc miou": 0.9}, {}, {"acdc miou": 0.1})
    refused = decide({"acdc miou": 0.9}, {}, None)
    assert not refused.promote and refused.reason == NO_BASELINES == "no baseline scores recorded; re-run mvg evaluate"
    partly = decide({"acdc miou": 0.9, "new miou": 0.9}, {"acdc miou": 0.1}, None)
    assert not partly.promote and "no baseline scores recorded for new miou" in partly.reason


def test_the_champion_comparison_still_applies_after_the_gate():
    champion = {"acdc miou": 0.70, "brats-synthesis psnr": 24.0}
    better = decide({"acdc miou": 0.72, "brats-synthesis psnr": 24.0}, LOW, champion)
    assert better.promote and "beats its baseline" in better.reason and "at least as good as the champion" in better.reason
    worse = decide({"acdc miou": 0.80, "brats-synthesis psnr": 23.5}, LOW, champion)
    assert not worse.promote and "worse than the champion on brats-synthesis psnr" in worse.reason
    assert "acdc" not in worse.reason.split("worse than the champion on ")[1].split(" (")[0]
    # the gate comes first: a candidate better than the champion but losing to a baseline is refused
    gated = decide({"acdc miou": 0.80, "brats-synthesis psnr": 25.0}, LOW | {"acdc miou": 0.85}, champion)
    assert not gated.promote and "does not beat its baseline on acdc miou" in gated.reason and "champion" not in gated.reason


def test_an_evaluation_with_failed_cases_is_refused_however_good_its_scores():
    """Scores of the readable cases only are not comparable: no promotion, first candidate or not."""
    candidate, champion = {"acdc miou": 0.9}, {"acdc miou": 0.5}
    assert decide(candidate, LOW, None).promote and decide(candidate, LOW, champion).promote
    for rule in (PromotionRule("every"), PromotionRule("mean", tolerance=1.0)):
        for against in (None, champion):
            refused = decide(candidate, LOW, against, rule, failed_cases=2)
            assert not refused.promote and refused.reason == failed_evaluation(2)
    assert "2 failed test case(s)" in failed_evaluation(2) and "mvg store --verify" in failed_evaluation(2)


def test_tolerance_forgives_small_losses_to_the_champion():
    champion = {"acdc miou": 0.70}
    assert not decide({"acdc miou": 0.695}, LOW, champion).promote
    assert decide({"acdc miou": 0.695}, LOW, champion, PromotionRule(tolerance=0.01)).promote


def test_mean_rule_lets_gains_offset_losses_to_the_champion():
    champion = {"a miou": 0.70, "b miou": 0.70}
    candidate = {"a miou": 0.80, "b miou": 0.65}
    assert not decide(candidate, LOW, champion, PromotionRule("every")).promote
    assert decide(candidate, LOW, champion, PromotionRule("mean")).promote
    assert not decide({"a miou": 0.72, "b miou": 0.60}, LOW, champion, PromotionRule("mean")).promote


def test_only_datasets_both_were_evaluated_on_count_against_the_champion():
    champion = {"acdc miou": 0.70, "old miou": 0.99}
    assert decide({"acdc miou": 0.71, "new miou": 0.11}, LOW, champion).promote
    disjoint = decide({"new miou": 0.9}, LOW, champion)
    assert not disjoint.promote and "no dataset evaluated for both" in disjoint.reason


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
