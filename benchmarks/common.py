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
