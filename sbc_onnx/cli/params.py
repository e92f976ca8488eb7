"""Click parameter types shared by the commands: numbers checked (finite, in range) before any work."""

from __future__ import annotations

import math

import click

__all__ = ["COUNT", "NON_NEGATIVE", "POSITIVE", "FiniteFloat"]


class FiniteFloat(click.FloatRange):
    """A float in a range that also refuses NaN and +-inf (click.FloatRange lets NaN through)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


POSITIVE = FiniteFloat(min=0, min_open=True)  # finite > 0
NON_NEGATIVE = FiniteFloat(min=0)             # finite >= 0
COUNT = click.IntRange(min=1)                 # a number of samples, steps, a batch size: >= 1
