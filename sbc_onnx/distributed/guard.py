"""The command line's guard against Ray ending the process: `compress --workers/--ray-address` runs in a child.

When the driver's raylet or the head's GCS dies, Ray's C++ core ends the driver itself (`_Exit(1)` after the
GCS reconnect timeout, `gcs_rpc_server_reconnect_timeout_s`, 60 s by default, or at once when the raylet's IPC
socket fails), from a thread Python never hears of: no exception, no `finally`, and Ray's own lines on stderr.
So the CLI re-runs the same command in a child process (`supervise`) and waits for it:

- the child's `cli.main` reports its exit code on a pipe just before returning (`child_done`), and where its
  `--resume` folder is (`child_resume`) before any work;
- a child that ends without reporting was ended by Ray (exit code 1, or SIGABRT on a failed check): the
  parent prints ONE line (the lost cluster, how many layers the --resume folder keeps and how to continue)
  and exits with code 2, as every SbcError does; killed by another signal (SIGKILL: out of memory), one
  line saying so and 128 + the signal; the folder's hidden temporary files of a write cut short are removed (workdir.py: every
  record is written after the arrays it vouches for, so what is listed is complete);
- the child's C-level stderr (Ray's C++ log lines) goes to a file; Python's stderr (progress, notes, errors)
  still goes to the terminal. The file is named in the lost-cluster line, copied to stderr otherwise.

Ray is not imported here. A Ray runtime already initialised in the calling process (a test's, a caller's
`ray.init`) is used in-process, unguarded (cli.compress_cmd decides).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

GUARD_ENV = "SBC_ONNX_RAY_GUARD"  # in the child: "<status pipe fd>:<file for the C-level stderr>"
LOST_EXIT = 2  # like every SbcError: one `error:` line


def is_child() -> bool:
    return bool(os.environ.get(GUARD_ENV))


def _status_fd() -> int | None:
    value = os.environ.get(GUARD_ENV, "")
    fd, _, _ = value.partition(":")
    return int(fd) if fd.isdigit() else None


def child_setup() -> None:
    """In the child, before Ray is imported: C-level writes to fd 2 go to the guard's file, Python's stderr to
    the original fd 2 (the terminal)."""
    _, _, path = os.environ.get(GUARD_ENV, "").partition(":")
    if not path:
        return
    sys.stderr.flush()
    real = os.dup(2)
    log = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(log, 2)
    os.close(log)
    sys.stderr = os.fdopen(real, "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                           errors="backslashreplace")


def _tell(line: str) -> None:
    fd = _status_fd()
    if fd is None:
        return
    try:
        os.write(fd, (line + "\n").encode())
    except OSError:
        pass  # the parent is gone: nobody to tell


def child_resume(path) -> None:
    """The child's --resume folder, for the parent's lost-cluster line (before any work)."""
    if is_child() and path is not None:
        _tell(f"resume\t{Path(path).resolve()}")


def child_done(code: int) -> None:
    """The child's exit code, reported as `cli.main` returns it: the child was not ended by Ray."""
    if is_child():
        sys.stderr.flush()
        _tell(f"exit\t{int(code)}")


def supervise(argv: list[str]) -> int:
    """Run `sbc-onnx *argv` in a child guarded as above; its exit code, or LOST_EXIT after one line."""
    r, w = os.pipe()
    fd, log = tempfile.mkstemp(prefix="sbc-onnx-ray-", suffix=".log")
    os.close(fd)
    env = {**os.environ, GUARD_ENV: f"{w}:{log}"}
    # its own process group (a new session: Popen's process_group needs Python 3.11): a Ctrl-C reaches the
    # child once, forwarded by the handlers below
    proc = subprocess.Popen([sys.executable, "-m", "sbc_onnx", *argv], pass_fds=(w,), env=env,
                            start_new_session=True)
    os.close(w)
    forward = {s: signal.signal(s, lambda signum, _frame: proc.send_signal(signum))
               for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        rc = proc.wait()
    finally:
        for s, h in forward.items():
            signal.signal(s, h)
    status = _read_all(r)
    return _outcome(rc, status, log)


def _read_all(fd: int) -> dict[str, str]:
    os.set_blocking(fd, False)
    chunks = []
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except BlockingIOError:
        pass  # a grandchild still holds the pipe open: what was written is all there is
    finally:
        os.close(fd)
    status = {}
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        key, _, value = line.partition("\t")
        status[key] = value
    return status


def _outcome(rc: int, status: dict[str, str], log: str) -> int:
    if "exit" in status:  # the child's main returned: its code stands, whatever Ray did at exit
        _copy_out(log)
        return int(status["exit"])
    if rc < 0 and -rc in (signal.SIGINT, signal.SIGTERM):
        _copy_out(log)
        return 128 - rc
    resume = status.get("resume")
    kept = "no --resume folder was given, so nothing is kept"
    if resume:
        from ..workdir import finished_layers, remove_temporaries

        remove_temporaries(resume)
        kept = (f"the {finished_layers(resume)} layer(s) finished are kept in {resume}: run the same command again "
                "(with --resume) to continue")
    if rc < 0 and -rc != signal.SIGABRT:  # Ray exits with code 1, or aborts on a failed check: not this
        name = signal.Signals(-rc).name
        print(f"error: the compression process was killed ({name}, e.g. by the out-of-memory killer); {kept}",
              file=sys.stderr, flush=True)
        return 128 - rc
    how = f"signal {-rc}" if rc < 0 else f"exit code {rc}"
    print(f"error: the Ray cluster was lost (Ray ended the compression process, {how}: its raylet or the head's "
          f"GCS went away); {kept}; Ray's messages: {log}", file=sys.stderr, flush=True)
    return LOST_EXIT


def _copy_out(log: str) -> None:
    """Ray's C-level lines of a run that ended normally, to stderr after all (they were not a lost cluster)."""
    try:
        text = Path(log).read_text(errors="replace")
        if text:
            sys.stderr.write(text)
            sys.stderr.flush()
        os.unlink(log)
    except OSError:
        pass
