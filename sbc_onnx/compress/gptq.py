"""GPTQ quantization with a static order (docs/sbc_method.md §2.3) and RTN.

Order: pi = argsort(diag(H^-1)) ascending (stable), computed once; permuting the columns by pi and
running the Cholesky (upper factor) sweep is identical to §2.3's per-column loop with rank-1
downdates of H^-1 (the sweep is the same math, lazily blocked for GEMM speed: §A.1).
Grid: fixed from the ORIGINAL weights before compensation (passed in); each column is set to its
clamped grid value when reached, so the result is on the grid (compensated values beyond the range
are clamped: the paper's "out-of-range" limitation).
Mask (sparse + quantized): pruned entries are 0 at the start and are fixed to exactly 0 when their
column is reached (SparseGPT's joint prune+quantize semantics); their error is propagated like any
other, so compensation only ever lands in columns that are not yet fixed and the final values of
pruned entries are 0 -- quantizing a pruned model never un-prunes it.  (Exact alternative: a per-row
sweep on H_KK, O(d_out d^3); not done here.)
Dead inputs: their column is decoupled in H^-1, so they end as RTN of the original weight.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ._sweep import obs_sweep, transpose
from .grids import Grid, from_int, to_int
from .numerics import upper_inverse_factor

__all__ = ["QuantResult", "quantize_gptq", "quantize_rtn"]


@dataclass
class QuantResult:
    W: np.ndarray          # float64 dequantized weights (on the grid, zeros where masked)
    q: np.ndarray          # int32 codes (W = scale * (q - zero))
    damp: float = 0.0
    escalations: list = field(default_factory=list)
    order: np.ndarray | None = None
    seconds: dict = field(default_factory=dict)


def quantize_rtn(W, grid: Grid, mask=None) -> QuantResult:
    W = np.asarray(W, dtype=np.float64)
    q = to_int(W, grid)
    Wq = from_int(q, grid)
    if mask is not None:
        Wq = np.where(mask, Wq, 0.0)
        q = np.where(mask, q, to_int(np.zeros_like(W), grid))
    return QuantResult(Wq, q)


def quantize_gptq(W, H, grid: Grid, *, mask=None, rel_damp=0.01, max_damp=1.0, blocksize=128,
                  sub=32) -> QuantResult:
    W0 = np.asarray(W, dtype=np.float64)
    d_out, d = W0.shape
    t0 = time.perf_counter()
    U0, rd, esc = upper_inverse_factor(H, rel_damp, max_damp)
    perm = np.argsort((U0 * U0).sum(axis=0), kind="stable")  # diag(H^-1) = column norms^2 of U
    Hp = np.asarray(H, dtype=np.float64)[np.ix_(perm, perm)]
    U, _, esc2 = upper_inverse_factor(Hp, rd, max(rd, max_damp))
    esc = esc + esc2
    t1 = time.perf_counter()
    keep = np.ones_like(W0, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    Wt = transpose(np.where(keep, W0, 0.0), np.float32)[perm]  # row gathers of W^T are contiguous
    keepT = transpose(keep)[perm]
    scale = np.broadcast_to(np.asarray(grid.scale, np.float64), (d_out, 1))[:, 0].astype(np.float32)
    zero = np.broadcast_to(np.asarray(grid.zero, np.float64), (d_out, 1))[:, 0].astype(np.float32)

    # q = scale * (clip(round(w / scale) + zero, qmin, qmax) - zero) * keep, with the zero point folded
    # into the clip bounds (zero is integer-valued, so this is exact) and scale * keep precomputed
    lo = (grid.qmin - zero).astype(np.float32)
    hi = (grid.qmax - zero).astype(np.float32)
    SK = keepT * scale[None, :]  # (d, d_out) float32

    def fix(i, w, out):
        np.divide(w, scale, out=out)
        np.rint(out, out=out)
        np.maximum(out, lo, out=out)  # == np.clip, without the cost of its Python-level wrapper per call
        np.minimum(out, hi, out=out)
        np.multiply(out, SK[i], out=out)

    obs_sweep(Wt, U.astype(np.float32), fix, blocksize=blocksize, sub=sub)
    inv = np.empty_like(perm)
    inv[perm] = np.arange(d)
    Wsw = transpose(Wt[inv]).astype(np.float64)
    # final clamp/snap in float64 (idempotent up to float32 rounding); to_int(from_int(q)) == q, so
    # the codes are computed once
    q = to_int(Wsw, grid)
    Wq = np.where(keep, from_int(q, grid), 0.0)
    q = np.where(keep, q, to_int(np.zeros((d_out, 1)), grid))
    t2 = time.perf_counter()
    return QuantResult(Wq, q, rd, esc, perm, {"factor": t1 - t0, "sweep": t2 - t1})
