"""Nominal flop counts of the layer algorithms: the ETA of a long run and the benchmark's fraction of
sgemm speed both weigh layers by them (multiply-adds count as 2 flops).

  Hessian      rows * d_in^2          syrk over the filtered rows (hessian.py; half of a GEMM)
  ExactOBS     2/3 * d_out * d_in^3   the trace, one shrinking d x d inverse per row (obs.py)
  sweep/GPTQ   4/3 d_in^3 + 2 d_out d_in^2   damped inverse and its Cholesky factor, then the column sweep
  magnitude    d_out * d_in           (a sort; no Hessian work)
"""

from __future__ import annotations

from .methods import Method, get_method

__all__ = ["hessian_flops", "layer_flops"]


def hessian_flops(rows: int, d_in: int) -> float:
    return float(rows) * d_in * d_in


def layer_flops(method: str | Method, d_out: int, d_in: int, *, prunes: bool = True, quantizes: bool = False,
                groups: int = 1) -> float:
    """Flops to compress one layer (d_out x d_in/groups per group, `groups` groups) with `method`."""
    m = get_method(method)
    rows, cols = d_out // max(groups, 1), d_in // max(groups, 1)
    per_group = 0.0
    if prunes:
        if m.obs_trace:
            per_group += 2 / 3 * rows * cols**3
        elif m.second_order:
            per_group += 4 / 3 * cols**3 + 2 * rows * cols**2
        else:
            per_group += rows * cols
    if quantizes:
        per_group += (4 / 3 * cols**3 + 2 * rows * cols**2) if m.second_order else rows * cols
    return groups * per_group
