"""Atomic file writes: the one place every output (models, datasets, reports) is written through.

The content goes to a hidden temporary file beside the target, which is then renamed over it, so a reader
never sees a half-written file and a failed write leaves nothing behind. The temporary file is created the
way `open(path, "w")` creates a file, mode 0666 less the umask (`tempfile.mkstemp` would make every output
0600); a file that is replaced keeps its mode.
"""

from __future__ import annotations

import os
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ..errors import SbcError


def _create_temp(path: Path) -> Path:
    """A new empty file with a unique hidden name beside `path`. It is created with mode 0666 so that the
    kernel applies the umask (querying the umask needs os.umask, which changes it for every thread)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def _keep_mode(path: Path, tmp: Path) -> None:
    """Give `tmp` the mode of the file it is about to replace, if there is one."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    os.chmod(tmp, mode)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without error it replaces `path`,
    otherwise it is removed."""
    path = Path(path)
    if not path.parent.is_dir():
        raise SbcError(f"output directory does not exist: {path.parent}")
    tmp = _create_temp(path)
    try:
        yield tmp
        _keep_mode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` and move the result to `path` atomically. Whatever the writer raises is
    reported as one SbcError line naming the file (an SbcError passes through as it is)."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            write(tmp)
    except SbcError:
        raise
    except Exception as e:  # noqa: BLE001 - the file formats' writers raise many types
        raise SbcError(f"could not write {path}: {type(e).__name__}: {e}") from e
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
