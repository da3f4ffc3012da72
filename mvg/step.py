"""One training step's loss: a collated batch of episodes through the MIM or AR path of the model.

Each episode already says its path (`is_mim`, sampled by the episode sampler from the mix: segmentation
100 % autoregressive, other tasks 90 % MIM). Rows of each path run together; the loss of an episode
is the mean over its target images (prompt targets and the query target) of the weighted smooth L1,
weighted by target (`ObjectiveConfig.unprompted_segmentation_weight`) and by pixel (`target_weights`); with slots
the slot likelihood, the prompt's own slot painting and the Dice of the class votes join it on
segmentation episodes.
"""

from __future__ import annotations

import torch
from torch import nn

from mvg.config import TASKS, ObjectiveConfig
from mvg.model import MVG, paint_slots, slot_class_shares, vote_slots
from mvg.objectives import block_mask, patch_mask_to_pixels, slot_likelihood, target_weights, vote_dice, weighted_smooth_l1
from mvg.pixels import show_void

INPAINTING = TASKS.index("inpainting")


def episode_losses(
    model: MVG, batch: dict[str, torch.Tensor], objective: ObjectiveConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B,) loss per episode."""
    losses = torch.zeros(batch["query_image"].shape[0], device=batch["query_image"].device)
    for is_mim in (True, False):
        rows = torch.nonzero(batch["is_mim"] == is_mim).flatten()
        if rows.numel():
            losses = losses.index_put((rows,), _path_losses(model, {k: v[rows] for k, v in batch.items()}, objective, is_mim, generator))
    return losses


def _path_losses(model: MVG, batch: dict, objective: ObjectiveConfig, is_mim: bool, generator) -> torch.Tensor:
    prompt_images, prompt_targets = batch["prompt_images"], batch["prompt_targets"]
    query_image, query_target = batch["query_image"], batch["query_target"]
    is_segmentation = batch["is_segmentation"]
    rows, pairs = prompt_images.shape[:2]
    config = model.config
    slot_logits = colours = prompt_slots = None
    # the model is shown an inpainting input's void at `void_level`; the losses weigh pixels by the raw image
    shown_prompts, shown_query = _shown_images(prompt_images, query_image, batch["task_index"], config.void_level)
    if is_mim:
        prompt_masks = block_mask(rows * pairs, config.grid, objective.mask_ratio, 0.0, generator).view(rows, pairs, -1)
        query_mask = block_mask(rows, config.grid, objective.mask_ratio, objective.whole_target_probability, generator)
        device = query_image.device
        prompt_masks, query_mask = prompt_masks.to(device), query_mask.to(device)
        prompt_out, query_out = model.forward_mim(
            shown_prompts, prompt_targets, shown_query, query_target, prompt_masks, query_mask, tasks=batch["task_index"]
        )
        prompt_pixels = patch_mask_to_pixels(prompt_masks.flatten(0, 1), config.grid, config.patch_size).view_as(prompt_targets)
        query_pixels = patch_mask_to_pixels(query_mask, config.grid, config.patch_size)
    else:
        prompt_out, query_out, slot_logits, colours, prompt_slots = model.forward_ar(
            shown_prompts, prompt_targets, shown_query, with_slots=True, tasks=batch["task_index"]
        )
        prompt_pixels, query_pixels = torch.ones_like(prompt_targets), torch.ones_like(query_target)

    beta = _smooth_l1_betas(objective, batch["task_index"])

    def loss(prediction, target, image, pixels):
        weights = target_weights(target, is_segmentation, objective.background_weight, image, objective.unchanged_weight)
        return weighted_smooth_l1(prediction, target, weights * pixels, beta)

    per_target = [loss(query_out, query_target, query_image, query_pixels)]
    per_target += [loss(prompt_out[:, p], prompt_targets[:, p], prompt_images[:, p], prompt_pixels[:, p]) for p in range(pairs)]
    weights = torch.ones(rows, len(per_target), device=query_image.device)
    if not is_mim:  # Py_1 is painted from Px_1 alone: for segmentation it has no colours to read
        weights[:, 1] = torch.where(is_segmentation, objective.unprompted_segmentation_weight, 1.0)
    losses = (torch.stack(per_target, dim=1) * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-6)
    if not is_mim and colours is not None and objective.slot_likelihood_weight:
        pixel_weights = target_weights(query_target, is_segmentation, objective.background_weight)
        likelihood = slot_likelihood(slot_logits, colours, query_target, pixel_weights, objective.slot_sigma)
        losses = losses + objective.slot_likelihood_weight * torch.where(is_segmentation, likelihood, 0.0)
    if not is_mim and colours is not None and objective.prompt_slot_weight:
        # the first prompt painted in the colours its own slots read from it: exact only where
        # its slots are pure, each holding one class (whatever colour the episode gave it)
        own = paint_slots(prompt_slots, colours)
        losses = losses + objective.prompt_slot_weight * torch.where(
            is_segmentation, loss(own, prompt_targets[:, 0], prompt_images[:, 0], 1.0), 0.0
        )
    if not is_mim and colours is not None and objective.vote_dice_weight and bool(is_segmentation.any()):
        dice = _vote_dice(slot_logits, prompt_slots, prompt_targets[:, 0], query_target, is_segmentation)
        losses = losses + objective.vote_dice_weight * dice
    return losses


def _smooth_l1_betas(objective: ObjectiveConfig, tasks: torch.Tensor) -> float | torch.Tensor:
    """The smooth L1's beta: one for the batch, or each row's task's (`task_smooth_l1_beta`)."""
    if not objective.task_smooth_l1_beta:
        return objective.smooth_l1_beta
    by_task = [objective.task_smooth_l1_beta.get(task, objective.smooth_l1_beta) for task in TASKS]
    return torch.tensor(by_task, device=tasks.device)[tasks]


