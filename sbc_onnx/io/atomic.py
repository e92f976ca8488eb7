"""Atomic file writes: the one place every output (models, datasets, reports) is written through.

The content goes to a hidden temporary file beside the target, which is then renamed over it, so a reader
never sees a half-written file and a failed write leaves nothing behind. `mkstemp` creates files with mode
0600; the temporary file gets the mode a plain `open()` would give (0666 less the umask), or the existing
target's mode when it is replaced.
"""

from __future__ import annotations

import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ..errors import SbcError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def output_mode(path: Path) -> int:
    """The mode the written file should have: the existing file's, else 0666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without error it replaces `path`
    (with the mode of `output_mode`), otherwise it is removed."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise SbcError(f"output directory does not exist: {parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, output_mode(path))
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` and move the result to `path` atomically; errors other than SbcError are
    reported as one SbcError line naming the file."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            write(tmp)
    except SbcError:
        raise
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        raise SbcError(f"could not write {path}: {type(e).__name__}: {e}") from e
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))
