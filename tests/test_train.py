"""The per-worker training loop: it learns, checkpoints, and resumes exactly where it stopped."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from mvg.config import preset
from mvg.episodes import open_datasets, predefined_table
from mvg.pyfunc import load_weights, save_weights
from mvg.step import HybridObjective
from mvg.train import CHECKPOINT_FILE, TrainingState, load_checkpoint, load_trained, save_checkpoint, train

CONFIG = preset("tiny-cpu").with_overrides(
    model={"depth": 2, "embed_dim": 96, "num_heads": 3}, optim={"batch_size": 4, "warmup_steps": 5, "steps": 60}
)


@pytest.fixture
def store(phantom_store):
    return phantom_store


def test_training_lowers_the_loss_and_logs_what_it_did(store):
    logged = []
    # 100 steps: tiny-cpu's gated image residual starts nearer the targets (a lower first loss),
    # so 60 steps halved less of it (0.115 -> 0.072); with inpainting voids shown at -1 and the
    # decoder told its task, 100 steps took it from 0.250 to 0.155
    config = CONFIG.with_overrides(optim={"steps": 100})
    result = train(config, [store], log_every=5, on_log=logged.append)
    assert result.step == 100 and [row["step"] for row in logged] == list(range(5, 101, 5))
    first, last = logged[0]["loss"], sum(row["loss"] for row in logged[-3:]) / 3
    assert last < 0.7 * first, (first, last)
    assert max(row["lr"] for row in logged) == pytest.approx(CONFIG.optim.lr, rel=0.05)
    assert all(row["episodes_per_s"] > 0 for row in logged)
    assert any("loss_segmentation" in row for row in logged) and any("loss_synthesis" in row for row in logged)


def test_resume_continues_bit_for_bit(store, tmp_path):
    short = CONFIG.with_overrides(optim={"steps": 12})
    straight = train(short, [store], checkpoint_dir=tmp_path / "straight", checkpoint_every=4)
    interrupted = train(short, [store], steps=8, checkpoint_dir=tmp_path / "resumed", checkpoint_every=4)
    assert interrupted.step == 8 and load_checkpoint(tmp_path / "resumed")["step"] == 8
    resumed = train(short, [store], checkpoint_dir=tmp_path / "resumed", checkpoint_every=4, log_every=1)
    assert [row["step"] for row in resumed.history] == [9, 10, 11, 12], "the resumed run starts at step 8, not 0"
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert not list((tmp_path / "resumed").glob(f".{CHECKPOINT_FILE}.*")), "no partial checkpoint left"


def crash_mid_save(monkeypatch) -> None:
    """torch.save writes part of the file, then fails as a full disk would."""

    def partial_save(state, file):
        opened = file if hasattr(file, "write") else open(file, "wb")
        opened.write(b"PK\x03\x04 half a checkpoint")
        opened.flush()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", partial_save)


def test_a_save_that_fails_midway_keeps_the_previous_checkpoint_and_leaves_no_partial(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"step": 4, "weights": torch.arange(3.0)})
    crash_mid_save(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path, {"step": 8, "weights": torch.zeros(3)})
    previous = load_checkpoint(tmp_path)
    assert previous["step"] == 4 and torch.equal(previous["weights"], torch.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE], "no partial checkpoint left"


def test_ray_is_handed_a_whole_checkpoint_or_none(tmp_path, monkeypatch):
    """Rank 0's report to Ray: a folder holding just the complete checkpoint; a save that fails
    midway reports nothing, so Ray's newest checkpoint (what a restart resumes from) stays the last good one."""
    import ray.train

    from mvg import distributed

    reported = []

    def report(metrics, checkpoint=None):
        folder = checkpoint.path
        reported.append((metrics["step"], sorted(os.listdir(folder)), load_checkpoint(folder)["step"]))

    monkeypatch.setattr(ray.train, "report", report)
    state = SimpleNamespace(checkpoint=lambda rank_states: {"step": 5, "weights": torch.ones(2)})
    distributed._report(state, {"step": 5}, rank=0)
    assert reported == [(5, [CHECKPOINT_FILE], 5)]
    crash_mid_save(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        distributed._report(state, {"step": 10}, rank=0)
    assert len(reported) == 1, "nothing reported for the failed save"


def test_gradient_accumulation_matches_one_large_batch(store):
    """Two micro-batches of 2 give the same step as one batch of 4 (segmentation only: AR episodes,
    whose loss draws no masks, so both runs see exactly the same episodes)."""
    segmentation = [store / "phantom-segmentation.zarr"]
    states = []
    for batch_size, accumulate in ((4, 1), (2, 2)):
        config = CONFIG.with_overrides(optim={"batch_size": batch_size, "accumulate": accumulate})
        state = TrainingState.create(config, segmentation)
        outcome = state.optimizer_step(HybridObjective(state.model, config.objective))
        assert outcome.step == 1 and len(outcome.losses) == 4
        # gradients, not weights: AdamW's first step barely depends on the gradient's scale
        states.append({name: p.grad.clone() for name, p in state.model.named_parameters() if p.grad is not None})
    assert states[0].keys() == states[1].keys()
    for name, gradient in states[0].items():
        assert torch.allclose(gradient, states[1][name], atol=1e-7, rtol=1e-4), name


def test_predefined_colours_travel_with_the_model(store, tmp_path):
    """Training with pre-defined colours writes its colour table into the config it checkpoints and
    saves, so evaluation prompts each dataset in the levels training gave it; fine-tuning on one
    dataset keeps the table it started from rather than building a smaller one."""
    config = CONFIG.with_overrides(objective={"colouring": "predefined"}, optim={"steps": 2})
    train(config, [store], checkpoint_dir=tmp_path / "run", checkpoint_every=2)
    model, trained, _ = load_trained(tmp_path / "run")
    expected = predefined_table(open_datasets([store])).datasets
    assert expected and trained.objective.colour_table == expected and model.colour_table == expected
    reloaded, saved = load_weights(save_weights(model, trained, tmp_path / "weights"))
    assert saved.objective.colour_table == expected and reloaded.colour_table == expected
    # a model trained on a larger store goes on with its own table, not one of this store's datasets
    larger = (("another-dataset", 3), *expected)
    tuned = TrainingState.create(trained.with_overrides(objective={"colour_table": larger}), [store])
    assert tuned.sampler.table.datasets == larger and tuned.config.objective.colour_table == larger
    random = TrainingState.create(CONFIG, [store])  # other colourings carry no table
    assert random.config.objective.colour_table == () and random.model.colour_table == ()
