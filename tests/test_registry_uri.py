"""`MLFLOW_REGISTRY_URI` puts the model registry apart from the runs, as MLflow's own clients do:
the pipeline's registry calls (mvg.tracking.client) follow it, its run calls stay on the tracking URI."""

from __future__ import annotations

from mlflow import MlflowClient

from mvg.tracking import alias_version, client, ensure_experiment, registry_uri, resolve_version


def test_registry_calls_go_to_mlflow_registry_uri_and_runs_stay_on_tracking(tmp_path, monkeypatch):
    tracking, registry = f"sqlite:///{tmp_path / 'runs.db'}", f"sqlite:///{tmp_path / 'registry.db'}"
    monkeypatch.setenv("MVG_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", registry)
    assert registry_uri() == registry

    mlflow = client()
    run = mlflow.create_run(ensure_experiment(mlflow))
    mlflow.create_registered_model("mvg")
    mlflow.create_model_version("mvg", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    mlflow.set_registered_model_alias("mvg", "candidate", "1")

    assert resolve_version(tracking, "models:/mvg@candidate") == ("mvg", "1")
    assert alias_version(tracking, "mvg", "candidate") == "1"
    only_registry = MlflowClient(tracking_uri=registry, registry_uri=registry)
    assert only_registry.get_registered_model("mvg").name == "mvg"
    only_tracking = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    assert only_tracking.search_registered_models() == [], "the model was registered beside the runs"
    assert only_tracking.get_run(run.info.run_id).info.run_id == run.info.run_id


def test_without_mlflow_registry_uri_the_registry_is_the_tracking_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    assert registry_uri(f"sqlite:///{tmp_path / 'mlflow.db'}") == f"sqlite:///{tmp_path / 'mlflow.db'}"
