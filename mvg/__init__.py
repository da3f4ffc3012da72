"""MVG: the model, its training and its use."""

import os

# The pipeline runs offline: MLflow would otherwise start a telemetry client on import.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
