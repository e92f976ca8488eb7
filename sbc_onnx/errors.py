"""User-facing errors: the CLI prints these as one line and exits non-zero."""

from __future__ import annotations

import os
from pathlib import Path


class SbcError(Exception):
    """An error caused by the user's input (file, option, data), not by a bug."""


def existing_file(path: str | os.PathLike, what: str) -> Path:
    """Path of an existing regular file, else an SbcError naming what was expected."""
    p = Path(path)
    if not p.exists():
        raise SbcError(f"{what} not found: {p}")
    if p.is_dir():
        raise SbcError(f"{p} is a directory, expected {what}")
    return p
