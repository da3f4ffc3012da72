"""One data root, `MVG_HOME`, holds every local default: the Zarr store, MLflow, Ray results.
`MVG_STORE` and `MVG_RAY_STORAGE` move the store and Ray Train's checkpoints elsewhere, an object
store included (`s3://bucket/mvg/store`, `s3://bucket/mvg/ray`): what a cluster's nodes all see."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from storage.location import Location

DEFAULT_HOME = "mvg-home"  # relative to the working directory, so a checkout keeps its own data


def mvg_home(home: str | Path | None = None) -> Path:
    """The data root, absolute: `home` if given, else `$MVG_HOME`, else ./mvg-home. Absolute because
    the paths derived from it travel to other processes with other working directories (Ray's
    storage path, MLflow's SQLite URI and artifact root, Prefect deployments)."""
    return Path(home or os.environ.get("MVG_HOME") or DEFAULT_HOME).expanduser().absolute()


def store_root(home: str | Path | None = None) -> str:
    """The store root: `$MVG_STORE` (a path or a URL) when set and no `home` is given, else
    `<home>/store`."""
    if home is None and os.environ.get("MVG_STORE"):
        return os.environ["MVG_STORE"]
    return str(mvg_home(home) / "store")


def chosen_store(store: str | Path | None = None) -> str:
    """The store root a command works on: `store` (a path or URL) when given, else `store_root()`;
    absolute, so it means the same in Ray and Dask workers."""
    return Location.of(store or store_root()).url


def ray_storage(home: str | Path | None = None) -> str:
    """Ray Train's storage path (checkpoints of every run): `$MVG_RAY_STORAGE` when set and no
    `home` is given, else `<home>/ray`. Every node of a cluster must reach it."""
    if home is None and os.environ.get("MVG_RAY_STORAGE"):
        return os.environ["MVG_RAY_STORAGE"]
    return str(mvg_home(home) / "ray")


def remote_cache() -> Path | None:
    """Where slice readers keep local copies of a remote store's shards: `$MVG_CACHE`, else
    `<temp>/mvg-cache`; `MVG_CACHE=off` reads every slice from the object store instead."""
    setting = os.environ.get("MVG_CACHE", "")
    if setting.lower() in ("off", "0", "false", "none"):
        return None
    return Path(setting).expanduser() if setting else Path(tempfile.gettempdir()) / "mvg-cache"