def _vote_dice(slot_logits, prompt_slots, prompt_target, query_target, is_segmentation) -> torch.Tensor:
    """(B,) soft Dice loss of the query's class votes on segmentation rows (0 on the others), each
    row scored on the foreground levels its first prompt shows. The levels are those the batch's
    segmentation prompts are painted in: whatever the colouring, votes name only what a prompt shows."""
    levels = torch.unique(torch.cat([prompt_target[is_segmentation].flatten(), prompt_target.new_zeros(1)]))
    shown = (prompt_target.flatten(1)[:, :, None] == levels).any(dim=1) & is_segmentation[:, None]
    shown[:, 0] = False  # background: its Dice is ruled by its size, which Dice is used to escape
    votes = vote_slots(slot_logits, slot_class_shares(prompt_slots[:, None], prompt_target[:, None], levels))
    return vote_dice(votes, query_target, levels, shown)


def _shown_images(prompt_images: torch.Tensor, query_image: torch.Tensor, tasks: torch.Tensor, void_level: float):
    """The pairs' images as the model is shown them: inpainting rows' voids at `void_level`."""
    if void_level == 0:
        return prompt_images, query_image
    inpainting = (tasks == INPAINTING).to(query_image.device)
    return (
        torch.where(inpainting[:, None, None, None, None], show_void(prompt_images, void_level), prompt_images),
        torch.where(inpainting[:, None, None, None], show_void(query_image, void_level), query_image),
    )


class HybridObjective(nn.Module):
    """The model with its training objective as `forward`: what DistributedDataParallel wraps.

    DDP synchronises gradients only through the wrapped module's `forward`, and MVG has two
    training paths (`forward_mim`, `forward_ar`) plus inference; this module gives the whole
    step one entry point."""

    def __init__(self, model: MVG, objective: ObjectiveConfig):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        return episode_losses(self.model, batch, self.objective, generator)


def loss_by_task(losses: torch.Tensor, task_index: torch.Tensor) -> dict[str, float]:
    """Mean loss per task present in the batch, for logging."""
    return {
        task: float(losses[task_index == index].mean())
        for index, task in enumerate(TASKS)
        if bool((task_index == index).any())
    }
