"""Painting targets for numpy inputs of any size: resize to the model, predict in batches, resize back.

`paint` is the one entry point the pyfunc model, the evaluate flow and `mvg predict` share. Prompts
and queries may each have their own size (a 512 x 512 volume slice against a 64 px model, a PNG
prompt against a NIfTI query); every image is resized to `config.image_size` on the way in and
every prediction to the query's size on the way out.

Segmentation prompt targets are label maps. They are coloured with one grey level per class the
prompts hold, and the painted query is decoded back to those label values by nearest level
(`Colouring.decode`) at the model's size; the class ids are then resized to the query's size by
nearest pixel. (Resizing the painted levels bilinearly before decoding gives smoother edges for
one class, but with several it invents classes along every edge.)
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from mvg.colouring import PALETTE_SIZE, Colouring
from mvg.config import TASKS
from mvg.model import MVG


def paint(
    model: MVG,
    prompt_images: np.ndarray,
    prompt_targets: np.ndarray,
    queries: np.ndarray,
    task: str = "segmentation",
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Paint the target of every query from k prompt pairs.

    prompt_images (k, H, W) in [0, 1]; prompt_targets (k, H, W): non-negative integer labels for
    segmentation, images in [0, 1] otherwise; queries (n, Hq, Wq) in [0, 1]. Returns (n, Hq, Wq):
    int64 label maps whose values are the prompts' label values (or 0) for segmentation, float32 in
    [0, 1] otherwise. `device` moves the model there (default: where the model already is)."""
    _check_inputs(model, prompt_images, prompt_targets, queries, task, batch_size)
    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    size = (model.config.image_size,) * 2
    segmentation = task == "segmentation"
    colouring = prompt_colouring(prompt_targets) if segmentation else None
    targets = colouring.colour(prompt_targets.astype(np.int64)) if segmentation else prompt_targets

    shown_images = resize_images(image_tensor(prompt_images, device), size)
    shown_targets = resize_images(image_tensor(targets, device), size, labels=segmentation)
    if segmentation:
        # a structure smaller than a model pixel may vanish; decoding then only offers the levels the
        # model was actually shown, so a lost class cannot claim the edges of the others
        shown_levels = np.unique(shown_targets.cpu().numpy())
        if not shown_levels.any():
            raise ValueError(
                f"the prompt targets' foreground vanishes when resized to the model's {size[0]} px; "
                "choose prompts where the structure is larger"
            )

    if segmentation and getattr(model, "colouring", "random") == "binary" and len(queries):
        # a binary-trained model paints one class per pass: paint_volume's per-class painting, with
        # each prompt pair as a one-slice volume that serves every query (imported here: it builds on
        # this module)
        from mvg.evaluation import paint_volume

        return paint_volume(model, list(prompt_images[:, None]), list(prompt_targets[:, None].astype(np.int64)),
                            queries, task, batch_size)

    count, height, width = queries.shape
    painted = np.empty((count, height, width), dtype=np.int64 if segmentation else np.float32)
    with evaluating(model), torch.inference_mode():
        for start in range(0, count, batch_size):
            batch = resize_images(image_tensor(queries[start : start + batch_size], device), size)
            rows = batch.shape[0]
            # the same prompts on every row: the model encodes them once per batch
            prediction = model.predict(
                batch,
                shown_images.unsqueeze(0).expand(rows, -1, -1, -1, -1),
                shown_targets.unsqueeze(0).expand(rows, -1, -1, -1, -1),
                task,
            )
            if segmentation:
                # decode at the model's size, then resize class ids by nearest pixel: resizing the
                # painted levels first would make every edge pass through the levels of other
                # classes and invent them there (mvg.evaluation measures it)
                labels = colouring.decode(prediction[:, 0].float().cpu().numpy(), shown_levels)
                labels = resize_images(torch.from_numpy(labels)[:, None].float(), (height, width), labels=True)
                painted[start : start + rows] = labels[:, 0].long().numpy()
            else:
                prediction = resize_images(prediction.float(), (height, width)).clamp(0, 1)[:, 0]
                painted[start : start + rows] = prediction.cpu().numpy()
    return painted


def prompt_colouring(prompt_targets: np.ndarray) -> Colouring:
    """One grey level per class present in the prompt targets, spread evenly over the random
    colouring's palette: the levels are ones the model was trained to read (the palette), and as far
    apart as the palette allows, which widens the margin of nearest-level decoding. One class gets
    level 1, the binary colouring."""
    classes = [int(value) for value in np.unique(prompt_targets) if value != 0]
    if not classes:
        raise ValueError("the prompt targets hold no foreground: segmentation needs at least one labelled pixel")
    if len(classes) > PALETTE_SIZE:
        raise ValueError(
            f"the prompt targets hold {len(classes)} classes but the palette has {PALETTE_SIZE} levels; "
            "paint the classes in groups"
        )
    steps = [round(PALETTE_SIZE * rank / len(classes)) for rank in range(1, len(classes) + 1)]
    return Colouring({value: step / PALETTE_SIZE for value, step in zip(classes, steps)})


def _check_inputs(
    model: MVG, prompt_images: np.ndarray, prompt_targets: np.ndarray, queries: np.ndarray, task: str, batch_size: int
) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    for name, array in (("prompt_images", prompt_images), ("prompt_targets", prompt_targets), ("queries", queries)):
        if not isinstance(array, np.ndarray) or array.ndim != 3:
            raise ValueError(f"{name} must be a numpy array (count, height, width), got shape {np.shape(array)}")
    if prompt_images.shape != prompt_targets.shape:
        raise ValueError(
            f"prompt_images {prompt_images.shape} and prompt_targets {prompt_targets.shape} must have the same shape"
        )
    pairs, most = prompt_images.shape[0], model.config.max_pairs - 1  # one pair index is the query's
    if not 1 <= pairs <= most:
        raise ValueError(f"{pairs} prompt pairs given; this model takes 1 to {most}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    images = [("prompt_images", prompt_images), ("queries", queries)]
    if task == "segmentation":
        if np.any(prompt_targets < 0) or np.any(prompt_targets != np.round(prompt_targets)):
            raise ValueError("segmentation prompt_targets must be label maps of non-negative integers")
    else:
        images.append(("prompt_targets", prompt_targets))
    for name, array in images:
        if array.size and not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
            raise ValueError(f"{name} must be images in [0, 1] (normalise intensities first)")


def image_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H, W) numpy -> (N, 1, H, W) float32 on `device`."""
    return torch.as_tensor(np.asarray(array, dtype=np.float32), device=device).unsqueeze(1)


def resize_images(images: torch.Tensor, size: tuple[int, int], labels: bool = False) -> torch.Tensor:
    """(N, 1, H, W) -> (N, 1, *size). Labels (here: coloured levels) take the nearest pixel, with
    centres aligned like the episodes' resize; images are bilinear, antialiased when shrinking so a
    512 px slice does not alias on a 64 px model."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    if labels:
        return F.interpolate(images, size=size, mode="nearest-exact")
    shrinking = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=shrinking)


@contextlib.contextmanager
def evaluating(model: MVG):
    """Eval mode for the call, then the caller's mode back (a training loop may paint to validate)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
