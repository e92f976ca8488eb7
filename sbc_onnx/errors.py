"""User-facing errors: the CLI prints these as one line and exits non-zero."""


class SbcError(Exception):
    """An error caused by the user's input (file, option, data), not by a bug."""
