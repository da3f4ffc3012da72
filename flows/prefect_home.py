"""Where an `mvg` command's Prefect runs go when no Prefect server or home is configured.

Prefect then starts a temporary server on a database in its home (`~/.prefect` by default), apart
from the command's other results and shared by every checkout. Every command instead keeps its
runs in `$MVG_HOME/prefect`, beside the store, MLflow and Ray's checkpoints, where
`PREFECT_HOME=$MVG_HOME/prefect prefect server start` shows them. Prefect reads its settings when
it is imported, so this runs before anything imports it.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

# a Prefect server (or Prefect Cloud), or a home of the user's own: theirs, left alone
CONFIGURED = ("PREFECT_API_URL", "PREFECT_HOME")


def keep_runs_under(home: Path, environ: MutableMapping[str, str] = os.environ) -> Path | None:
    """Point Prefect's home at `home/prefect` unless the environment configures Prefect; returns
    the folder, or None when left alone. The profiles stay where they were (`~/.prefect/profiles.toml`
    unless `PREFECT_PROFILES_PATH` says otherwise), so a server URL set in the active profile
    still holds."""
    if any(environ.get(name) for name in CONFIGURED):
        return None
    folder = (home / "prefect").resolve()
    folder.mkdir(parents=True, exist_ok=True)  # Prefect creates only the last level
    environ.setdefault("PREFECT_PROFILES_PATH", str(Path("~/.prefect/profiles.toml").expanduser()))
    environ["PREFECT_HOME"] = str(folder)
    return folder
