"""The paper's optimiser: AdamW with decoupled decay on weights only, warm-up then cosine."""

from __future__ import annotations

import pytest
import torch

from mvg.config import preset
from mvg.model import MVG
from mvg.optim import autocast, make_optimizer, warmup_cosine


def test_schedule_warms_up_then_decays_to_zero():
    values = [warmup_cosine(step, 10, 110) for step in range(111)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0) and values[60] == pytest.approx(0.5) and values[110] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:])), "monotone after warm-up"


def test_optimizer_decays_weights_not_norms_or_embeddings():
    config = preset("tiny-cpu")
    model = MVG(config)  # the whole config is accepted, not only its model section
    optimizer, schedule = make_optimizer(model, config.optim)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    plain_ids = {id(p) for p in plain["params"]}
    assert id(model.pos_embed) in plain_ids and id(model.mask_token) in plain_ids
    assert id(model.blocks[0].norm1.weight) in plain_ids and id(model.blocks[0].attn.qkv.bias) in plain_ids
    assert id(model.blocks[0].attn.qkv.weight) not in plain_ids
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    lrs = []
    for _ in range(config.optim.warmup_steps + 5):
        optimizer.step()
        schedule.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert max(lrs) == pytest.approx(config.optim.lr, rel=0.01)


def test_autocast_is_bf16_on_cuda_only():
    config = preset("large").optim
    with autocast(torch.device("cpu"), config):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
    if torch.cuda.is_available():
        with autocast(torch.device("cuda"), config):
            assert torch.ones(2, 2, device="cuda").matmul(torch.ones(2, 2, device="cuda")).dtype == torch.bfloat16
