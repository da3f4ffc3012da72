"""What every benchmark shares: a scratch folder and where the JSON result goes."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def scratch(work: Path | None, prefix: str) -> Iterator[Path]:
    """`work` if given (kept, so expensive inputs are reused), else a temporary folder removed after."""
    folder = Path(work or tempfile.mkdtemp(prefix=prefix))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    finally:
        if work is None:
            shutil.rmtree(folder, ignore_errors=True)


def machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version()}


def write_result(out: Path, results: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


def budgeted(config, stores: list, minutes: float, steps: int | None = None, calibration_steps: int = 30):
    """`config` with its schedule stretched to `steps`, or to the steps that fit `minutes` of
    training at the speed a short calibration run measures (its second log window, past the
    first steps' costs); warm-up at least 2 % of the steps."""
    from mvg.train import train

    if not steps:
        calibration = train(config.with_overrides(optim={"steps": calibration_steps}), stores, log_every=calibration_steps // 2)
        rate = calibration.history[-1]["episodes_per_s"]
        steps = max(50, int(minutes * 60 * rate / config.optim.batch_size))
        print(f"calibrated at {rate:.1f} episodes/s: {steps} steps fit {minutes:g} min", flush=True)
    return config.with_overrides(optim={"steps": steps, "warmup_steps": max(config.optim.warmup_steps, steps // 50)})


def read_result(path: Path) -> dict:
    """A benchmark's JSON result, or the command's exit naming the file and why it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"{path}: not a readable benchmark result ({error})") from None
