"""Prefect flows: ingest, train, evaluate, promote, fine-tune, predict, ablate, verify.

Importing the package sets Prefect's defaults for every entry point (the CLI, the benchmarks, a
user's own script), before Prefect itself is imported and reads them."""

import os

# The pipeline runs offline: Prefect's temporary local server would otherwise send telemetry.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# its 20 s start-up limit is too short on a busy 2-core machine (seen while Dask and Ray ran)
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
