"""The ablation flow: the studies and their variants, override files checked before anything starts,
the comparison table and chart, and a two-variant ablation on phantoms through Ray Tune (local Ray,
MLflow on SQLite) in which one variant's trial fails every attempt and the other's completes."""

from __future__ import annotations

import json
import math

import pytest

from flows.cli import main
from mvg.ablation import plan_trials, subset, with_steps
from mvg.studies import STUDIES, Variant, load_custom
from mvg.comparison import Score, bar_chart, compare
from mvg.config import preset
from mvg.overrides import OverrideError

TINY = {"model": {"depth": 1, "embed_dim": 48, "num_heads": 3}, "optim": {"batch_size": 2}}


def test_the_paper_studies_and_their_variants():
    assert {name: [v.name for v in s.variants] for name, s in STUDIES.items()} == {
        "colouring": ["binary", "predefined", "random"],
        "unified": ["isolated", "unified"],
        "objective": ["mim-0.5", "mim-0.75", "ar", "hybrid"],
        "data-scale": ["data-1pct", "data-10pct", "data-50pct", "data-100pct"],
    }
    base = preset("tiny-cpu")
    objective = {v.name: base.with_overrides(**v.overrides).objective for v in STUDIES["objective"].variants}
    assert objective["mim-0.75"].mask_ratio == (0.75, 0.75) and objective["mim-0.75"].segmentation_mim_fraction == 1.0
    assert objective["ar"].mim_fraction == 0.0 and objective["hybrid"] == base.objective

    training = {"seg": [f"s{i}" for i in range(20)], "syn": ["a", "b"]}
    trials = plan_trials(STUDIES["unified"], base, training, ["seg", "syn"], seeds=2, restricted=False)
    assert [t.name for t in trials] == ["isolated-seg-s0", "isolated-syn-s0", "isolated-seg-s1", "isolated-syn-s1", "unified-s0", "unified-s1"]
    assert trials[0].cases == {"seg": tuple(sorted(training["seg"]))} and trials[0].scored_on == ("seg",)
    assert trials[-1].cases is None and trials[-1].scored_on == ("seg", "syn")


def test_data_scale_subsets_are_nested_and_never_empty():
    cases = [f"case{i:03d}" for i in range(200)]
    shares = {f: set(subset(cases, f, "acdc", seed=0)) for f in (0.01, 0.1, 0.5, 1.0)}
    assert [len(s) for s in shares.values()] == [2, 20, 100, 200]
    assert shares[0.01] < shares[0.1] < shares[0.5] < shares[1.0]
    assert subset(cases, 0.1, "acdc", seed=1) != subset(cases, 0.1, "acdc", seed=0)
    assert len(subset(["only", "two"], 0.01, "x", 0)) == 1


def test_every_variant_gets_the_same_schedule():
    config = with_steps(preset("tiny-cpu"), 20)
    assert (config.optim.steps, config.optim.warmup_steps) == (20, 4)
    assert with_steps(preset("tiny-cpu"), 10_000).optim.warmup_steps == 200


def write(tmp_path, text: str):
    path = tmp_path / "variants.yaml"
    path.write_text(text)
    return path


def test_a_custom_file_of_override_sets(tmp_path):
    study = load_custom(write(tmp_path, """
title: read-out
variants:
  baseline: {}
  cosine: {model.readout_cosine: true, objective: {mask_ratio: [0.6, 0.7]}}
  half: {data_fraction: 0.5, optim.lr: 1}
"""))
    assert study.title == "read-out" and [v.name for v in study.variants] == ["baseline", "cosine", "half"]
    assert study.variants[1] == Variant("cosine", {"model": {"readout_cosine": True}, "objective": {"mask_ratio": (0.6, 0.7)}})
    assert study.variants[2].data_fraction == 0.5 and study.variants[2].overrides == {"optim": {"lr": 1.0}}
    json_study = load_custom(write(tmp_path, json.dumps({"variants": {"a": {"objective.colouring": "binary"}}})))
    assert json_study.variants[0].overrides == {"objective": {"colouring": "binary"}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("variants: {a: {model.dept: 2}}", "variant 'a': model.dept: model has no setting 'dept' (did you mean 'depth'?)"),
        ("variants: {a: {modle: {depth: 2}}}", "variant 'a': modle.depth: no config section 'modle' (did you mean 'model'?)"),
        ("variants: {a: {model.depth: two}}", "variant 'a': model.depth: expected an integer, got 'two'"),
        ("variants: {a: {objective.mask_ratio: 0.5}}", "variant 'a': objective.mask_ratio: expected a list of 2 numbers"),
        ("variants: {a: {objective.colouring: rainbow}}", "variant 'a': objective.colouring: expected one of binary, predefined, random"),
        ("variants: {a: {model.prompt_readout: yes}}", None),  # YAML's yes is true: accepted
        ("variants: {a: {data_fraction: 0}}", "variant 'a': data_fraction: expected a number in (0, 1]"),
        ("variant: {a: {}}", "unknown key 'variant'"),
        ("variants: {a b: {}}", "variant 'a b': a name of letters"),
    ],
)
def test_a_bad_override_file_names_the_bad_key(tmp_path, text, message):
    path = write(tmp_path, text)
    if message is None:
        load_custom(path)
        return
    with pytest.raises(OverrideError) as error:
        load_custom(path)
    assert message in str(error.value)


