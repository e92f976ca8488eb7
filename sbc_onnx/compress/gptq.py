"""GPTQ quantization with a static order (docs/sbc_method.md §2.3) and RTN.

Order: pi = argsort(diag(H^-1)) ascending (stable), computed once (the diagonal in float32:
numerics.inverse_diagonal; the eager twin ranks float64 values); permuting the columns by pi and
running the Cholesky (upper factor) sweep is identical to §2.3's per-column loop with rank-1
downdates of H^-1 (the sweep is the same math, lazily blocked for GEMM speed: §A.1;
``quantize_gptq_eager`` is that loop, readable, in float64).
V-form: the sweep needs no inverse factor.  With H_pi = V V^T (V upper: the Cholesky factor of the
flipped H_pi) and U = V^-1 the usual factor, the errors E_i = (w_i - q_i) / U_ii satisfy E U = W0 - Q,
so E = (W0 - Q) V and the current column is w_i = W0_i + sum_{k<i} (W0_k - q_k) V_ki / V_ii: the same
blocked sweep with U replaced by -V D^-1 and the errors taken against the original weights.  This
saves the triangular inverse of the second factorization.  Both factorizations run in float32, the
second one checked against the damping (float64 when the check fails), and on every core with the same
bits: docs/sbc_method.md §A.3.
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
from numba import njit

from ._sweep import GridFix, obs_sweep, transpose
from .grids import Grid, from_int, quantize, to_int
from .numerics import damped_cholesky, damped_cholesky32, damped_inverse, inverse_diagonal, row_spans
from .threads import parallel_map

__all__ = ["ROW_PIECE", "QuantResult", "quantize_gptq", "quantize_gptq_eager", "quantize_rtn"]

ROW_PIECE = 128  # rows of W per independent sweep: a function of the shape only, so threads never change bits


@dataclass
class QuantResult:
    W: np.ndarray          # float64 dequantized weights (on the grid, zeros where masked)
    q: np.ndarray          # int32 codes (W = scale * (q - zero))
    damp: float = 0.0
    escalations: list = field(default_factory=list)
    order: np.ndarray | None = None
    seconds: dict = field(default_factory=dict)


@njit(cache=True, nogil=True)
def _v_form_t(C, nd, out, a0, a1):
    """Rows a and d - 1 - a of out = Uv^T for a in [a0, a1): out[a, b] = C[e - a, e - b] / nd[a] (e = d - 1), 1 on
    the diagonal.  Both rows are read before either is written, so out may be C itself."""
    d = C.shape[0]
    e = d - 1
    ra = np.empty(d, C.dtype)
    rb = np.empty(d, C.dtype)
    for a in range(a0, a1):
        b = e - a
        src_a = C[b]  # becomes row a, reversed
        src_b = C[a]  # becomes row b, reversed
        for j in range(d):
            ra[j] = src_a[e - j]
            rb[j] = src_b[e - j]
        na = nd[a]
        nb = nd[b]
        for j in range(d):  # a forward loop of divisions (vectorized)
            ra[j] = ra[j] / na
            rb[j] = rb[j] / nb
        ra[a] = 1.0
        rb[b] = 1.0
        out[a, :] = ra
        out[b, :] = rb
    return 0


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
    dinv, rd, esc = inverse_diagonal(H, rel_damp, max_damp)
    perm = np.argsort(dinv, kind="stable")
    L = damped_cholesky32(H, rd, perm=perm, reverse=True)  # J H_pi J = L L^T (float32, checked)
    if L is None:  # float32 not accurate enough, or not positive definite at rd: float64 with escalation
        L, rd, _, esc2 = damped_cholesky(H, rd, max(rd, max_damp), reverse=True, perm=perm)
        esc = esc + esc2
    # V = L[::-1, ::-1] (upper, H_pi = V V^T) and Uv = -V D^-1 (V-form, module docstring).  The factor's C view
    # Ct = L^T (both factor paths give a Fortran L) read backwards is V^T, so Uv^T, which the sweep takes as it
    # is (transposed=True), is Ct reversed with each row divided: in place for the float32 factor, no transpose
    Ct = np.ascontiguousarray(L.T)
    UvT = Ct if Ct.dtype == np.float32 else np.empty((d, d), np.float32)
    nd = -np.diag(Ct)[::-1].copy()
    half = (d + 1) // 2
    parallel_map(lambda s: _v_form_t(Ct, nd, UvT, *s), row_spans(half), nbytes=8 * d * d)
    del L, Ct
    t1 = time.perf_counter()
    keep = np.ones_like(W0, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    scale = np.broadcast_to(np.asarray(grid.scale, np.float64), (d_out, 1))[:, 0].astype(np.float32)
    zero = np.broadcast_to(np.asarray(grid.zero, np.float64), (d_out, 1))[:, 0].astype(np.float32)
    # q = scale * (clip(round(w / scale) + zero, qmin, qmax) - zero) * keep, with the zero point folded
    # into the clip bounds (zero is integer-valued, so this is exact) and scale * keep precomputed
    lo = (grid.qmin - zero).astype(np.float32)
    hi = (grid.qmax - zero).astype(np.float32)

    def sweep(span):  # rows [r0, r1) of W: independent of the other rows given the factor
        r0, r1 = span
        Wt = transpose(np.where(keep[r0:r1], W0[r0:r1], 0.0), np.float32)[perm]  # row gathers: contiguous
        fix = GridFix(scale[r0:r1], lo[r0:r1], hi[r0:r1], transpose(keep[r0:r1])[perm] * scale[None, r0:r1])
        obs_sweep(Wt, UvT, fix, blocksize=blocksize, sub=sub, err_from=Wt.copy(), transposed=True)
        return Wt

    pieces = [(r, min(d_out, r + ROW_PIECE)) for r in range(0, d_out, ROW_PIECE)]
    Wt = np.concatenate(parallel_map(sweep, pieces, d_out * d * d), axis=1)
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


def quantize_gptq_eager(W, H, grid: Grid, *, mask=None, rel_damp=0.01) -> np.ndarray:
    """The readable twin of ``quantize_gptq`` (float64, one column at a time, O(d^3) per column block of
    d_out: tests only): docs/sbc_method.md §2.3's loop in the static order argsort(diag(H^-1)), each
    column fixed to its grid value (0 where masked), its error spread with a rank-1 downdate of H^-1."""
    W = np.asarray(W, dtype=np.float64)
    keep = np.ones_like(W, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    Hi = damped_inverse(H, rel_damp, rel_damp)[0]
    Wr = np.where(keep, W, 0.0)
    for c in np.argsort(inverse_diagonal(H, rel_damp, rel_damp)[0], kind="stable"):  # diag(Hi), as ranked
        wq = np.where(keep[:, c], quantize(Wr[:, [c]], grid)[:, 0], 0.0)
        e = (Wr[:, c] - wq) / Hi[c, c]
        Wr -= np.outer(e, Hi[:, c])
        Wr[:, c] = wq
        Hi -= np.outer(Hi[:, c], Hi[c]) / Hi[c, c]
    return Wr
