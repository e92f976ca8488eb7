"""`sbc-onnx` command line: a thin layer over the library.

Every command lives in its own module and registers itself on `cli`; `main` turns the library's
`SbcError` (bad input) into one clear line on stderr and a non-zero exit code instead of a traceback.
"""

from __future__ import annotations

import sys

import click

from ..errors import SbcError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sbc-onnx")
def cli() -> None:
    """Compress trained spiking neural networks (NIR / ONNX) in one shot with Spiking Brain Compression."""


# Command modules: importing them registers their commands on `cli`.
from . import compress_cmd, convert_cmd, data_cmd, hardware_cmd, model_cmd  # noqa: E402,F401


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="sbc-onnx", standalone_mode=False)
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
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
