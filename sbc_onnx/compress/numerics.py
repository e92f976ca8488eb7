"""Damped factorizations of a layer Hessian.

Dead inputs (diag H == 0: the input never fired in calibration).  For a Gram matrix a zero diagonal
implies a zero row/column, so we *do not* set H[d,d]=1 (SparseGPT/OBC) but leave the row at zero and
let the relative damping lambda make it invertible: the damped objective then charges lambda*w_d^2 for
changing w_d, which is the true (tiny) cost.  Consequences:
- pruning: a dead weight has score lambda*w^2, so it is pruned early but only if the budget selects it;
  other weights are never compensated through it (H[d, live] = 0 => Hinv[d, live] = 0);
- quantization: no error flows into or out of a dead column, so it ends as the RTN of its ORIGINAL
  weight; weights are never zeroed just because their input was silent.
Damping: lambda = rel_damp * mean(diag H over live inputs) (1 if none is live).  On a failed Cholesky
rel_damp is multiplied by 10 (0 becomes 0.01) up to max_damp, at most MAX_ATTEMPTS factorizations in
all (the last one at max_damp); then FactorizationError (the caller falls back to magnitude / RTN
for the layer).  Every escalation is reported as a string.  rel_damp and max_damp must be finite and >= 0 (ValueError), so
the escalation always ends; a non-finite H, damping lambda or factor raises FactorizationError.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from scipy.linalg import lapack

from ._cholesky import potrf_blocked, trtri_blocked
from .threads import blas_threads, parallel_map

__all__ = ["F32_BACKWARD_TOL", "MAX_ATTEMPTS", "FactorizationError", "check_damping", "damped_cholesky",
           "damped_cholesky32", "damped_hessian", "damped_inverse", "inverse_diagonal", "upper_inverse_factor"]

MAX_ATTEMPTS = 8  # factorizations per damped_cholesky call: rel_damp, then up to 7 escalations
# a float32 factor is used only if it is the exact factor of H + lambda I + E with |E r| <= tol lambda |r| on
# random probes r: the same as a damping a few percent off lambda, which is itself a choice
# (docs/sbc_method.md §A.3)
F32_BACKWARD_TOL = 0.05


class FactorizationError(RuntimeError):
    """Cholesky of the damped Hessian failed even at the largest allowed damping."""


def check_damping(rel_damp: float, what: str = "rel_damp") -> float:
    """`rel_damp` as a float; ValueError unless it is a finite number >= 0."""
    try:
        rd = float(rel_damp)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a finite number >= 0, got {rel_damp!r}") from None
    if not (math.isfinite(rd) and rd >= 0):
        raise ValueError(f"{what} must be a finite number >= 0, got {rel_damp!r}")
    return rd


def damped_hessian(H: np.ndarray, rel_damp: float) -> tuple[np.ndarray, float]:
    """Return (H + lambda I, lambda) in float64, lambda = rel_damp * mean live diagonal."""
    H = np.array(H, dtype=np.float64, copy=True)
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        raise ValueError(f"H must be square, got {H.shape}")
    diag = np.diag(H)
    live = diag > 0
    with np.errstate(over="ignore"):  # an overflow gives inf, which damped_cholesky reports
        scale = float(diag[live].mean()) if live.any() else 1.0
        lam = check_damping(rel_damp) * scale
        H[np.diag_indices_from(H)] += lam
    return H, lam


def _damped_copy(H: np.ndarray, rd: float, perm, reverse: bool) -> tuple[np.ndarray, float]:
    """(J) H_perm (J) + lambda I as a fresh C-ordered array, lambda from diag(H_perm) as `damped_hessian`
    computes it.  One copy: row and column gathers, or a flat reversal (J H J of a C-ordered matrix is
    its memory read backwards).  H is symmetric, so the C array is also the Fortran array LAPACK reads
    (its transpose, passed without another copy)."""
    diag = np.diag(H) if perm is None else np.diag(H)[perm]
    live = diag > 0
    with np.errstate(over="ignore"):  # an overflow gives inf, which damped_cholesky reports
        lam = rd * (float(diag[live].mean()) if live.any() else 1.0)
    if perm is None:
        G = np.ascontiguousarray(H).ravel()[::-1].reshape(H.shape).copy() if reverse else np.array(H, copy=True)
    else:
        idx = np.asarray(perm)[::-1] if reverse else np.asarray(perm)
        G = np.take(H[idx], idx, axis=1)
    G[np.diag_indices_from(G)] += lam
    return G, lam


@njit(cache=True, nogil=True)
def _dot4(g, r, j0, n):
    """sum_{j0 <= j < n} g[j] r[j] in float64 with four partial sums (a fixed order, so the same bits on any
    thread; four independent chains instead of one)."""
    s0 = s1 = s2 = s3 = 0.0
    j = j0
    while j + 4 <= n:
        s0 += np.float64(g[j]) * r[j]
        s1 += np.float64(g[j + 1]) * r[j + 1]
        s2 += np.float64(g[j + 2]) * r[j + 2]
        s3 += np.float64(g[j + 3]) * r[j + 3]
        j += 4
    t = 0.0
    while j < n:
        t += np.float64(g[j]) * r[j]
        j += 1
    return ((s0 + s1) + (s2 + s3)) + t


@njit(cache=True, nogil=True)
def _gather32(H, idx, lam, out, i0, i1, Ri, HR):
    """Rows [i0, i1) of out[i, j] = H[idx[i], idx[j]] in float32 for j >= i (0 below), + lam on the diagonal:
    `_damped_copy`'s gathers in one pass (the row of H being read stays in cache), on the triangle LAPACK reads (the C
    array's upper triangle is the lower triangle of the Fortran array it is passed as).  On the way, the float64
    products HR[i, c] = H[idx[i]] @ Ri[c] of the factor check (`damped_cholesky32`; probes as rows), so H is read
    once."""
    n = idx.shape[0]
    row = np.empty(H.shape[1], np.float32)
    for i in range(i0, i1):
        src = H[idx[i]]
        for k in range(row.shape[0]):  # a streamed read first: random reads of a row not yet in cache stall
            row[k] = src[k]
        HR[i, 0] = _dot4(src, Ri[0], 0, n)  # the row is in cache now
        HR[i, 1] = _dot4(src, Ri[1], 0, n)
        o = out[i]
        for j in range(i):
            o[j] = 0.0  # the factor's other triangle: zero, as spotrf's clean=1 leaves it
        for j in range(i, n):
            o[j] = row[idx[j]]
        o[i] += lam


@njit(cache=True, nogil=True)
def _upper32(H, lam, out, i0, i1):
    """Rows [i0, i1) of out[i, j] = H[i, j] in float32 for j >= i (the triangle LAPACK reads, as in _gather32;
    the other one is not written), + lam on the diagonal.  Returns whether those entries of H are all finite
    (v * 0 is 0 for a finite v and NaN otherwise; the per-row sum of them is checked once)."""
    n = H.shape[1]
    finite = True
    for i in range(i0, i1):
        src = H[i]
        o = out[i]
        z = 0.0
        for j in range(i, n):
            v = src[j]
            z += v * 0.0
            o[j] = v
        finite &= z == 0.0
        o[i] += lam
    return finite


@njit(cache=True, nogil=True)
def _upper_times(G, R, i0, i1, Y):
    """Y[c, i] = sum_{j >= i} G[i, j] R[c, j] (float64) for rows [i0, i1) and the two probes c: L^T R with G the C
    view of the Fortran lower factor L (probes stored as rows)."""
    n = G.shape[1]
    for i in range(i0, i1):
        Y[0, i] = _dot4(G[i], R[0], i, n)
        Y[1, i] = _dot4(G[i], R[1], i, n)


@njit(cache=True, nogil=True)
def _upper_t_times(G, Y, i0, i1):
    """sum over rows i in [i0, i1) of G[i, j] Y[c, i] for j >= i (float64): rows [i0, i1)'s share of L Y."""
    n = G.shape[1]
    out = np.zeros((2, n))
    o0 = out[0]
    o1 = out[1]
    for i in range(i0, i1):
        g = G[i]
        y0 = Y[0, i]
        y1 = Y[1, i]
        for j in range(i, n):
            v = np.float64(g[j])
            o0[j] += v * y0
            o1[j] += v * y1
    return out


