"""Shared GPTQ/SparseGPT column sweep with one upper factor U of H^-1 (U^T U = H^-1).

For a fixed column order, eliminating column i (fixing it to q_i) is the OBS update
    err = (w_i - q_i) / U_ii ;  W[:, i+1:] -= err (outer) U[i, i+1:]
(docs/sbc_method.md §A.1).  Two-level lazy blocking, numerically the same updates regrouped:
inside a sub-block of ``sub`` columns the updates are applied *left-looking* (column i is brought up
to date with one in-place sgemv over the errors of the sub-block's earlier columns just before it is
fixed), one in-place sgemm from the sub-block to the rest of its ``blocksize`` block, one in-place
sgemm from the block to all trailing columns.  We store W^T (d_in, d_out) so a column of W is a
contiguous row (a C-contiguous slice of W^T is an F-contiguous (d_out, k) matrix: BLAS works on it
in place, no temporaries); the sweep runs in float32.  Pruning mode runs each sub-block's column loop
in one compiled call (_prune_sub_block), and so does quantization onto a grid (GridFix: _grid_sub_block;
its NumPy form, GridFix.__call__, is the readable twin and serves N:M panels); a generic ``fix``
callable and N:M take a few NumPy/BLAS calls per column.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from scipy.linalg import blas

from ._openblas import kernels, somatcopy
from .threads import PARALLEL_MIN_BYTES, blas_threads, parallel_map


_omatcopy = somatcopy()
_kern = kernels()


def transpose(A, dtype=None):
    """C-contiguous transpose of a 2-D array (exact), optionally converted to ``dtype`` first.
    NumPy's strided transpose of a large matrix is far slower than a copy (it dominated the sweep of
    large layers): float32 goes through BLAS omatcopy, anything else through cache-sized NumPy tiles."""
    A = np.asarray(A)
    if dtype is not None and A.dtype != dtype:
        A = A.astype(dtype)
    A = np.ascontiguousarray(A)
    r, c = A.shape
    out = np.empty((c, r), dtype=A.dtype)
    if A.size == 0:
        return out
    if A.dtype == np.float32 and _omatcopy is not None and max(r, c) < 2**31:
        if 8 * A.size < PARALLEL_MIN_BYTES:
            _omatcopy(101, 112, r, c, 1.0, A.ctypes.data, c, out.ctypes.data, r)
            return out
        # out[c0:c1] = A[:, c0:c1]^T in column pieces (GIL-free calls) on threads
        cuts = sorted({0, c, *(c * k // 4 for k in range(1, 4))})
        parallel_map(lambda s: _omatcopy(101, 112, r, s[1] - s[0], 1.0, A.ctypes.data + 4 * s[0], c,
                                         out.ctypes.data + 4 * s[0] * r, r), list(zip(cuts, cuts[1:])),
                     nbytes=8 * A.size)
        return out
    b = 16
    for i in range(0, r, b):
        out[:, i:i + b] = A[i:i + b].T
    return out


class GridFix:
    """Fix a column to its grid value: out = clip(rint(w / scale), lo, hi) * scale_keep[i], i.e. the
    clamped grid point, 0 where the weight is masked (scale_keep = scale * keep; lo / hi the integer
    bounds with the zero point folded in).  All arrays float32, one entry per row of W."""

    def __init__(self, scale, lo, hi, scale_keep):
        self.scale, self.lo, self.hi, self.scale_keep = scale, lo, hi, scale_keep

    def __call__(self, i, w, out):
        np.divide(w, self.scale, out=out)
        np.rint(out, out=out)
        np.maximum(out, self.lo, out=out)  # == np.clip, without the cost of its Python-level wrapper per call
        np.minimum(out, self.hi, out=out)
        np.multiply(out, self.scale_keep[i], out=out)


@njit(cache=True, fastmath={"contract"}, nogil=True)
def _update_left(w, Err, UsT, i, j1):
    """Column i brought up to date over the errors of its sub-block's earlier columns j1..i-1 (in place)."""
    n = w.shape[0]
    for l in range(j1, i):
        u = UsT[i - j1, l - j1]
        if u != 0.0:
            e = Err[l]
            for q in range(n):
                w[q] -= u * e[q]


