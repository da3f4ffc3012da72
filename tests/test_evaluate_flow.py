"""The evaluate flow on phantom stores with a registered model: tables with baselines, MLflow
artifacts, version tags, and the champion alias moved by the rule."""

from __future__ import annotations

import pytest
import torch

from mvg.config import preset
from mvg.model import MVG

pytestmark = pytest.mark.slow

CONFIG = preset("tiny-cpu").with_overrides(model={"depth": 2, "embed_dim": 96, "num_heads": 3})


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """Two versions of `mvg` in a private SQLite registry: v1 and v2 with the same weights."""
    from mvg.pyfunc import log_mvg_model
    from mvg.tracking import client, ensure_experiment, tracking_uri

    monkeypatch.setenv("MVG_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow = client()
    experiment = ensure_experiment(mlflow)
    torch.manual_seed(0)
    model = MVG(CONFIG)
    for _ in range(2):
        run = mlflow.create_run(experiment)
        log_mvg_model(model, CONFIG, run.info.run_id, uri=tracking_uri())
    return mlflow


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
