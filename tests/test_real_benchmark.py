"""The real-data benchmark's judgement of each dataset against the issue's targets (benchmarks/real.py)."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest

from benchmarks.real import MIN_TEST_CASES, judge, quality_table
from benchmarks.spread import spread, spread_table
from mvg.evaluation import COPY_PROMPT, IDENTITY, MASKED, MODEL, Aggregate, DatasetEvaluation


def evaluation(dataset: str, task: str, scores: dict[str, dict[str, float]], cases: int = 10) -> DatasetEvaluation:
    rows = [{"dataset": dataset, "task": task, "case": f"case{i}", "draw": 0, "method": MODEL} for i in range(cases)]
    summary = {method: {metric: Aggregate(value, math.nan, (value,)) for metric, value in metrics.items()}
               for method, metrics in scores.items()}
    return DatasetEvaluation(dataset, task, 1, 1, 0, rows, tuple(next(iter(scores.values()))), summary, np.zeros((1, 1, 3), np.uint8))


def test_acdc_is_judged_on_its_absolute_target():
    met = judge(evaluation("acdc", "segmentation", {MODEL: {"mIoU": 0.56}, COPY_PROMPT: {"mIoU": 0.12}}))
    missed = judge(evaluation("acdc", "segmentation", {MODEL: {"mIoU": 0.30}, COPY_PROMPT: {"mIoU": 0.12}}))
    assert [row["met"] for row in met] == [True] and [row["met"] for row in missed] == [False]
    assert missed[0]["required"] == 0.55 and math.isclose(missed[0]["difference"], 0.18)


def test_other_segmentation_needs_copy_prompt_plus_a_fifth_unless_too_few_cases():
    scores = {MODEL: {"mIoU": 0.75}, COPY_PROMPT: {"mIoU": 0.60}}
    [row] = judge(evaluation("jsrt", "segmentation", scores))
    assert row["met"] is False and math.isclose(row["required"], 0.80)
    [tiny] = judge(evaluation("cxr", "segmentation", scores, cases=MIN_TEST_CASES - 1))
    assert tiny["met"] is None and tiny["required"] is None


def test_image_targets_need_every_figure():
    inpainting = {MODEL: {"PSNR": 29.0, f"PSNR{MASKED}": 15.0}, IDENTITY: {"PSNR": 29.4, f"PSNR{MASKED}": 2.0}}
    rows = judge(evaluation("brats-local", "inpainting", inpainting, cases=1))
    assert [(row["metric"], row["met"]) for row in rows] == [(f"PSNR{MASKED}", True), ("PSNR", True)]
    synthesis = {MODEL: {"PSNR": 20.0, "SSIM": 0.5}, IDENTITY: {"PSNR": 16.0, "SSIM": 0.6}}
    rows = judge(evaluation("brats2013", "synthesis", synthesis, cases=2))
    assert [(row["metric"], row["met"]) for row in rows] == [("PSNR", True), ("SSIM", False)]
    table = quality_table(rows)
    assert "| brats2013 | SSIM | 0.500 | identity 0.600 | -0.100 |" in table and "**no**" in table


def run_of(seed: int, acdc: float, ldct: float) -> dict:
    """A benchmark result as `benchmarks.real` writes it: the judged targets of one seed's run."""
    targets = judge(evaluation("acdc", "segmentation", {MODEL: {"mIoU": acdc}, COPY_PROMPT: {"mIoU": 0.12}}))
    targets += judge(evaluation("ldct-mayo", "denoising", {MODEL: {"PSNR": ldct}, IDENTITY: {"PSNR": 24.0}}))
    return {"training": {"seed": seed}, "targets": targets}


def test_spread_of_seeds_says_whether_the_mean_meets_each_target():
    rows = spread([run_of(0, 0.56, 24.8), run_of(1, 0.50, 25.3), run_of(2, 0.57, 25.2)])
    acdc, ldct = rows
    assert acdc["seeds"] == [0, 1, 2] and acdc["model"] == [0.56, 0.50, 0.57]
    assert math.isclose(acdc["mean"], 0.5433333, rel_tol=1e-6) and acdc["min"] == 0.50 and acdc["max"] == 0.57
    assert math.isclose(acdc["std"], statistics.stdev([0.56, 0.50, 0.57]))
    assert acdc["mean_met"] is False and acdc["runs_met"] == 2  # two of three runs met 0.55, the mean did not
    assert ldct["mean_met"] is True and ldct["runs_met"] == 2 and math.isclose(ldct["required"], 25.0)
    table = spread_table(rows)
    assert "| acdc | mIoU | 0.560, 0.500, 0.570 | 0.543 ± 0.038 |" in table and "| **no** | 2 of 3 |" in table


