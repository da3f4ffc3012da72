"""Model cards: the registry's descriptions of the model `mvg` and of each of its versions.

Someone browsing the MLflow registry UI should learn what a version is without opening a run: the
preset and overrides it was trained with, the datasets and store versions it saw, how long it
trained, its evaluation scores beside their baselines, whether it was promoted and why, and how to
use it. The card is markdown (the UI renders it) and is written from what the registry holds, so
every stage can rewrite it: training records its facts as one version tag (`card.training`) and
writes the first card, evaluation and promotion add their tags and write it again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from mvg.names import CANDIDATE, CHAMPION, alias_uri, version_uri
from mvg.promotion import BASELINE_BY_METRIC, PRIMARY_METRIC
from mvg.tracking import baseline_metrics, client, evaluated_metrics, flatten

TRAINING_TAG = "card.training"  # the version's training facts as JSON: what the card's first section shows
METRIC_NAMES = {"miou": "mIoU", "psnr": "PSNR (dB)"}
TASK_BY_METRIC = {"miou": "segmentation", "psnr": "synthesis"}  # the --task of the usage example
LISTED_VERSIONS = 10  # the registered model's card lists the newest versions only


@dataclass(frozen=True)
class Training:
    """What a version was trained with, recorded when it is registered."""

    preset: str
    overrides: Mapping[str, object] = field(default_factory=dict)  # {"optim": {"steps": 200}} or flat {"optim.steps": 200}
    datasets: Mapping[str, str] = field(default_factory=dict)  # dataset -> its catalog (store) version
    steps: int = 0
    episodes: int = 0  # steps x global batch
    wall_s: float = 0.0  # from the run's start to registration
    run_id: str = ""
    parent: str | None = None  # the model a fine-tuned version came from

    @classmethod
    def from_json(cls, text: str) -> Training:
        return cls(**json.loads(text))


def store_datasets(versions: Mapping[str, str]) -> dict[str, str]:
    """{dataset: version} of the `store.<dataset>` entries among run tags (`mvg.tracking.store_versions`)."""
    return {key.removeprefix("store."): value for key, value in versions.items() if key.startswith("store.")}


def run_wall_s(uri: str, run_id: str) -> float:
    """Seconds since the run started: a training run's wall time when its model is registered (a
    run stopped and resumed counts the pause too)."""
    started = client(uri).get_run(run_id).info.start_time or 0
    return max(time.time() - started / 1000, 0.0) if started else 0.0


def record_training(uri: str, name: str, version: str, training: Training) -> None:
    """Keep `training` on the version and write its card and the model's."""
    client(uri).set_model_version_tag(name, version, TRAINING_TAG, json.dumps(asdict(training), sort_keys=True))
    refresh_cards(uri, name, version)


def refresh_cards(uri: str, name: str, *versions: str) -> None:
    """Rewrite the cards of `versions` and of the model from what the registry holds now."""
    mlflow = client(uri)
    for version in versions:
        mlflow.update_model_version(name, version, description=version_card_of(uri, name, version))
    mlflow.update_registered_model(name, description=model_card_of(uri, name))


# ---------------------------------------------------------------------------- reading the registry


def recorded_training(uri: str, name: str, version: str) -> Training | None:
    """The training facts recorded on a version (a fine-tuned version inherits its parent's preset)."""
    text = client(uri).get_model_version(name, version).tags.get(TRAINING_TAG)
    return Training.from_json(text) if text else None


def version_card_of(uri: str, name: str, version: str) -> str:
    found = client(uri).get_model_version(name, version)
    tags = found.tags
    training = Training.from_json(tags[TRAINING_TAG]) if TRAINING_TAG in tags else None
    return version_card(
        name,
        version,
        training,
        evaluated_metrics(uri, name, version),
        baseline_metrics(uri, name, version),
        promotion=tags.get("promotion"),
        reason=tags.get("promotion.reason"),
        aliases=list(found.aliases or []),
    )


