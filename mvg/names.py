"""The names the pipeline shares with MLflow: the registered model, its aliases, the experiments.

Training registers, evaluation tags, promotion moves aliases, fine-tuning adds versions and the
command line prints where to look; each reads these names from here, so a rename is one edit and
no two stages can disagree about what a model or an experiment is called.
"""

from __future__ import annotations

REGISTERED_MODEL = "mvg"

# aliases of its versions: what training registers, what evaluation promotes, what fine-tuning adds
CANDIDATE = "candidate"
CHAMPION = "champion"
FINETUNED = "finetuned"

# MLflow experiments
TRAINING_EXPERIMENT = "mvg"  # training and fine-tuning runs
EVALUATION_EXPERIMENT = "mvg-evaluation"
ABLATION_EXPERIMENT = "mvg-ablation"


def alias_uri(alias: str, name: str = REGISTERED_MODEL) -> str:
    """The registry URI of the version an alias points at: `models:/mvg@candidate`."""
    return f"models:/{name}@{alias}"


def version_uri(version: str | int, name: str = REGISTERED_MODEL) -> str:
    """The registry URI of one version: `models:/mvg/3`."""
    return f"models:/{name}/{version}"
