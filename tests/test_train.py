"""The per-worker training loop: it learns, checkpoints, and resumes exactly where it stopped."""

from __future__ import annotations

import pytest
import torch

from mvg.config import preset
from mvg.step import HybridObjective
from mvg.train import CHECKPOINT_FILE, TrainingState, load_checkpoint, train

CONFIG = preset("tiny-cpu").with_overrides(
    model={"depth": 2, "embed_dim": 96, "num_heads": 3}, optim={"batch_size": 4, "warmup_steps": 5, "steps": 60}
)


@pytest.fixture
def store(phantom_store):
    return phantom_store


def test_training_lowers_the_loss_and_logs_what_it_did(store):
    logged = []
    # 100 steps: tiny-cpu's gated image residual starts nearer the targets (a lower first loss),
    # so 60 steps halved less of it (0.115 -> 0.072)
    config = CONFIG.with_overrides(optim={"steps": 100})
    result = train(config, [store], log_every=5, on_log=logged.append)
    assert result.step == 100 and [row["step"] for row in logged] == list(range(5, 101, 5))
    first, last = logged[0]["loss"], sum(row["loss"] for row in logged[-3:]) / 3
    assert last < 0.6 * first, (first, last)
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
