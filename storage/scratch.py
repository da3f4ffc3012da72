"""Scratch files beside an output, written whole and then renamed over it.

`tempfile.mkstemp` creates files that only their owner may read (mode 0600), whatever the umask:
right for secrets, wrong for a file that becomes an output once renamed into place. An output
should read like any other file its user writes (0644 under the usual umask 022), so scratch
files here are created with mode 0666 and the kernel applies the umask, as it does for `open`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

ATTEMPTS = 100  # name clashes of 32 random bits are rare; a folder that refuses every name is not


def scratch_beside(path: str | Path, suffix: str = "") -> tuple[int, str]:
    """A new, empty file in `path`'s folder, hidden and named after `path` (with `suffix`, which
    some writers read the format from), open for writing: (descriptor, name), as mkstemp returns."""
    path = Path(path)
    for _ in range(ATTEMPTS):
        name = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), str(name)
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free scratch name for {path.name} after {ATTEMPTS} tries")
