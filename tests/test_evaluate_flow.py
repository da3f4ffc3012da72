"""The evaluate flow on phantom stores with a registered model: tables with baselines, MLflow
artifacts, version tags, and the champion alias moved by the rule."""

from __future__ import annotations

import pytest

from mvg.tracking import logged_model_id

pytestmark = pytest.mark.slow


def test_evaluate_writes_paper_tables_and_moves_the_champion_by_the_rule(registry, phantom_store, prefect_server):
    from flows.evaluate import evaluate_flow

    first = evaluate_flow("models:/mvg/1", store=str(phantom_store), max_cases=1, draws=2)
    table2, table3 = first["tables"]["table2"], first["tables"]["table3"]
    assert [row["method"] for row in table2] == ["model", "copy-prompt"] and "phantom-segmentation" in table2[0]
    assert "±" in table2[0]["phantom-segmentation"], "two draws give a spread"
    assert [row["method"] for row in table3] == ["model", "identity"] and "phantom-synthesis PSNR" in table3[0]
    assert first["promoted"] and first["reason"] == "no champion yet"
    assert registry.get_model_version_by_alias("mvg", "champion").version in (1, "1")

    artifacts = {a.path for a in registry.list_artifacts(first["run_id"])}
    assert {"table2.md", "table2.csv", "table3.md", "table3.csv", "cases.csv", "montage-phantom-segmentation.png"} <= artifacts
    tags = registry.get_model_version("mvg", "1").tags
    assert float(tags["eval.phantom-segmentation.miou"]) == pytest.approx(first["scores"]["phantom-segmentation"], rel=1e-5)
    assert tags["promotion"] == "champion"
    logged = registry.get_logged_model(logged_model_id(registry.tracking_uri, "mvg", "1"))
    assert {"phantom-segmentation.model.mIoU", "phantom-synthesis.identity.PSNR"} <= {m.key for m in logged.metrics}

    # the same weights score the same: at least as good, so v2 becomes champion ...
    second = evaluate_flow("models:/mvg/2", store=str(phantom_store), max_cases=1, draws=2)
    assert second["scores"] == pytest.approx(first["scores"])
    assert second["promoted"] and str(registry.get_model_version_by_alias("mvg", "champion").version) == "2"
    # ... unless the rule asks for more than the champion scored
    registry.set_registered_model_alias("mvg", "champion", "1")
    registry.set_model_version_tag("mvg", "1", "eval.phantom-segmentation.miou", "1.0")
    third = evaluate_flow("models:/mvg/2", store=str(phantom_store), max_cases=1, draws=2)
    assert not third["promoted"] and "phantom-segmentation" in third["reason"]
    assert str(registry.get_model_version_by_alias("mvg", "champion").version) == "1"
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
    assert promote_flow("models:/mvg/1")["reason"] == "no champion yet"

    every = promote_flow("models:/mvg/2")  # 0.01 dB worse on brats: `every` says no
    assert not every["promoted"] and "brats psnr" in every["reason"] and every["champion"] == "1"
    assert registry.get_model_version("mvg", "2").tags["promotion"] == "rejected"
    mean = promote_flow("models:/mvg/2", rule="mean")  # +0.02 mIoU outweighs -0.01 dB on the mean
    assert mean["promoted"] and str(registry.get_model_version_by_alias("mvg", "champion").version) == "2"
    assert promote_flow("models:/mvg/2")["reason"] == "already the champion"


def test_mvg_evaluate_prints_the_tables_and_the_decision(registry, phantom_store, prefect_server, capsys):
    from flows.cli import main

    assert main(["evaluate", "--model", "models:/mvg/1", "--store", str(phantom_store), "--max-cases", "1"]) == 0
    out = capsys.readouterr().out
    assert "Segmentation, mIoU (paper Table 2)" in out and "| copy-prompt |" in out and "| identity |" in out
    assert "version 1: promoted to @champion (no champion yet)" in out
    assert main(["promote", "--model", "models:/mvg/1"]) == 0
    assert "already the champion" in capsys.readouterr().out

    assert main(["evaluate", "--model", "models:/mvg@nope", "--store", str(phantom_store)]) == 2
    assert "models:/mvg@nope does not resolve" in capsys.readouterr().err
    assert main(["evaluate", "--model", "models:/mvg/1", "--store", str(phantom_store), "--datasets", "nope"]) == 2
    assert "no stored dataset nope" in capsys.readouterr().err
