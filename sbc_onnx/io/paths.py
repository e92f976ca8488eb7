"""Output paths checked before any work: every command that writes asks `check_output` first, so a missing
or read-only directory, an output that is a directory, the input itself or an existing file without
--force is one clear SbcError at the start, not after calibration and compression."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import SbcError, existing_file

__all__ = ["check_output", "existing_file", "same_file"]


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether `a` and `b` name the same file (the same resolved path, or one file under two names)."""
    try:
        return Path(a).resolve() == Path(b).resolve() or (Path(a).exists() and Path(b).exists()
                                                          and os.path.samefile(a, b))
    except OSError:
        return False


def check_output(path: str | os.PathLike, *, what: str = "output", inputs: Iterable = (), force: bool = True,
                 make_dirs: bool = False) -> Path:
    """`path` as a Path if the command may write it; SbcError naming the problem otherwise.

    inputs     files the command reads: the output must be none of them (never overwritten, even with force)
    force      False: an existing file is refused ("use --force")
    make_dirs  the writer creates missing parent folders: the nearest existing ancestor must be writable
    """
    p = Path(path)
    for src in inputs:
        if src is not None and same_file(src, p):
            raise SbcError(f"refusing to overwrite the input {src}; choose another {what} path")
    if p.is_dir():
        raise SbcError(f"{what} {p} is a directory")
    if p.exists() and not force:
        raise SbcError(f"{p} exists; use --force to overwrite")
    parent = p.parent
    if make_dirs:
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
    elif not parent.exists():
        raise SbcError(f"cannot write {what} {p}: directory {parent} does not exist")
    if not parent.is_dir():
        raise SbcError(f"cannot write {what} {p}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SbcError(f"cannot write {what} {p}: directory {parent} is not writable")
    return p
