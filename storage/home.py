"""One data root, `MVG_HOME`, holds every local default: the Zarr store, MLflow, Ray results."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = "mvg-home"  # relative to the working directory, so a checkout keeps its own data


def mvg_home(home: str | Path | None = None) -> Path:
    """The data root, absolute: `home` if given, else `$MVG_HOME`, else ./mvg-home. Absolute because
    the paths derived from it travel to other processes with other working directories (Ray's
    storage path, MLflow's SQLite URI and artifact root, Prefect deployments)."""
    return Path(home or os.environ.get("MVG_HOME") or DEFAULT_HOME).expanduser().absolute()


def store_root(home: str | Path | None = None) -> Path:
    return mvg_home(home) / "store"
