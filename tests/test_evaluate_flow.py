"""The evaluate flow on phantom stores with a registered model: tables with baselines, MLflow
artifacts, version tags (the model's scores and its baselines'), and the champion alias moved by
the rule: only to a version that beats its baselines."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import pytest

from mvg.tracking import logged_model_id

pytestmark = pytest.mark.slow


def test_evaluate_records_the_baselines_and_does_not_promote_a_candidate_that_loses_to_them(registry, phantom_store, prefect_server):
    from mvg.tracking import alias_version

    from flows.evaluate import evaluate_flow

    first = evaluate_flow("models:/mvg/1", store=str(phantom_store), max_cases=1, draws=2)
    table2, table3 = first["tables"]["table2"], first["tables"]["table3"]
    assert [row["method"] for row in table2] == ["model", "copy-prompt"] and "phantom-segmentation" in table2[0]
    assert "±" in table2[0]["phantom-segmentation"], "two draws give a spread"
    assert [row["method"] for row in table3] == ["model", "identity"] and "phantom-synthesis PSNR" in table3[0]
    assert float(table2[1]["phantom-segmentation"].split(" ±")[0]) == pytest.approx(first["baselines"]["phantom-segmentation"], abs=5e-4)
    assert float(table3[1]["phantom-synthesis PSNR"].split(" ±")[0]) == pytest.approx(first["baselines"]["phantom-synthesis"], abs=5e-4)

    # untrained weights paint worse than copying the prompt: not promoted, though there is no champion yet
    model, baseline = first["scores"]["phantom-segmentation"], first["baselines"]["phantom-segmentation"]
    assert model < baseline
    assert not first["promoted"] and first["champion"] is None and alias_version(registry.tracking_uri, "mvg", "champion") is None
    verdict = first["reason"].split(" (")[0]
    assert verdict.startswith("does not beat its baseline on") and "phantom-segmentation miou" in verdict
    assert f"phantom-segmentation miou {model:.4g} vs copy-prompt {baseline:.4g}" in first["reason"]
    assert f"phantom-synthesis psnr {first['scores']['phantom-synthesis']:.4g} vs identity" in first["reason"]

    artifacts = {a.path for a in registry.list_artifacts(first["run_id"])}
    assert {"table2.md", "table2.csv", "table3.md", "table3.csv", "cases.csv", "montage-phantom-segmentation.png"} <= artifacts
    tags = registry.get_model_version("mvg", "1").tags
    assert float(tags["eval.phantom-segmentation.miou"]) == pytest.approx(model, rel=1e-5)
    assert float(tags["baseline.phantom-segmentation.miou"]) == pytest.approx(baseline, rel=1e-5)
    assert float(tags["baseline.phantom-synthesis.psnr"]) == pytest.approx(first["baselines"]["phantom-synthesis"], rel=1e-5)
    assert tags["promotion"] == "rejected" and tags["promotion.reason"] == first["reason"]
    card = registry.get_model_version("mvg", "1").description  # the model card, rewritten by evaluation and promotion
    assert f"| phantom-segmentation | mIoU | {model:.4g} | {baseline:.4g} (copy-prompt) |" in card
    assert f"Not promoted: {first['reason']}." in card
    logged = registry.get_logged_model(logged_model_id(registry.tracking_uri, "mvg", "1"))
    assert {"phantom-segmentation.model.mIoU", "phantom-synthesis.identity.PSNR"} <= {m.key for m in logged.metrics}

    # the same weights score the same; better than a (worse) champion does not help a candidate that
    # loses to its baselines: the gate comes first
    registry.set_registered_model_alias("mvg", "champion", "1")
    registry.set_model_version_tag("mvg", "1", "eval.phantom-segmentation.miou", "0.0")
    registry.set_model_version_tag("mvg", "1", "eval.phantom-synthesis.psnr", "0.0")
    second = evaluate_flow("models:/mvg/2", store=str(phantom_store), max_cases=1, draws=2)
    assert second["scores"] == pytest.approx(first["scores"]) and second["baselines"] == pytest.approx(first["baselines"])
    assert not second["promoted"] and second["champion"] == "1" and "champion" not in second["reason"]
    assert registry.get_model_version("mvg", "2").tags["promotion"] == "rejected"


def test_evaluate_refuses_unknown_datasets_and_models(registry, phantom_store, prefect_server):
    from flows.evaluate import evaluate_flow

    with pytest.raises(ValueError, match="no stored dataset nope"):
        evaluate_flow("models:/mvg/1", store=str(phantom_store), datasets=["nope"])
    with pytest.raises(ValueError, match="does not resolve"):
        evaluate_flow("models:/mvg/9", store=str(phantom_store))


def test_promote_runs_alone_on_the_scores_recorded_on_the_versions(registry, prefect_server):
    from flows.promote import promote_flow

    with pytest.raises(ValueError, match="no evaluation recorded"):
        promote_flow("models:/mvg/1")
    with pytest.raises(ValueError, match="registry version"):
        promote_flow("/a/folder/of/weights")
    for version, miou, psnr in (("1", "0.70", "20.0"), ("2", "0.72", "19.99")):
        registry.set_model_version_tag("mvg", version, "eval.acdc.miou", miou)
        registry.set_model_version_tag("mvg", version, "eval.brats.psnr", psnr)
        registry.set_model_version_tag("mvg", version, "eval.run_id", "not-a-score")
    # evaluated before baselines were recorded: refused, and told what to do
    unknown = promote_flow("models:/mvg/1")
    assert not unknown["promoted"] and unknown["reason"] == "no baseline scores recorded; re-run mvg evaluate"
    assert registry.get_model_version("mvg", "1").tags["promotion.reason"] == unknown["reason"]

    for version in ("1", "2"):
        registry.set_model_version_tag("mvg", version, "baseline.acdc.miou", "0.5")
        registry.set_model_version_tag("mvg", version, "baseline.brats.psnr", "15.0")
    first = promote_flow("models:/mvg/1")
    assert first["promoted"] and first["reason"].endswith("no champion yet")
    assert "acdc miou 0.7 vs copy-prompt 0.5" in first["reason"] and "brats psnr 20 vs identity 15" in first["reason"]
    tags = registry.get_model_version("mvg", "1").tags
    assert tags["promotion"] == "champion" and tags["promotion.reason"] == first["reason"]

    every = promote_flow("models:/mvg/2")  # 0.01 dB worse on brats: `every` says no
    assert not every["promoted"] and "worse than the champion on brats psnr" in every["reason"] and every["champion"] == "1"
    assert registry.get_model_version("mvg", "2").tags["promotion"] == "rejected"
    # the same figures from an evaluation that could not score every case: not promoted, reason recorded
    registry.set_model_version_tag("mvg", "2", "eval.failed_cases", "1")
    failed = promote_flow("models:/mvg/2", rule="mean")
    assert not failed["promoted"] and failed["champion"] == "1" and "1 failed test case(s)" in failed["reason"]
    tags = registry.get_model_version("mvg", "2").tags
    assert tags["promotion"] == "rejected" and tags["promotion.reason"] == failed["reason"]
    assert str(registry.get_model_version_by_alias("mvg", "champion").version) == "1"
    registry.set_model_version_tag("mvg", "2", "eval.failed_cases", "0")  # as a clean re-evaluation records it
    mean = promote_flow("models:/mvg/2", rule="mean")  # +0.02 mIoU outweighs -0.01 dB on the mean
    assert mean["promoted"] and str(registry.get_model_version_by_alias("mvg", "champion").version) == "2"
    assert promote_flow("models:/mvg/2")["reason"] == "already the champion"


def test_mvg_evaluate_prints_the_tables_and_the_decision(registry, phantom_store, prefect_server, capsys):
    from flows.cli import main

    assert main(["evaluate", "--model", "models:/mvg/1", "--store", str(phantom_store), "--max-cases", "1"]) == 0
    out = capsys.readouterr().out
    assert "Segmentation, mIoU (paper Table 2)" in out and "| copy-prompt |" in out and "| identity |" in out
    assert "version 1: not promoted (does not beat its baseline on " in out and " vs copy-prompt " in out
    assert main(["promote", "--model", "models:/mvg/1"]) == 0
    assert "version 1: not promoted (does not beat its baseline on " in capsys.readouterr().out

    assert main(["evaluate", "--model", "models:/mvg@nope", "--store", str(phantom_store)]) == 2
    assert "models:/mvg@nope does not resolve" in capsys.readouterr().err
    assert main(["evaluate", "--model", "models:/mvg/1", "--store", str(phantom_store), "--datasets", "nope"]) == 2
    assert "no stored dataset nope" in capsys.readouterr().err


def test_a_damaged_test_case_is_a_failed_case_and_the_others_are_scored(registry, phantom_store, prefect_server, tmp_path, capsys):
    import shutil

    from flows.cli import main
    from flows.evaluate import evaluate_flow
    from storage.store import ZarrStore

    store = tmp_path / "store"
    shutil.copytree(phantom_store, store)
    damaged = ZarrStore(store).dataset("phantom-segmentation").cases("test")[0]
    shard = store / "phantom-segmentation.zarr" / damaged / "image" / "0" / "c" / "0" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[:-100])  # cut short: its index is gone

    summary = evaluate_flow("models:/mvg/1", store=str(store), promote=False)
    assert [(row["dataset"], row["case"]) for row in summary["failed"]] == [("phantom-segmentation", damaged)]
    assert summary["failed"][0]["reason"].startswith(f"phantom-segmentation/{damaged}/image: shard truncated: ")
    assert list(summary["scores"]) == ["phantom-synthesis"], "the other cases are still scored"
    assert "failed.csv" in {a.path for a in registry.list_artifacts(summary["run_id"])}
    assert registry.get_run(summary["run_id"]).data.metrics["failed_cases"] == 1
    assert registry.get_model_version("mvg", "1").tags["eval.failed_cases"] == "1"
    umask = os.umask(0o022)
    os.umask(umask)
    artifacts = Path(urlparse(registry.get_run(summary["run_id"]).info.artifact_uri).path)
    for table in ("failed.csv", "cases.csv"):  # MLflow copies them with their mode: the umask's, not 0600
        assert (artifacts / table).stat().st_mode & 0o777 == 0o666 & ~umask, table

    # promotion reads the count: refused for it even where the recorded figures would pass
    from flows.promote import promote_flow

    registry.set_model_version_tag("mvg", "1", "baseline.phantom-synthesis.psnr", "-1.0")
    refused = promote_flow("models:/mvg/1")
    assert not refused["promoted"] and refused["reason"].startswith("its evaluation had 1 failed test case(s)")
    assert registry.get_model_version("mvg", "1").tags["promotion.reason"] == refused["reason"]

    assert main(["evaluate", "--model", "models:/mvg/1", "--store", str(store), "--no-promote"]) == 1
    out = capsys.readouterr().out
    assert "Image-to-image tasks (paper Table 3)" in out
    assert "1 test case(s) failed, not scored" in out and f"phantom-segmentation/{damaged}/image: shard truncated: " in out