def row_spans(d: int, pieces: int = 4) -> list[tuple[int, int]]:
    """Fixed row pieces [r0, r1) of a d-row memory pass (a function of d only)."""
    cuts = sorted({0, d, *(d * k // pieces for k in range(1, pieces))})
    return list(zip(cuts, cuts[1:]))


def damped_cholesky32(H: np.ndarray, rel_damp: float, *, perm=None, reverse: bool = False,
                      tol: float = F32_BACKWARD_TOL):
    """float32 lower Cholesky factor of the damped (J) H[perm][:, perm] (J) (as `damped_cholesky`, one
    attempt, no escalation; _cholesky.potrf_blocked), or None when float32 cannot give a factor that
    good: it fails, the factor is not finite, or its backward error on two seeded random probes R,
    |L L^T R - (H_d) R| (H_d R in float64 from H), exceeds tol * lambda * |R|.  Cholesky is backward stable;
    what float32 can lose is only that this error becomes comparable to the damping (a Hessian with a large
    norm next to lambda)."""
    rd = check_damping(rel_damp)
    H = np.asarray(H, dtype=np.float64)
    d = H.shape[0]
    idx = np.arange(d) if perm is None else np.asarray(perm, dtype=np.int64)
    if reverse:
        idx = idx[::-1]
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    diag = np.diag(H)[idx]
    live = diag > 0
    lam = rd * (float(diag[live].mean()) if live.any() else 1.0)
    if not (math.isfinite(lam) and (lam > 0 or live.all()) and np.all(np.isfinite(diag))):
        return None
    G = np.empty((d, d), np.float32)
    Hc, lam32, spans = np.ascontiguousarray(H), np.float32(lam), row_spans(d)
    R = np.random.default_rng(0).standard_normal((d, 2))
    Ri = np.empty_like(R)
    Ri[idx] = R  # (H_d R)[i] = (H Ri)[idx[i]] + lam R[i]
    Ri = np.ascontiguousarray(Ri.T)
    HR = np.empty((d, 2))
    parallel_map(lambda s: _gather32(Hc, idx, lam32, G, *s, Ri, HR), spans, nbytes=12 * d * d)
    HR += lam * R
    L = G.T  # the C array's upper triangle is the lower triangle of this Fortran view
    if potrf_blocked(L) != 0:
        return None
    # L L^T R from the triangle only (memory-bound passes in row pieces, summed in a fixed order)
    R2 = np.ascontiguousarray(R.T)  # the probes as rows
    Y = np.empty((2, d))
    parallel_map(lambda s: _upper_times(G, R2, *s, Y), spans, nbytes=2 * d * d)
    LLR = sum(parallel_map(lambda s: _upper_t_times(G, Y, *s), spans, nbytes=2 * d * d)).T
    res = float(np.linalg.norm(LLR - HR))
    if not (math.isfinite(res) and res <= tol * lam * float(np.linalg.norm(R))):
        return None
    return L


def damped_cholesky(H: np.ndarray, rel_damp: float = 0.01, max_damp: float = 1.0, *, reverse: bool = False,
                    perm=None):
    """Lower Cholesky factor L of the damped H (of J H J if ``reverse``: the flip trick), of the damped
    H[perm][:, perm] if ``perm`` is given (lambda from its diagonal; the same as permuting H first).
    H must be symmetric (only one triangle is read).

    Returns (L, rel_damp_used, lambda_abs, escalations).
    """
    rd, max_damp = check_damping(rel_damp), check_damping(max_damp, "max_damp")
    H = np.asarray(H, dtype=np.float64)
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        raise ValueError(f"H must be square, got {H.shape}")
    if not np.all(np.isfinite(H)):
        raise FactorizationError("Hessian has non-finite entries (NaN/inf); no damping can fix that")
    escalations: list[str] = []
    for attempt in range(1, MAX_ATTEMPTS + 1):  # bounded: rd is finite and each retry needs a new rd
        Hd, lam = _damped_copy(H, rd, perm, reverse)
        if not math.isfinite(lam):
            raise FactorizationError(f"damping overflows (lambda = {lam:g} at rel_damp={rd:g})")
        with blas_threads():  # one thread: OpenBLAS's threaded potrf rounds differently (threads.py)
            L, info = lapack.dpotrf(Hd.T, lower=1, clean=1, overwrite_a=1)
        if info == 0 and not np.all(np.isfinite(L)):
            raise FactorizationError(f"the Cholesky factor has non-finite entries at rel_damp={rd:g}")
        if info == 0 and (rd > 0 or np.all(np.diag(L) > 0)):
            return L, rd, lam, escalations
        nxt = 0.01 if rd <= 0 else rd * 10.0
        if attempt == MAX_ATTEMPTS - 1 and nxt < max_damp:
            nxt = max_damp  # the last attempt uses the largest damping allowed
        if nxt > max_damp * (1 + 1e-12) or attempt == MAX_ATTEMPTS:
            escalations.append(f"cholesky failed at rel_damp={rd:g} (info={info}); giving up")
            raise FactorizationError(
                f"Hessian not positive definite even with rel_damp={rd:g} (max_damp={max_damp:g}, "
                f"{attempt} attempt(s))"
            )
        escalations.append(f"cholesky failed at rel_damp={rd:g} (info={info}); retrying with {nxt:g}")
        rd = nxt
    raise AssertionError("unreachable")  # pragma: no cover


def damped_inverse(H: np.ndarray, rel_damp: float = 0.01, max_damp: float = 1.0):
    """(Hinv, rel_damp_used, escalations): full symmetric inverse of the damped H (potrf + potri)."""
    L, rd, _, esc = damped_cholesky(H, rel_damp, max_damp)
    with blas_threads():
        Hinv, info = lapack.dpotri(L, lower=1)
    if info != 0:
        raise FactorizationError(f"potri failed (info={info})")
    Hinv = np.tril(Hinv) + np.tril(Hinv, -1).T
    return Hinv, rd, esc


def upper_inverse_factor(H: np.ndarray, rel_damp: float = 0.01, max_damp: float = 1.0):
    """(U, rel_damp_used, escalations): upper-triangular U with U^T U = (H + lambda I)^-1.

    Flip trick (docs/sbc_method.md §A.2): with J the index reversal, J H J = L L^T gives
    H^-1 = (J L^-1 J)^T (J L^-1 J) and J L^-1 J is upper triangular: potrf + trtri = 2/3 d^3 FLOPs
    instead of the 4/3 d^3 of SparseGPT's cholesky -> cholesky_inverse -> cholesky chain.
    """
    L, rd, _, esc = damped_cholesky(H, rel_damp, max_damp, reverse=True)
    with blas_threads():
        Linv, info = lapack.dtrtri(L, lower=1)
    if info != 0:
        raise FactorizationError(f"trtri failed (info={info})")
    U = np.ascontiguousarray(np.tril(Linv)[::-1, ::-1])
    return U, rd, esc


@njit(cache=True, nogil=True)
def _upper_row_norms(G, r0, r1, out):
    """out[j] = sum_{k >= j} G[j, k]^2 in float64 (_dot4), rows [r0, r1): the column norms of the lower triangle
    of the Fortran array G^T."""
    d = G.shape[1]
    for j in range(r0, r1):
        out[j] = _dot4(G[j], G[j], j, d)


def inverse_column_norms(L: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """sum_i (L^-1)_ij^2 for each column j (float64 sums) of a float32 lower-triangular Fortran L: the
    diagonal of (L L^T)^-1.  L^-1 by _cholesky.trtri_blocked (d^3 / 3 flop, in place when ``overwrite``,
    on several threads when that pays), then the column norms of its lower triangle (rows of the C view).
    NaN where L has a zero on its diagonal."""
    L = np.asfortranarray(L, dtype=np.float32)
    d = L.shape[0]
    if d == 0:
        return np.zeros(0)
    X = L if overwrite else L.copy(order="F")
    if trtri_blocked(X) != 0:
        return np.full(d, np.nan)
    out = np.empty(d)
    G = X.T  # C-ordered: row j from j on is column j of the lower triangle
    parallel_map(lambda s: _upper_row_norms(G, s[0], s[1], out), row_spans(d), nbytes=2 * d * d)
    return out


def inverse_diagonal(H: np.ndarray, rel_damp: float = 0.01, max_damp: float = 1.0):
    """(diag((H + lambda I)^-1), rel_damp_used, escalations) for GPTQ's column order argsort(diag H^-1).

    Computed in float32 (_cholesky.potrf_blocked, then H_d^-1 = L^-T L^-1: its diagonal is the column
    norms of L^-1, `inverse_column_norms`): the order needs only the ranking, and the float32 steps take
    less than half the time of their float64 twins, which dominated the whole quantization of a layer
    (benchmarks/bench_kernels.py).  The relative error is about cond(L) * 6e-8, so only near-ties can rank
    differently from a float64 inverse.  When float32 cannot factor the damped matrix (or gives a non-finite
    diagonal) the float64 path with its damping escalation (upper_inverse_factor) decides, as before."""
    rd, max_damp = check_damping(rel_damp), check_damping(max_damp, "max_damp")
    H = np.asarray(H, dtype=np.float64)
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        raise ValueError(f"H must be square, got {H.shape}")
    diag = np.diag(H)
    live = diag > 0
    with np.errstate(over="ignore", invalid="ignore"):
        lam = rd * (float(diag[live].mean()) if live.any() else 1.0)
    if math.isfinite(lam) and (rd > 0 or live.all()):
        # C order: the upper triangle (all that is read; H is symmetric) is the lower one of the Fortran view
        G = np.empty(H.shape, np.float32)
        finite = parallel_map(lambda s: _upper32(H, np.float32(lam), G, *s), row_spans(H.shape[0]), nbytes=6 * H.size)
        info = potrf_blocked(G.T) if all(finite) else -1  # in place
        if info == 0:
            d = inverse_column_norms(G.T, overwrite=True)  # reads only that triangle
            if np.all(np.isfinite(d)) and np.all(d > 0):
                return d, rd, []
    U, rd, esc = upper_inverse_factor(H, rd, max_damp)
    return (U * U).sum(axis=0), rd, esc