@njit(cache=True, fastmath={"contract"}, nogil=True)
def _grid_sub_block(Wt, Err, UsT, Q, diag, E0, scale, lo, hi, SK, j1, j2):
    """Quantization-mode columns [j1, j2) in one compiled call (the same steps as _panel_columns with a
    GridFix, which paid about ten Python-level calls per column): column i is brought up to date
    left-looking, fixed to its grid value (Q), and its error taken against E0 (err_from) or itself."""
    n = Wt.shape[1]
    for i in range(j1, j2):
        w = Wt[i]
        _update_left(w, Err, UsT, i, j1)
        qi = Q[i - j1]
        ei = Err[i]
        src = E0[i]
        sk = SK[i]
        di = diag[i]
        for q in range(n):
            v = np.rint(w[q] / scale[q])
            v = min(max(v, lo[q]), hi[q])
            qi[q] = v * sk[q]
            ei[q] = (src[q] - qi[q]) / di


_gemm = {np.dtype(np.float32): blas.sgemm, np.dtype(np.float64): blas.dgemm}
_gemv = {np.dtype(np.float32): blas.sgemv, np.dtype(np.float64): blas.dgemv}


class _Factor:
    """The sweep's upper factor U, held as U (``transposed`` False) or as U^T (both C-contiguous)."""

    def __init__(self, a, transposed: bool):
        self.a, self.transposed = a, transposed

    def block_t(self, j1, j2):
        """U[j1:j2, j1:j2]^T, C-contiguous (row c - j1 = U[j1:j2, c])."""
        blk = self.a[j1:j2, j1:j2]
        return np.ascontiguousarray(blk if self.transposed else blk.T)


def _sub_gemm(Wt, U, Err, a1, a2, b1, b2, gemm):
    """Wt[b1:b2] -= U[a1:a2, b1:b2]^T @ Err[a1:a2], in place (sgemm with beta = 1); U a _Factor.  float32 goes
    through the GIL-free ctypes sgemm (_openblas.py) so that sweeps of independent row pieces run on threads
    at once (gptq.py); all three arrays are C-contiguous here (obs_sweep)."""
    A = U.a
    k = _kern if Wt.dtype == np.float32 else None
    if k is not None:
        n, d = Wt.shape[1], A.shape[1]
        if U.transposed:  # U[a, b]^T = A[b, a]
            k.gemm_rm_nn(b2 - b1, n, a2 - a1, A.ctypes.data + (b1 * d + a1) * 4, d, Err.ctypes.data + a1 * n * 4, n,
                         Wt.ctypes.data + b1 * n * 4, n)
        else:
            k.gemm_rm_tn(b2 - b1, n, a2 - a1, A.ctypes.data + (a1 * d + b1) * 4, d, Err.ctypes.data + a1 * n * 4, n,
                         Wt.ctypes.data + b1 * n * 4, n)
        return
    blk = A[b1:b2, a1:a2].T if U.transposed else A[a1:a2, b1:b2]
    gemm(-1.0, Err[a1:a2].T, blk, beta=1.0, c=Wt[b1:b2].T, overwrite_c=1)