def model_card_of(uri: str, name: str) -> str:
    mlflow = client(uri)
    versions = sorted(mlflow.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version), reverse=True)
    aliases: dict[str, list[str]] = {}  # search results carry no aliases: the model's own map has them
    for alias, version in (mlflow.get_registered_model(name).aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for found in versions[:LISTED_VERSIONS]:
        training = Training.from_json(found.tags[TRAINING_TAG]) if TRAINING_TAG in found.tags else None
        rows.append(VersionRow(str(found.version), aliases.get(str(found.version), []), training, found.tags.get("promotion")))
    return model_card(name, rows, total=len(versions))


# ---------------------------------------------------------------------------- markdown


def version_card(
    name: str,
    version: str,
    training: Training | None,
    scores: Mapping[str, Mapping[str, float]],
    baselines: Mapping[str, Mapping[str, float]],
    promotion: str | None = None,
    reason: str | None = None,
    aliases: list[str] = (),
) -> str:
    """The card of one version: training, evaluation, promotion, usage."""
    uri = version_uri(version, name)
    heading = f"**{name} version {version}**" + (f" · aliases {', '.join(f'`@{a}`' for a in sorted(aliases))}" if aliases else "")
    return "\n\n".join(
        [
            heading,
            "### Training\n\n" + training_section(training),
            "### Evaluation\n\n" + evaluation_section(uri, scores, baselines),
            "### Promotion\n\n" + promotion_section(uri, promotion, reason, bool(scores)),
            "### Use\n\n" + usage_section(uri, scores),
        ]
    ) + "\n"


def training_section(training: Training | None) -> str:
    if training is None:
        return "Not recorded (registered before model cards were written)."
    overrides = flatten(training.overrides)
    lines = [
        f"- Preset: `{training.preset}`; overrides: "
        + (", ".join(f"`{key}={value}`" for key, value in sorted(overrides.items())) if overrides else "none"),
        "- Datasets (store version): "
        + (", ".join(f"`{dataset}` ({version})" for dataset, version in sorted(training.datasets.items())) or "none recorded"),
        f"- {training.steps:,} steps, {training.episodes:,} episodes, wall time {duration(training.wall_s)}",
    ]
    if training.parent:
        lines.append(f"- Fine-tuned from `{training.parent}`")
    if training.run_id:
        lines.append(f"- MLflow run `{training.run_id}`")
    return "\n".join(lines)


def evaluation_section(uri: str, scores: Mapping[str, Mapping[str, float]], baselines: Mapping[str, Mapping[str, float]]) -> str:
    if not scores:
        return f"Not evaluated yet: `mvg evaluate --model {uri}`."
    rows = ["| dataset | metric | this model | baseline |", "| --- | --- | --- | --- |"]
    for dataset in sorted(scores):
        for metric, value in sorted(scores[dataset].items()):
            baseline = baselines.get(dataset, {}).get(metric)
            shown = "not recorded" if baseline is None else f"{baseline:.4g} ({BASELINE_BY_METRIC.get(metric, 'baseline')})"
            rows.append(f"| {dataset} | {METRIC_NAMES.get(metric, metric)} | {value:.4g} | {shown} |")
    return "\n".join(rows)


def promotion_section(uri: str, promotion: str | None, reason: str | None, evaluated: bool) -> str:
    if promotion == CHAMPION:
        return f"Promoted to `@{CHAMPION}`: {reason}."
    if promotion is not None:
        return f"Not promoted: {reason}."
    if evaluated:
        return f"Not decided yet: `mvg promote --model {uri}`."
    return "Not decided yet: evaluation comes first."


def usage_section(uri: str, scores: Mapping[str, Mapping[str, float]]) -> str:
    metrics = {metric for values in scores.values() for metric in values}
    task = TASK_BY_METRIC["miou"] if "miou" in metrics or not metrics else TASK_BY_METRIC["psnr"]
    return (
        "```\n"
        f"mvg predict --model {uri} --prompt-image PROMPT --prompt-target PROMPT_TARGET "
        f"--input SCAN --output OUTPUT --task {task}\n"
        "```\n\n"
        f"Tasks: {', '.join(sorted(PRIMARY_METRIC))}. From Python: "
        f'`mlflow.pyfunc.load_model("{uri}")` (see `mvg.pyfunc.MVGPythonModel`).'
    )


@dataclass(frozen=True)
class VersionRow:
    version: str
    aliases: list[str]
    training: Training | None
    promotion: str | None


def model_card(name: str, rows: list[VersionRow], total: int) -> str:
    """The registered model's card: what it is, how to use it, and its newest versions."""
    lines = [
        f"**{name}**: one in-context ViT (Medical Vision Generalist) that paints a query scan from a "
        "prompt pair: segmentation, synthesis, inpainting and denoising.",
        f"Use the champion: `mvg predict --model {alias_uri(CHAMPION, name)} --prompt-image PROMPT "
        "--prompt-target PROMPT_TARGET --input SCAN --output OUTPUT --task segmentation`; "
        f"the newest trained version is `{alias_uri(CANDIDATE, name)}`. Each version's page has its card.",
        "| version | aliases | preset | steps | promotion |\n| --- | --- | --- | --- | --- |",
    ]
    table = []
    for row in rows:
        aliases = ", ".join(f"@{a}" for a in sorted(row.aliases)) or "-"
        preset = row.training.preset if row.training else "-"
        steps = f"{row.training.steps:,}" if row.training else "-"
        table.append(f"| {row.version} | {aliases} | {preset} | {steps} | {row.promotion or 'not decided'} |")
    lines[-1] += "".join(f"\n{line}" for line in table)
    if total > len(rows):
        lines.append(f"({total - len(rows)} older version(s) not listed.)")
    return "\n\n".join(lines) + "\n"


def duration(seconds: float) -> str:
    """3725 -> '1 h 2 min', 252 -> '4 min 12 s', 9.5 -> '9.5 s'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"