def test_spread_refuses_runs_that_judge_other_figures():
    other = {"training": {"seed": 1}, "targets": run_of(1, 0.5, 25.0)["targets"][:1]}
    with pytest.raises(ValueError, match="seed 1 judges other figures"):
        spread([run_of(0, 0.56, 24.8), other])


def test_a_run_s_weights_are_reevaluated_with_inference_overrides_and_its_training_record(tmp_path):
    from benchmarks.real import _trained_before
    from mvg.config import preset
    from mvg.model import MVG
    from mvg.train import save_checkpoint

    config = preset("tiny-cpu").with_overrides(model={"depth": 1, "embed_dim": 48, "num_heads": 3, "slot_inference": "soft"})
    model = MVG(config)
    save_checkpoint(tmp_path / "run", {"model": model.state_dict(), "config": config.to_dict(), "step": 12})
    record = {"steps": 12, "seed": 1, "episodes": 96}
    (tmp_path / "run.json").write_text(json.dumps({"training": record}))

    loaded, loaded_config, training = _trained_before(tmp_path / "run.json", {"model": {"slot_inference": "vote"}})
    assert loaded_config.model.slot_inference == "vote" and loaded.config.slot_inference == "vote"
    assert training == {**record, "reevaluated_from": str(tmp_path / "run.json"), "overrides": {"model": {"slot_inference": "vote"}}}
    assert all(np.array_equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values())), "the same weights"

    (tmp_path / "run.json").write_text(json.dumps({"training": {**record, "steps": 13}}))
    with pytest.raises(SystemExit, match="13 steps but the weights beside it are at step 12"):
        _trained_before(tmp_path / "run.json", {})


def record(seed: int, segmentation: list[float], schedule: int = 6900, lr: float = 2e-3, **extra) -> dict:
    """A run's JSON as far as the early-loss screen reads it: one logged row per 100 steps, the
    denoising logged only from step 200 (a window where a task drew no episode)."""
    history = [{"step": 100 * (i + 1), "loss": value, "loss_segmentation": value, **({"loss_denoising": 0.05} if i else {})}
               for i, value in enumerate(segmentation)]
    return {"config": {"optim": {"lr": lr}}, "training": {"seed": seed, "steps": 100 * len(segmentation), "history": history, **extra}}


def test_early_losses_average_each_task_over_the_window_of_runs_on_one_schedule():
    from benchmarks.early_loss import early_loss_table, early_losses

    full = record(2, [0.5, 0.4, 0.3, 0.2, 0.1] + [0.05] * 64)  # a full run: 6,900 steps of a 6,900-step schedule
    screen = record(2, [0.5, 0.3, 0.2, 0.1], lr=1.4e-3, schedule_steps=6900)  # stopped after 400
    rows = early_losses({"release": full, "screen": screen}, 200, 400)
    assert [row["run"] for row in rows] == ["release", "screen"] and rows[1]["schedule_steps"] == 6900
    assert rows[0]["losses"] == {"segmentation": pytest.approx(0.3), "denoising": pytest.approx(0.05)}
    assert rows[1]["losses"]["segmentation"] == pytest.approx(0.2)
    assert "| screen | 2 | 0.0014 | 0.2000 | 0.0500 |" in early_loss_table(rows)
    assert early_losses({"release": full}, 100, 100)[0]["losses"] == {"segmentation": 0.5}, "no denoising logged at step 100"

    with pytest.raises(ValueError, match="screen: trained up to step 400, short of the window's steps 300-500"):
        early_losses({"release": full, "screen": screen}, 300, 500)
    with pytest.raises(ValueError, match="release: no training loss logged within steps 150-180"):
        early_losses({"release": full}, 150, 180)
    with pytest.raises(ValueError, match="different schedules"):
        early_losses({"release": full, "short": record(0, [0.5] * 10)}, 100, 400)


def test_a_screen_trains_the_first_steps_of_the_full_schedule_and_keeps_no_weights(tmp_path, phantom_store):
    import argparse

    import mlflow

    from benchmarks.real import _train
    from mvg.config import preset

    config = preset("tiny-cpu").with_overrides(model={"depth": 1, "embed_dim": 48, "num_heads": 3}, optim={"warmup_steps": 2})
    out = tmp_path / "screen.json"
    args = argparse.Namespace(minutes=30.0, steps=8, stop_after=3, seed=1, preset="tiny-cpu", out=out)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run():
        _, trained_config, training = _train(args, config, phantom_store)
    assert trained_config.optim.steps == 8 and training["schedule_steps"] == 8
    assert training["steps"] == 3 and training["episodes"] == 3 * config.optim.batch_size
    last = training["history"][-1]
    assert last["step"] == 3 and last["lr"] > 0.5 * config.optim.lr, "the 8-step schedule's lr, not decayed to its end"
    assert not out.with_suffix("").exists(), "a screen's weights are mid-schedule: none are kept for --reevaluate"
