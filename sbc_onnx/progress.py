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


def phase_line(text: str, enabled: bool = True) -> None:
    """One line on stderr for a phase of a long run (a calibration pass), terminal or not."""
    if enabled:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


class LayerProgress:
    """'layer k/n' with an ETA weighted by each layer's expected cost (e.g. `compress.cost.layer_flops`):
    the bar of `progress_bar` on a terminal (its description carries the ETA), else one line per layer
    on stderr. Layers restored from a work folder move the count but not the time per unit of cost."""

    def __init__(self, names: list[str], costs: list[float], desc: str, enabled: bool = True):
        self.names, self.costs, self.desc = list(names), [max(float(c), 1.0) for c in costs], desc
        self.bar = progress_bar(len(self.names), desc, enabled)
        self.lines = enabled and self.bar is None
        self.spent = 0.0   # seconds of the layers computed here
        self.worked = 0.0  # their summed cost
        self.left = sum(self.costs)

    def done(self, k: int, seconds: float | None, what: str = "") -> None:
        """Layer k (0-based) finished in `seconds` (None: restored, not computed)."""
        self.left -= self.costs[k]
        if seconds is not None:
            self.spent += seconds
            self.worked += self.costs[k]
        eta = _duration(self.spent / self.worked * self.left) if self.worked else "?"
        label = f"layer {k + 1}/{len(self.names)}"
        if self.bar is not None:
            self.bar.set_description(f"{self.desc} {label}, ETA {eta}")
        elif self.lines:
            took = "restored" if seconds is None else f"{seconds:.1f} s"
            sys.stderr.write(f"{self.desc} {label} {self.names[k]}{' ' + what if what else ''}: {took}; "
                             f"ETA {eta}\n")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"
