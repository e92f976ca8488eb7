"""Progress bars on stderr, shown only when stderr is a terminal.

Redirected to a file or a pipe, a bar would leave carriage-return debris mixed with the messages; there the
commands' own one-line-per-phase messages (`[1/3] calibrating ...`) are the whole progress report.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total} [{elapsed}<{remaining}]"


def on_terminal() -> bool:
    """Whether stderr is an interactive terminal (the only place a bar is drawn)."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(total: int | None, desc: str, enabled: bool = True):
    """A progress bar on stderr, or None when not `enabled` or stderr is not a terminal. Counts are shown
    rounded, so the fractional updates of `step_progress` move it smoothly."""
    if not (enabled and on_terminal()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, bar_format=_FORMAT, file=sys.stderr)


def step_progress(bar, batch: float, steps: int):
    """on_step callback advancing a per-sample progress bar smoothly through a batch's time steps."""
    if bar is None:
        return None
    step = batch / steps
    # the float steps of a batch can add up to a hair more than its size; tqdm warns once n passes total
    return lambda t: bar.update(min(step, bar.total - bar.n) if bar.total else step)


def iterate(items: Iterable[T], desc: str, unit: str, enabled: bool = True, total: int | None = None) -> Iterator[T]:
    """`items`, with a bar counting them when `enabled` and stderr is a terminal."""
    if not (enabled and on_terminal()):
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, unit=unit, leave=False, total=total, file=sys.stderr)