def obs_sweep(Wt, U, fix, *, blocksize=128, sub=32, on_block=None, keep=None, panel=1, outer=512,
              err_from=None, transposed: bool = False) -> None:
    """Sweep columns 0..d-1 of W (given transposed as a C-contiguous ``Wt``, modified in place).

    fix(i, w, out): writes the value the current column i (vector ``w`` over rows, up to date) is
    fixed to into ``out``.  ``fix=None`` is the pruning mode: q = w * keep[i] with the bool array
    ``keep`` (d, rows), read at each sub-block start (so ``on_block`` may still change it).
    ``panel``: columns [p, p + panel) (p a multiple of ``panel`` from the sub-block start) are all
    brought up to date when column p is reached, before fix(p, ...) is called (N:M groups read the
    whole group); columns inside a panel are then updated left-looking from the panel start.
    on_block(i1, i2) is called when columns [i1, i2) are up to date w.r.t. all earlier blocks
    (SparseGPT's adaptive mask selection happens there).
    ``outer``: a third blocking level (rounded up to a multiple of ``blocksize``): a block updates only
    the rest of its outer block, and each outer block updates the trailing columns with one sgemm of
    inner dimension ``outer`` (fewer passes over W, better GEMM efficiency; same math).
    ``err_from``: the quantization errors are taken against these rows instead of the current ones:
    err_i = (err_from_i - q_i) / U_ii.  With err_from = the original W^T and U = -V D^-1 (V the upper
    factor of H = V V^T, D = diag V, unit diagonal) the sweep is the same OBS elimination without
    inverting the factor (GPTQ's "V-form", gptq.py).
    ``transposed``: U is given as U^T (the same sweep; GPTQ builds its factor in that layout).
    """
    d, n = Wt.shape
    if not Wt.flags.c_contiguous:
        raise ValueError("Wt must be C-contiguous")
    dt = Wt.dtype
    U = np.ascontiguousarray(U, dtype=dt)
    gemm, gemv = _gemm[dt], _gemv[dt]
    Err = np.empty_like(Wt)
    Q = np.empty((min(sub, d), n), dtype=dt)
    diag = np.diag(U).copy()
    U = _Factor(U, transposed)
    panel = max(1, int(panel))
    outer = blocksize * max(1, -(-int(outer) // blocksize))
    with blas_threads():  # the same bits at any thread count (threads.py)
        _sweep_outer(Wt, U, Err, Q, diag, fix, keep, blocksize, sub, panel, on_block, gemm, gemv, err_from, outer)


def _sweep_outer(Wt, U, Err, Q, diag, fix, keep, blocksize, sub, panel, on_block, gemm, gemv, err_from, outer):
    d = Wt.shape[0]
    for o1 in range(0, d, outer):
        o2 = min(d, o1 + outer)
        _outer_block(Wt, U, Err, Q, diag, fix, keep, o1, o2, blocksize, sub, panel, on_block, gemm, gemv,
                     err_from)
        if o2 < d:
            _sub_gemm(Wt, U, Err, o1, o2, o2, d, gemm)


@njit(cache=True, fastmath={"contract"}, nogil=True)
def _prune_sub_block(Wt, Err, UsT, C, j1, j2):
    """Pruning-mode columns [j1, j2): column i is brought up to date left-looking over the errors of
    the sub-block's earlier columns, then err_i = w_i * C_i (C = (1 - keep) / U_ii).  Compiled: the
    NumPy form paid two Python-level calls per column."""
    n = Wt.shape[1]
    for i in range(j1, j2):
        w = Wt[i]
        _update_left(w, Err, UsT, i, j1)
        ci = C[i - j1]
        ei = Err[i]
        for q in range(n):
            ei[q] = w[q] * ci[q]


def _panel_columns(Wt, U, Err, Q, UsT, C, diag, fix, j1, j2, panel, gemm, gemv, err_from=None):
    """Columns [j1, j2) one by one (quantization, or N:M panels), left-looking inside each panel."""
    for p1 in range(j1, j2, panel):
        p2 = min(j2, p1 + panel)
        if panel > 1 and p1 > j1:
            _sub_gemm(Wt, U, Err, j1, p1, p1, p2, gemm)
        lo = p1 if panel > 1 else j1
        for i in range(p1, p2):
            w = Wt[i]
            if i > lo:
                gemv(-1.0, Err[lo:i].T, UsT[i - j1, lo - j1:i - j1], beta=1.0, y=w, overwrite_y=1)
            if fix is None:
                np.multiply(w, C[i - j1], out=Err[i])
            else:
                q = Q[i - j1]
                fix(i, w, q)
                np.subtract(w if err_from is None else err_from[i], q, out=Err[i])
                np.divide(Err[i], diag[i], out=Err[i])


def _outer_block(Wt, U, Err, Q, diag, fix, keep, o1, o2, blocksize, sub, panel, on_block, gemm, gemv,
                 err_from=None):
    dt = Wt.dtype
    for i1 in range(o1, o2, blocksize):
        i2 = min(o2, i1 + blocksize)
        if on_block is not None:
            on_block(i1, i2)
        for j1 in range(i1, i2, sub):
            j2 = min(i2, j1 + sub)
            UsT = U.block_t(j1, j2)  # row c - j1 = U[j1:j2, c]: contiguous
            C = None
            if fix is None:
                # err = (w - w keep) / U_ii = w * C, C = (1 - keep) / U_ii
                C = np.divide(~keep[j1:j2], diag[j1:j2, None], dtype=dt)
            if fix is None and panel == 1:  # pruning: the whole sub-block in one compiled call
                _prune_sub_block(Wt, Err, UsT, C, j1, j2)
            elif isinstance(fix, GridFix) and panel == 1 and dt == fix.scale.dtype:
                _grid_sub_block(Wt, Err, UsT, Q, diag, Wt if err_from is None else err_from, fix.scale, fix.lo,
                                fix.hi, fix.scale_keep, j1, j2)
            else:
                _panel_columns(Wt, U, Err, Q, UsT, C, diag, fix, j1, j2, panel, gemm, gemv, err_from)
            if fix is None:
                Wt[j1:j2] *= keep[j1:j2]
            else:
                Wt[j1:j2] = Q[:j2 - j1]
            if j2 < i2:
                _sub_gemm(Wt, U, Err, j1, j2, j2, i2, gemm)
        if i2 < o2:
            _sub_gemm(Wt, U, Err, i1, i2, i2, o2, gemm)
