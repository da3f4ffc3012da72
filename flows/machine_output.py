"""`--json`: stdout holds one JSON object, its last line, for a program to parse.

Everything else a command writes goes to stderr while it runs: its own report lines, and what
Prefect, Ray (which forwards its workers' output to the driver's stdout), MLflow and any child
process would have written to stdout. Redirecting file descriptor 1 catches what the children
inherit; redirecting `sys.stdout` catches Python writers that replaced the descriptor's stream.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """While the block runs, stdout (the descriptor and `sys.stdout`) writes to stderr."""
    sys.stdout.flush()
    kept = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(kept, 1)
        os.close(kept)


@contextlib.contextmanager
def json_output(enabled: bool | None) -> Iterator[Callable[[object], None]]:
    """With `enabled`, the block's stdout goes to stderr, and the value it hands to the function
    this yields is printed as JSON once the block ends; without, that function does nothing and
    stdout is the block's."""
    if not enabled:
        yield lambda value: None
        return
    kept: list[object] = []
    with stdout_to_stderr():
        yield kept.append
    if kept:
        print_json(kept[-1])


def print_json(value: object) -> None:
    """One line of JSON on stdout; values JSON has no type for (paths) as text, NaN as null."""
    print(json.dumps(_nan_as_null(value), default=str, allow_nan=False))
    sys.stdout.flush()


def _nan_as_null(value: object) -> object:
    """NaN and infinities (a score of no case) as null: JSON has no number for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_as_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_as_null(item) for item in value]
    return value
