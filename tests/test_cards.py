"""Model cards in the registry: each version's description tells its training, its scores beside
their baselines, its promotion and how to use it; the model's lists its versions. Checked through
MlflowClient, and as a user sees it: the MLflow UI's pages, rendered by headless Chromium."""

from __future__ import annotations

import html.parser
import re
import shutil
import subprocess

import pytest

from mvg.cards import Training, duration, record_training, refresh_cards
from mvg.tracking import client, ensure_experiment, record_evaluation
from tests import servers

TRAINED = Training(
    preset="tiny-cpu",
    overrides={"optim": {"steps": 200}, "model": {"depth": 2}},
    datasets={"phantom-segmentation": "3f2a9c", "phantom-synthesis": "77d0e1"},
    steps=200,
    episodes=3200,
    wall_s=252.4,
    run_id="",
)


def registered_versions(uri: str, count: int) -> list[str]:
    """`count` versions of `mvg` with training cards, cheaply: a run each and no model files."""
    mlflow = client(uri)
    experiment = ensure_experiment(mlflow)
    mlflow.create_registered_model("mvg")
    versions = []
    for _ in range(count):
        run = mlflow.create_run(experiment)
        version = str(mlflow.create_model_version("mvg", f"{run.info.artifact_uri}/model", run_id=run.info.run_id).version)
        mlflow.set_registered_model_alias("mvg", "candidate", version)
        record_training(uri, "mvg", version, Training(**{**vars(TRAINED), "run_id": run.info.run_id}))
        versions.append(version)
    return versions


def evaluated(uri: str, version: str, miou: float) -> None:
    """The tags the evaluate flow records, then its card refresh."""
    scores = {"phantom-segmentation": {"miou": miou}, "phantom-synthesis": {"psnr": 24.5}}
    baselines = {"phantom-segmentation": {"miou": 0.42}, "phantom-synthesis": {"psnr": 21.25}}
    record_evaluation(uri, "mvg", version, scores, run_id="evaluation-run", baselines=baselines)
    refresh_cards(uri, "mvg", version)


@pytest.fixture
def sqlite_registry(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("MVG_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_each_stage_rewrites_the_version_card_and_the_models(sqlite_registry, monkeypatch):
    from flows.promote import promote_flow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_registry)
    uri = sqlite_registry
    first, second = registered_versions(uri, 2)
    card = client(uri).get_model_version("mvg", first).description
    assert "Preset: `tiny-cpu`; overrides: `model.depth=2`, `optim.steps=200`" in card
    assert "`phantom-segmentation` (3f2a9c), `phantom-synthesis` (77d0e1)" in card
    assert "200 steps, 3,200 episodes, wall time 4 min 12 s" in card
    assert "Not evaluated yet: `mvg evaluate --model models:/mvg/1`" in card
    assert "mvg predict --model models:/mvg/1 --prompt-image" in card

    evaluated(uri, first, miou=0.61)
    card = client(uri).get_model_version("mvg", first).description
    assert "| phantom-segmentation | mIoU | 0.61 | 0.42 (copy-prompt) |" in card
    assert "| phantom-synthesis | PSNR (dB) | 24.5 | 21.25 (identity) |" in card
    assert "Not decided yet: `mvg promote --model models:/mvg/1`" in card

    promoted = promote_flow.fn("models:/mvg/1")  # the flow's own code, without a Prefect server
    assert promoted["promoted"]
    card = client(uri).get_model_version("mvg", first).description
    assert f"Promoted to `@champion`: {promoted['reason']}." in card and "vs copy-prompt 0.42" in card
    assert "aliases `@champion`" in card

    evaluated(uri, second, miou=0.30)  # worse than its baseline: refused, and the card says why
    refused = promote_flow.fn("models:/mvg/2")
    card = client(uri).get_model_version("mvg", second).description
    assert not refused["promoted"] and f"Not promoted: {refused['reason']}." in card
    assert "does not beat its baseline on phantom-segmentation miou" in card

    model = client(uri).get_registered_model("mvg").description
    assert "mvg predict --model models:/mvg@champion" in model
    assert "| 2 | @candidate | tiny-cpu | 200 | rejected |" in model
    assert "| 1 | @champion | tiny-cpu | 200 | champion |" in model


def test_a_version_registered_before_cards_still_gets_one(sqlite_registry):
    mlflow = client(sqlite_registry)
    run = mlflow.create_run(ensure_experiment(mlflow))
    mlflow.create_registered_model("mvg")
    mlflow.create_model_version("mvg", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    refresh_cards(sqlite_registry, "mvg", "1")
    card = mlflow.get_model_version("mvg", "1").description
    assert "Not recorded (registered before model cards were written)" in card and "mvg predict --model models:/mvg/1" in card
    assert "| 1 | - | - | - | not decided |" in mlflow.get_registered_model("mvg").description


@pytest.mark.parametrize(("seconds", "shown"), [(9.46, "9.5 s"), (252.4, "4 min 12 s"), (3725, "1 h 2 min")])
def test_durations_read_as_a_person_would_say_them(seconds, shown):
    assert duration(seconds) == shown


# ---------------------------------------------------------------------------- the UI, in a browser


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class _Text(html.parser.HTMLParser):
    """The text a reader sees: tags dropped, scripts and styles skipped, whitespace collapsed."""

    def __init__(self):
        super().__init__()
        self.parts, self._skip = [], 0

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag):
        self._skip -= tag in ("script", "style") and self._skip > 0

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def page_text(url: str) -> str:
    """The text of `url` once MLflow's JS app has rendered it (the DOM after a virtual-time budget:
    the page's requests answered and rendered, however fast or slow the machine)."""
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--virtual-time-budget=30000", "--dump-dom", url,
    ]
    dumped = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert dumped.returncode == 0, dumped.stderr[-3000:]
    reader = _Text()
    reader.feed(dumped.stdout)
    return re.sub(r"\s+", " ", "".join(reader.parts))


@pytest.mark.skipif(chromium() is None, reason="no Chromium on this machine (.ci/run installs Debian's chromium)")
def test_the_registry_ui_shows_the_cards(tmp_path, monkeypatch):
    from flows.promote import promote_flow

    with servers.mlflow_server(tmp_path) as (uri, _):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        (version,) = registered_versions(uri, 1)
        evaluated(uri, version, miou=0.61)
        promote_flow.fn("models:/mvg/1")

        text = page_text(f"{uri}/#/models/mvg/versions/{version}")
        for shown in (
            "Preset: tiny-cpu; overrides: model.depth=2, optim.steps=200",
            "200 steps, 3,200 episodes, wall time 4 min 12 s",
            "phantom-segmentation mIoU 0.61 0.42 (copy-prompt)",
            "phantom-synthesis PSNR (dB) 24.5 21.25 (identity)",
            "Promoted to @champion: beats its baseline on every dataset",
            "mvg predict --model models:/mvg/1 --prompt-image",
        ):
            assert shown in text, f"{shown!r} not on the version page: {text[:3000]}"

        text = page_text(f"{uri}/#/models/mvg")
        assert "mvg predict --model models:/mvg@champion" in text, text[:3000]
