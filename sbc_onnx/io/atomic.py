"""Atomic file writes: the one place every output (models, datasets, reports) is written through.

The content goes to a hidden temporary file beside the target, which is then renamed over it, so a reader
never sees a half-written file and a failed write leaves nothing behind. The temporary file is created the
way `open(path, "w")` creates a file, mode 0666 less the umask (`tempfile.mkstemp` would make every output
0600); a file that is replaced keeps its mode.

An interrupt (SIGINT) or termination request (SIGTERM) that arrives while a file is being written is held
back until the writer returns, then acted on: the temporary file is removed, the target is left as it
was, and the signal takes effect (KeyboardInterrupt, or the SIGTERM handler). Raised at once, it could
leave the temporary file behind (SIGTERM's default action kills the process) or be swallowed: h5py runs
Python callbacks from C, where a KeyboardInterrupt is printed and dropped.
"""

from __future__ import annotations

import os
import secrets
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

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


_HELD = (signal.SIGINT, signal.SIGTERM)
TEST_PAUSE_ENV = "SBC_ONNX_TEST_WRITE_PAUSE"  # seconds to wait inside every write (tests/test_signals.py)


@contextmanager
def _signals_held() -> Iterator[list[int]]:
    """Record SIGINT/SIGTERM instead of acting on them while the block runs; yields the list of the
    signals that arrived. Only the main thread can set handlers: elsewhere nothing is held."""
    arrived: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield arrived
        return
    held = [s for s in _HELD if signal.getsignal(s) is not signal.SIG_IGN]  # an ignored signal stays ignored
    previous = {s: signal.signal(s, lambda signum, frame: arrived.append(signum)) for s in held}
    try:
        yield arrived
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _deliver(signum: int) -> None:
    """Act on a held signal now that its handler is back in place."""
    if signum == signal.SIGINT and signal.getsignal(signum) is signal.default_int_handler:
        raise KeyboardInterrupt
    signal.raise_signal(signum)  # the installed handler runs (or the default action: exit)
    raise KeyboardInterrupt  # a handler that returned (or an ignored signal): still stop this write


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without error it replaces `path`,
    otherwise it is removed. SIGINT/SIGTERM during the block: see the module docstring."""
    path = Path(path)
    if not path.parent.is_dir():
        raise SbcError(f"output directory does not exist: {path.parent}")
    with _signals_held() as arrived:  # from before the temporary file exists until it is renamed or removed
        tmp = _create_temp(path)
        try:
            yield tmp
            _test_pause()
            if not arrived:
                _keep_mode(path, tmp)
                os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            if not arrived:
                raise
        tmp.unlink(missing_ok=True)  # written but not renamed: a signal arrived
    if arrived:
        _deliver(arrived[0])  # the signal wins over whatever the writer raised meanwhile


def _test_pause() -> None:
    """Tests hit "a signal during the write" by making the write last (an environment variable)."""
    pause = os.environ.get(TEST_PAUSE_ENV)
    if pause:
        time.sleep(float(pause))


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` and move the result to `path` atomically. Whatever the writer raises is
    reported as one SbcError line naming the file (an SbcError passes through as it is)."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            write(tmp)
    except SbcError:
        raise
    except Exception as e:
        raise SbcError(f"could not write {path}: {type(e).__name__}: {e}") from e
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
