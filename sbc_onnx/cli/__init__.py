"""`sbc-onnx` command line: a thin layer over the library.

Every command lives in its own module and registers itself on `cli`; `main` turns the library's
`SbcError` (bad input) into one clear line on stderr and a non-zero exit code instead of a traceback.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

import click

from ..distributed import guard
from ..errors import SbcError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sbc-onnx")
def cli() -> None:
    """Compress trained spiking neural networks (NIR / ONNX) in one shot with Spiking Brain Compression."""


# Command modules: importing them registers their commands on `cli`.
from . import compress_cmd, convert_cmd, data_cmd, hardware_cmd, model_cmd  # noqa: F401

STOP_SIGNALS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


class Stopped(BaseException):
    """SIGINT or SIGTERM, raised in the main thread so that every pending cleanup runs (an output being
    written is removed, see io/atomic.py). A BaseException, so no `except Exception` stops it, and not a
    KeyboardInterrupt, which click would turn into a blank line and "Aborted"."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum, frame):
    raise Stopped(signum)


@contextmanager
def _signals_raise():
    """SIGINT and SIGTERM raise Stopped while the command runs (SIGTERM's default action would kill the
    process without any cleanup). Only the main thread can set handlers; an ignored signal stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_stopped) for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; the exit code: 0 done, 1 a check found violations, 2 bad input or a lost Ray
    cluster, 130 interrupted (SIGINT), 143 terminated (SIGTERM)."""
    if guard.is_child():  # compress over Ray, run by distributed/guard.py: report how this process ends
        guard.child_setup()
        try:
            code = _main(argv)
        except BaseException:  # a bug's traceback: exit code 1, not a lost cluster
            guard.child_done(1)
            raise
        guard.child_done(code)
        return code
    return _main(argv)


def _main(argv: list[str] | None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        with _signals_raise():
            code = cli.main(args=args, prog_name="sbc-onnx", standalone_mode=False, obj={"argv": args})
    except SbcError as e:
        click.echo(f"error: {e}", err=True)
        return 2
    except click.UsageError as e:  # bad option or value: one line, like every other input error
        click.echo(f"error: {e.format_message()}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except Stopped as e:
        click.echo(STOP_SIGNALS[e.signum], err=True)
        return 128 + e.signum
    return code if isinstance(code, int) else 0  # click hands back a click.exceptions.Exit's code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
