"""`mvg predict`: the command line face of `mvg.predict` (contract: docs/architecture.md, "CLI contract").

    mvg predict --model URI --prompt-image P --prompt-target T [--prompt-image P2 --prompt-target T2 ...]
                --input X --output Y [--task T] [--normalisation auto|ct|percentile]
                [--batch-size N] [--device cpu|cuda]

The inputs are read and checked before the model is loaded, so a wrong file name costs no model
download; any refusal is one line on stderr, exit status 2, and no output file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

# light imports only: the parser is built for every `mvg` command, torch loads when predict runs
from mvg.config import TASKS
from mvg.names import CHAMPION, alias_uri, version_uri
from storage.specs import NORMALISATIONS

NORMALISATION_CHOICES = ("auto", *NORMALISATIONS)  # mvg.predict.NORMALISATION_CHOICES, without torch
EXIT_BAD_INPUT = 2


def add_predict_parser(commands) -> argparse.ArgumentParser:
    """Add the `predict` subcommand to an argparse subparsers object; returns its parser."""
    predict = commands.add_parser(
        "predict",
        help="paint a scan from labelled examples; the output lies in the scan's own geometry",
        description=(
            "Paint the target of every slice of --input from one or more prompt pairs (an image and "
            "its target: a label map for segmentation, an image otherwise). Inputs: NIfTI, a DICOM "
            "series folder, PNG/JPG and the other formats ingest reads. The output has the input's "
            "geometry: NIfTI with its affine and shape (.nii.gz / .nii), or PNG for a 2-D input."
        ),
    )
    predict.add_argument("--model", required=True, help=f"MLflow model URI ({alias_uri(CHAMPION)}, {version_uri(3)}, "
                         "runs:/RUN_ID/model) or a folder: saved weights, a downloaded MLflow model or a training checkpoint")
    predict.add_argument("--prompt-image", action="append", required=True, type=Path, metavar="P",
                         help="prompt image; repeat with --prompt-target for more pairs (k-shot)")
    predict.add_argument("--prompt-target", action="append", required=True, type=Path, metavar="T",
                         help="target of the prompt image given in the same position (label map for segmentation)")
    predict.add_argument("--input", required=True, type=Path, metavar="X", help="the scan to paint")
    predict.add_argument("--output", required=True, type=Path, metavar="Y", help="file to write: .nii.gz, .nii or .png")
    predict.add_argument("--task", default="segmentation", choices=TASKS, help="default: segmentation")
    predict.add_argument("--normalisation", default="auto", choices=NORMALISATION_CHOICES,
                         help="intensity scaling to [0, 1]: ct window, percentiles, or auto per file (default)")
    predict.add_argument("--connected-classes", type=_class_list, default=(), metavar="C,C",
                         help="segmentation classes that are one structure in the scan (e.g. 1,2,3 for the "
                         "ventricles and myocardium): each keeps only its largest connected component")
    predict.add_argument("--batch-size", type=int, default=16, help="slices painted at once")
    predict.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda where there is one")
    predict.set_defaults(run=run_predict)
    return predict


def _class_list(text: str) -> tuple[int, ...]:
    try:
        classes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of class values, e.g. 1,2,3") from None
    if any(value <= 0 for value in classes):
        raise argparse.ArgumentTypeError(f"class values are positive (0 is background), got {text!r}")
    return classes


def run_predict(args: argparse.Namespace) -> int:
    """Run `mvg predict` for parsed arguments; prints what it wrote. Returns the exit status."""
    try:
        prediction = _predict(args)
    except (FileNotFoundError, KeyError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"mvg predict: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for line in describe(prediction):
        print(line)
    return 0


def _predict(args: argparse.Namespace):
    from mvg.predict import (
        load_model,
        paint_prediction,
        prepare_prediction,
        resolve_device,
    )

    images, targets = args.prompt_image, args.prompt_target
    if len(images) != len(targets):
        raise ValueError(
            f"--prompt-image given {len(images)} time(s) but --prompt-target {len(targets)} time(s); "
            "give them in pairs, one target after each image"
        )
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = resolve_device(args.device)
    prepared = prepare_prediction(list(zip(images, targets)), args.input, args.output, args.task, args.normalisation,
                                  args.connected_classes)
    model = load_model(args.model, device)
    from tqdm.auto import tqdm

    bar = None

    def advance(slices: int) -> None:
        # the bar opens with the first painted batch: the input has passed every check by then, so
        # a refused input is one line of error, not a bar at 0 % above it
        nonlocal bar
        if bar is None:  # stderr: stdout holds only the lines that say what was written
            bar = tqdm(total=len(prepared.query), unit="slice", desc=f"predict {args.input.name}")
        bar.update(slices)

    try:
        return paint_prediction(model, prepared, args.batch_size, device, on_batch=advance)
    finally:
        if bar is not None:
            bar.close()


def describe(prediction) -> list[str]:
    """What a user wants to read after a prediction: the file, its shape and what it holds."""
    shape = " x ".join(str(s) for s in prediction.shape)
    if prediction.task == "segmentation":
        held = f"labels {', '.join(map(str, prediction.labels))}"
    else:
        low, high = prediction.value_range
        held = f"{prediction.task} image, values {low:.3g} to {high:.3g} of [0, 1]"
    lines = [f"wrote {prediction.path}: shape {shape} ({prediction.dtype}), {held}"]
    lines.append(f"input normalised with {prediction.input_normalisation}")
    for number, prompt in enumerate(prediction.prompts, start=1):
        lines.append(
            f"prompt {number}: {prompt.image_path} + {prompt.target_path}, slice {prompt.slice_index + 1} "
            f"of {prompt.slices}, normalised with {prompt.normalisation}"
        )
    if prediction.task == "segmentation":
        shown = {int(v) for prompt in prediction.prompts for v in np.unique(prompt.target)}
        unseen = sorted({c for prompt in prediction.prompts for c in prompt.classes_left_out} - shown)
        if unseen:
            lines.append(
                f"note: labels {', '.join(map(str, unseen))} are in the prompt volumes but on none of the chosen "
                "slices, so they cannot be painted; add a prompt pair whose slice shows them"
            )
    return lines
