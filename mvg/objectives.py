"""The hybrid objective: masks for masked image modelling, block-causal attention for the
autoregressive path, and the weighted smooth-L1 loss on target pixels (paper 3.3, 4.1), with the
slot losses that join it on segmentation episodes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


# |target - image| at or below this is "unchanged": well under one grey level of 8 bits, yet above
# the float noise of resizing two copies of the same pixels alike
UNCHANGED_TOLERANCE = 1e-3


def block_mask(
    batch: int,
    grid: int,
    ratio: tuple[float, float],
    whole_probability: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(batch, grid * grid) bool, True where a target patch is masked.

    BEiT-style blocks: rectangles of random area and aspect are added until the sampled ratio
    (uniform in `ratio`) is reached, so masked regions are contiguous, as organs are; with
    probability `whole_probability` the whole target is masked (the inference situation).
    """
    masks = torch.zeros(batch, grid, grid, dtype=torch.bool)
    total = grid * grid
    for row in range(batch):
        if torch.rand((), generator=generator).item() < whole_probability:
            masks[row] = True
            continue
        low, high = ratio
        wanted = int(round(total * (low + (high - low) * torch.rand((), generator=generator).item())))
        for _ in range(100 * total):  # bounded: each try masks at least one new patch or is skipped
            if int(masks[row].sum()) >= wanted:
                break
            remaining = wanted - int(masks[row].sum())
            area = max(1.0, min(remaining, max(4.0, total * 0.1)) * (0.4 + 0.6 * torch.rand((), generator=generator).item()))
            aspect = math.exp(math.log(0.3) + (math.log(1 / 0.3) - math.log(0.3)) * torch.rand((), generator=generator).item())
            height = max(1, min(grid, int(round(math.sqrt(area * aspect)))))
            width = max(1, min(grid, int(round(math.sqrt(area / aspect)))))
            top = int(torch.randint(0, grid - height + 1, (), generator=generator))
            left = int(torch.randint(0, grid - width + 1, (), generator=generator))
            masks[row, top : top + height, left : left + width] = True
    return masks.flatten(1)


def block_causal_mask(images: int, tokens_per_image: int, device=None) -> torch.Tensor:
    """(N, N) bool attention mask, True = may attend: full inside an image, causal across images."""
    image_of_token = torch.arange(images, device=device).repeat_interleave(tokens_per_image)
    return image_of_token[:, None] >= image_of_token[None, :]


def patch_mask_to_pixels(mask: torch.Tensor, grid: int, patch: int) -> torch.Tensor:
    """(B, grid*grid) patch mask -> (B, 1, grid*patch, grid*patch) float pixel mask."""
    pixels = mask.view(-1, 1, grid, grid).float()
    return F.interpolate(pixels, scale_factor=patch, mode="nearest")


def target_weights(
    target: torch.Tensor,
    is_segmentation: torch.Tensor,
    background_weight: float,
    image: torch.Tensor | None = None,
    unchanged_weight: float = 1.0,
) -> torch.Tensor:
    """Per-pixel loss weights: segmentation background pixels count `background_weight` (organs are
    small; without it the model learns to paint background), and segmentation targets with no
    foreground at all count nothing (an empty prompt teaches no task).

    Image tasks' pixels that the target leaves as its `image` was count `unchanged_weight`: they are
    the image task's background. Inpainting changes only the region to fill, often a few per cent of
    the image; weighted alike, the copied rest dominates the loss and the model that copies the
    whole image is nearly optimal. Denoising and synthesis change almost every pixel, so their
    weighted means barely move."""
    seg = is_segmentation.view(-1, 1, 1, 1).to(target.dtype)
    foreground = (target > 0).to(target.dtype)
    image_weights = torch.ones_like(target)
    if image is not None and unchanged_weight != 1.0:
        changed = ((target - image).abs() > UNCHANGED_TOLERANCE).to(target.dtype)
        image_weights = changed + (1 - changed) * unchanged_weight
    weights = seg * (foreground + (1 - foreground) * background_weight) + (1 - seg) * image_weights
    empty = (foreground.flatten(1).sum(1) == 0) & is_segmentation
    return weights * (~empty).view(-1, 1, 1, 1).to(target.dtype)


def weighted_smooth_l1(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """Per-sample weighted mean of smooth L1 over pixels: (B,) losses (0 where all weights are 0).
    `beta` is one for the batch or a (B,) tensor, each sample's own."""
    if isinstance(beta, torch.Tensor):
        beta = beta.float().view(-1, *([1] * (prediction.dim() - 1)))
        difference = (prediction.float() - target.float()).abs()
        loss = torch.where(difference < beta, 0.5 * difference**2 / beta, difference - 0.5 * beta)
    else:
        loss = F.smooth_l1_loss(prediction.float(), target.float(), beta=beta, reduction="none")
    weighted = (loss * weights).flatten(1).sum(1)
    return weighted / weights.flatten(1).sum(1).clamp_min(1e-6)


def slot_likelihood(slot_logits: torch.Tensor, colours: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, sigma: float) -> torch.Tensor:
    """Per-sample weighted mean over pixels of -log sum_k p_k N(target; colour_k, sigma), the
    Gaussian's constant dropped: (B,) losses. slot_logits (B, K, H, W), colours (B, K), target and
    weights (B, 1, H, W). Minimal where each pixel sits in a slot whose colour is its level."""
    log_slots = torch.log_softmax(slot_logits.float(), dim=1)
    distance = (target.float() - colours.float()[:, :, None, None]) ** 2 / (2 * sigma**2)
    nll = -torch.logsumexp(log_slots - distance, dim=1, keepdim=True)
    return (nll * weights).flatten(1).sum(1) / weights.flatten(1).sum(1).clamp_min(1e-6)


def vote_dice(votes: torch.Tensor, target: torch.Tensor, levels: torch.Tensor, classes: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Per-sample soft Dice loss of the slots' class votes: (B,) losses, 1 - the mean Dice over the
    `classes` each sample scores (0 where it scores none).

    votes (B, C, H, W), each pixel's vote for each of the C `levels` (background first); target
    (B, 1, H, W) painted in those levels; classes (B, C) bool, the levels a sample scores (the
    foreground levels its prompt shows: the votes cannot name any other). Dice weighs each class
    alike whatever its size, so a thin myocardium counts as much as the cavity it rings, where a
    pixel loss is ruled by the large structures; a class the prompt shows but the query lacks
    scores 0 unless nothing votes for it."""
    members = (target.float() == levels.float().view(1, -1, 1, 1)).float()
    overlap = (votes.float() * members).flatten(2).sum(2)
    sizes = votes.float().flatten(2).sum(2) + members.flatten(2).sum(2)
    dice = (2 * overlap + smooth) / (sizes + smooth)
    scored = classes.float()
    mean_dice = (dice * scored).sum(1) / scored.sum(1).clamp_min(1.0)
    return (1 - mean_dice) * (scored.sum(1) > 0).float()