def test_mvg_ablate_refuses_a_bad_file_before_anything_starts(tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MVG_HOME", str(home))
    bad = write(tmp_path, "variants:\n  good: {}\n  typo: {optim.weight_decay: 0.1, model.embed_dimension: 96}\n")
    assert main(["ablate", "--study", "custom", "--variants", str(bad), "--steps", "5"]) == 2
    assert "variant 'typo': model.embed_dimension: model has no setting 'embed_dimension' (did you mean 'embed_dim'?)" in capsys.readouterr().err
    assert main(["ablate", "--study", "custom", "--variants", str(write(tmp_path, "variants: {a: {optim.steps: 9}}"))]) == 2
    assert "the study's budget sets the steps of every variant" in capsys.readouterr().err
    assert main(["ablate", "--study", "objective", "--set", "model.depth=deep"]) == 2
    assert "--set model.depth: expected an integer, got 'deep'" in capsys.readouterr().err
    assert not home.exists(), "nothing was started, nothing written"


def test_the_comparison_in_the_papers_layout(tmp_path):
    def scores(variant, seed, miou, psnr):
        return [Score(variant, seed, "seg", "segmentation", "mIoU", miou, 0.5, "copy-prompt"),
                Score(variant, seed, "syn", "synthesis", "PSNR", psnr, 20.0, "identity")]

    comparison = compare([*scores("a", 0, 0.6, 21.0), *scores("a", 1, 0.8, 23.0), *scores("b", 0, 0.4, 19.0)], ["a", "b", "c"], seeds=2)
    rows = comparison.rows()
    assert rows[0] == {"variant": "a", "seg mIoU": "0.700 ± 0.141", "syn PSNR": "22.000 ± 1.414"}
    assert rows[1] == {"variant": "b", "seg mIoU": "0.400", "syn PSNR": "19.000"}, "one seed finished: no spread"
    assert rows[2] == {"variant": "c", "seg mIoU": "failed", "syn PSNR": "failed"}
    assert rows[3] == {"variant": "baseline (copy-prompt / identity)", "seg mIoU": "0.500", "syn PSNR": "20.000"}
    assert comparison.best() == "a" and comparison.best(among=["b", "c"]) == "b"
    assert math.isnan(comparison.baselines["seg"].std)
    png = bar_chart(comparison, "a study", tmp_path / "chart.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_as_many_trials_at_once_as_the_cluster_has_room_for():
    from mvg.distributed import Scaling
    from mvg.sweep import concurrency, error_line

    assert concurrency(Scaling(1, 0.0, 2), trials=4, resources={"CPU": 2.0}) == 1, "a laptop: one after another"
    assert concurrency(Scaling(1, 0.0, 1), trials=3, resources={"CPU": 2.0}) == 2
    assert concurrency(Scaling(2, 1.0, 4), trials=6, resources={"CPU": 64.0, "GPU": 8.0}) == 4, "whole worker groups of GPUs"
    assert concurrency(Scaling(1, 0.5, 1), trials=3, resources={"CPU": 16.0, "GPU": 1.0}) == 2
    assert concurrency(Scaling(1, 1.0, 1), trials=3, resources={"CPU": 16.0}) == 1, "no GPU: one waits for a node to come"
    assert error_line("Failure # 1\nTraceback (most recent call last):\n  File x\nRuntimeError: boom\n\n") == "RuntimeError: boom"


# ---------------------------------------------------------------------------- the registered variant


def scored(dataset: str, task: str, metric: str, model: float, baseline: str, base: float, failed: int = 0):
    """A DatasetEvaluation as evaluate_dataset returns one, reduced to what registration reads."""
    import numpy as np

    from mvg.evaluation import MODEL, Aggregate, DatasetEvaluation

    summary = {MODEL: {metric: Aggregate(model, math.nan, (model,))}, baseline: {metric: Aggregate(base, math.nan, (base,))}}
    cases = [{"dataset": dataset, "case": f"c{i}", "reason": "damaged"} for i in range(failed)]
    return DatasetEvaluation(dataset, task, 1, 1, 0, [], (metric,), summary, np.zeros((2, 2, 3), np.uint8), cases)


def test_a_registered_variant_gets_the_model_card_of_mvg_train(tmp_path, monkeypatch):
    """`mvg ablate --register`: the chosen trial's model is a version whose card tells what
    `mvg train` would (preset, every override that made the trial, the datasets it trained on with
    their store versions, steps, episodes, wall time), its ablation scores beside their baselines
    as `mvg evaluate` records them, and how to use it. Trained here for no step at all: the
    checkpoint is the trial's as Ray keeps it, the evaluations as the ablation's."""
    from flows.ablate import CardFacts, TrackedStudy, register_chosen
    from mvg.ablation import Plan
    from mvg.model import MVG
    from mvg.names import ABLATION_EXPERIMENT
    from mvg.studies import Study
    from mvg.sweep import TrialResult
    from mvg.tracking import client, ensure_experiment, tracking_uri
    from mvg.train import save_checkpoint

    monkeypatch.setenv("MVG_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    study = Study("custom", "one variant", (Variant("random", {"objective": {"colouring": "random"}}),))
    training_cases = {"phantom-segmentation": ("s0", "s1"), "phantom-synthesis": ("y0",)}
    checked = Plan(study, preset("tiny-cpu").with_overrides(**TINY), "store", training_cases, tuple(training_cases), False, 1)
    (trial,) = checked.trials(4)
    save_checkpoint(tmp_path / "trial", {"config": trial.config.to_dict(), "model": MVG(trial.config).state_dict(), "step": 4})
    uri, mlflow = tracking_uri(), client()
    run = mlflow.create_run(ensure_experiment(mlflow, ABLATION_EXPERIMENT), run_name=trial.name).info.run_id
    # the store holds a dataset this study did not train on: the card leaves it out
    versions = {"store.phantom-segmentation": "3f2a9c", "store.phantom-synthesis": "77d0e1", "store.other": "000000"}
    runs = TrackedStudy(uri, "parent-run", {}, {trial.name: run}, "commit", versions)
    evaluations = {trial.name: [
        scored("phantom-segmentation", "segmentation", "mIoU", 0.61, "copy-prompt", 0.42),
        scored("phantom-synthesis", "synthesis", "PSNR", 24.5, "identity", 21.25),
    ]}
    facts = CardFacts(checked, TINY, 1, evaluations, failed=[])
    results = {trial.name: TrialResult(trial.name, 4, str(tmp_path / "trial"), None, 0, wall_s=9.46)}

    registered = register_chosen("random", [trial], results, runs, facts)
    assert registered["model_uri"] == "models:/mvg/1" and registered["aliases"] == ["candidate"]
    card = mlflow.get_model_version("mvg", "1").description
    overrides = "`model.depth=1`, `model.embed_dim=48`, `model.num_heads=3`, `objective.colouring=random`, `optim.batch_size=2`"
    assert f"Preset: `tiny-cpu`; overrides: {overrides}, `optim.steps=4`, `optim.warmup_steps=1`" in card, card
    assert "Datasets (store version): `phantom-segmentation` (3f2a9c), `phantom-synthesis` (77d0e1)\n" in card, card
    assert f"4 steps, {4 * 2 * trial.config.optim.accumulate} episodes, wall time 9.5 s" in card and f"MLflow run `{run}`" in card
    assert "| phantom-segmentation | mIoU | 0.61 | 0.42 (copy-prompt) |" in card
    assert "| phantom-synthesis | PSNR (dB) | 24.5 | 21.25 (identity) |" in card
    assert "Not decided yet: `mvg promote --model models:/mvg/1`." in card and "mvg predict --model models:/mvg/1 --prompt-image" in card
    tags = mlflow.get_model_version("mvg", "1").tags
    assert tags["eval.run_id"] == run and tags["eval.failed_cases"] == "0", "promotion reads them as an evaluation's"
    assert "| 1 | @candidate | tiny-cpu | 4 | not decided |" in mlflow.get_registered_model("mvg").description

    # unscored cases and a dataset whose evaluation raised keep promotion off the partial scores
    evaluations[trial.name][0] = scored("phantom-segmentation", "segmentation", "mIoU", 0.61, "copy-prompt", 0.42, failed=2)
    raised = [{"trial": trial.name, "variant": "random", "seed": 0, "stage": "evaluation", "reason": "no case scored"}]
    assert CardFacts(checked, TINY, 1, evaluations, raised).failed_cases(trial) == 3


# ---------------------------------------------------------------------------- through Ray Tune


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    from mvg.distributed import RAY_ENV

    ray.init(num_cpus=2, runtime_env={"env_vars": RAY_ENV})
    yield
    ray.shutdown()


@pytest.mark.slow
def test_a_two_variant_ablation_on_phantoms(ray_cluster, phantom_store, prefect_server, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.ablate import ablation_flow
    from mvg.names import ABLATION_EXPERIMENT
    from mvg.tracking import client

    monkeypatch.setenv("MVG_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    attempts = tmp_path / "attempts.log"

    def on_step(trial: str, step: int, rank: int) -> None:  # every attempt of the binary trial fails
        if trial.startswith("binary") and step == 2:
            with open(attempts, "a") as log:
                log.write(f"{trial}\n")
            raise RuntimeError("injected failure")

    variants = write(tmp_path, "variants:\n  random: {objective.colouring: random}\n  binary: {objective.colouring: binary}\n")
    summary = ablation_flow(
        study="custom", variants_file=str(variants), store=str(phantom_store), overrides=TINY, steps=4,
        retries=1, max_failures=0, max_cases=1, on_step=on_step, checkpoint_every=2, cpus_per_worker=1,  # two trials at once
    )
    # the failed trial was retried by Tune, then reported; the other one finished and was scored
    assert attempts.read_text().splitlines() == ["binary-s0", "binary-s0"]
    trials = {row["trial"]: row for row in summary["trials"]}
    assert trials["random-s0"]["status"] == "finished" and trials["random-s0"]["step"] == 4
    assert trials["binary-s0"]["status"] == "failed" and trials["binary-s0"]["failed_attempts"] == 2
    assert "RuntimeError: injected failure" in trials["binary-s0"]["error"]
    assert [row["trial"] for row in summary["failed"]] == ["binary-s0"]
    table = {row["variant"]: row for row in summary["table"]}
    assert set(table) == {"random", "binary", "baseline (copy-prompt / identity)"}
    assert table["binary"]["phantom-segmentation mIoU"] == "failed"
    assert float(table["random"]["phantom-segmentation mIoU"]) >= 0 and float(table["random"]["phantom-synthesis PSNR"]) > 0
    assert "| random |" in summary["markdown"]

    mlflow = client()
    parent = mlflow.get_run(summary["run_id"])
    assert mlflow.get_experiment(parent.info.experiment_id).name == ABLATION_EXPERIMENT and parent.info.status == "FINISHED"
    assert parent.data.params["study"] == "custom" and parent.data.params["steps"] == "4"
    artifacts = {a.path for a in mlflow.list_artifacts(parent.info.run_id)}
    assert {"ablation-custom.md", "ablation-custom.csv", "ablation-custom.png", "scores.csv", "trials.csv", "failed.csv"} <= artifacts
    children = mlflow.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    variants_runs = {run.info.run_name: run for run in children}
    assert set(variants_runs) == {"random", "binary"}
    assert variants_runs["random"].data.params == {"objective.colouring": "random"}
    assert variants_runs["random"].data.metrics["phantom-segmentation.mIoU"] == pytest.approx(float(table["random"]["phantom-segmentation mIoU"]), abs=5e-4)
    assert variants_runs["random"].info.status == "FINISHED" and variants_runs["binary"].info.status == "FAILED"
    trial_run = mlflow.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{variants_runs['random'].info.run_id}'")[0]
    assert trial_run.info.run_name == "random-s0" and mlflow.get_metric_history(trial_run.info.run_id, "loss")
    assert trial_run.data.params["model.depth"] == "1" and "eval.phantom-synthesis.model.PSNR" in trial_run.data.metrics
    assert not mlflow.search_registered_models(), "an ablation registers nothing unless asked"

    with get_client(sync_client=True) as prefect:
        keys = {a.key for a in prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ablation-custom", "ablation-custom-chart"])))}
    assert keys == {"ablation-custom", "ablation-custom-chart"}
