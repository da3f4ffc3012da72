"""Few-shot fine-tuning: the sampler keeps to the chosen cases, and `mvg finetune` trains a registered
model on one case of a dataset (stored, or a folder it ingests) and registers a new version with its
lineage."""

from __future__ import annotations

import json

import pytest
import torch

from mvg.config import preset
from mvg.episodes import EpisodeSampler
from mvg.finetune import FinetuneSettings, few_shot_cases
from storage.store import ZarrStore

CONFIG = preset("tiny-cpu")


def test_the_sampler_draws_only_from_the_chosen_cases(phantom_store):
    first = few_shot_cases(phantom_store, ["phantom-segmentation"], 1)
    training = sorted(ZarrStore(phantom_store).dataset("phantom-segmentation").cases("train"))
    assert first == {"phantom-segmentation": training[:1]} and len(training) > 1
    sampler = EpisodeSampler([phantom_store], CONFIG.data, CONFIG.objective, datasets=list(first), cases=first)
    (case,) = first["phantom-segmentation"]
    for _ in range(40):
        episode = sampler.sample()
        assert episode.dataset == "phantom-segmentation"
        assert episode.source["query"][0] == case and {c for c, _ in episode.source["prompts"]} == {case}
    with pytest.raises(KeyError, match="no 'train' case nope"):
        EpisodeSampler([phantom_store], CONFIG.data, CONFIG.objective, cases={"phantom-segmentation": ["nope"]})


def test_finetune_settings_refuse_nonsense_and_keep_the_trained_config():
    for bad in ({"cases": 0}, {"steps": 0}, {"lr": 0.0}):
        with pytest.raises(ValueError, match="fine-tuning needs"):
            FinetuneSettings(**bad)
    tuned = FinetuneSettings(steps=5, lr=3e-5, warmup_steps=10).config(CONFIG)
    assert (tuned.optim.steps, tuned.optim.lr, tuned.optim.warmup_steps) == (5, 3e-5, 5)
    assert tuned.model == CONFIG.model and tuned.data == CONFIG.data


@pytest.mark.slow
def test_finetune_registers_a_new_version_with_its_lineage(registry, phantom_store, prefect_server):
    from flows.finetune import finetune_flow
    from mvg.loading import load_model

    summary = finetune_flow(["phantom-segmentation"], model_uri="models:/mvg/1", store=str(phantom_store), steps=4, lr=1e-3, warmup_steps=1)
    assert summary["version"] == "3" and summary["parent"] == "models:/mvg/1"
    tags = registry.get_model_version("mvg", "3").tags
    assert tags["lineage.parent"] == "models:/mvg/1"
    assert tags["lineage.parent_run_id"] == registry.get_model_version("mvg", "1").run_id
    assert json.loads(tags["finetune.cases"]) == summary["cases"] and len(summary["cases"]["phantom-segmentation"]) == 1
    assert str(registry.get_model_version_by_alias("mvg", "finetuned").version) == "3"
    card = registry.get_model_version("mvg", "3").description
    assert "Fine-tuned from `models:/mvg/1`" in card and "- Datasets (store version): `phantom-segmentation` (" in card
    assert registry.get_run(summary["run_id"]).data.metrics["loss"] > 0

    parent, child = load_model("models:/mvg/1"), load_model("models:/mvg/3")
    changed = [name for name, weight in child.state_dict().items() if not torch.equal(weight, parent.state_dict()[name])]
    assert changed, "fine-tuning changed no weight"
    assert child.config == parent.config


@pytest.mark.slow
def test_mvg_finetune_ingests_a_folder_source_and_refuses_unknown_ones(registry, tmp_path, prefect_server, capsys):
    from flows.cli import main
    from storage.phantoms import write_phantoms

    folder = write_phantoms("xray", tmp_path / "new-dataset", cases=3, size=32)
    store = tmp_path / "finetune-store"
    assert main(["finetune", str(folder), "--model", "models:/mvg/2", "--store", str(store), "--size", "32", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "registered models:/mvg/3 (alias @finetuned)" in out and "fine-tuned models:/mvg/2 on new-dataset: xray_" in out
    assert registry.get_model_version("mvg", "3").tags["finetune.datasets"] == "new-dataset"

    assert main(["finetune", "no-such-dataset", "--model", "models:/mvg/2", "--store", str(store)]) == 2
    assert "no-such-dataset: neither a dataset in the store" in capsys.readouterr().err
