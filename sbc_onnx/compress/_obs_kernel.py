"""Compiled (numba) loops of ExactOBS: Step 1, the greedy per-row trace, one row at a time
(``trace_rows``), and Step 2's per-row masked solves (``sub_solve_rows``: gathered Cholesky systems).

Per row, every iteration eliminates the ``bi`` alive weights of smallest score w_q^2 / [H^-1]_qq with one
group-OBS update.  The rank-bi downdates  Hinv -= Hinv[:,P] K Hinv[P,:]  (K = Hinv[P,P]^-1) are kept
*lazily*: only the rows A = Hinv[P,:] and Bt = K A are stored, so the current rows Hinv[P,:] are
Hs[P,:] - A[:,P]^T Bt (O(r s) each) and the diagonal is maintained incrementally.  Every ``flush``
eliminations the eliminated rows/columns are compacted away (OBC's shrinking active set) and the
downdate is applied to the alive block with one sgemm:  Hs <- Hs[alive, alive] - A[:, alive]^T Bt[:, alive].
The trace then costs sum_s 2 r s^2 = 2/3 d^3 per row in GEMM, plus O(r d^2) in fused loops.

Compiled because at d <= 512 the NumPy version was bound by per-iteration call overhead (d greedy
iterations of some thirty array calls each, far above the FLOP count; measurements in
benchmarks/results/bench_compress.md).  A row's working set (s x s float32 block + 2 (flush + b_in) x s
factors) stays in cache for d <= 512.

Step 2 gathers each row's system and solves it by Cholesky.  The loop is compiled so that small
systems do not pay a Python call each (the NumPy version stacked them, padded, by size).

Rows are independent: both kernels have a prange twin that spreads the rows over numba's threads when
the work is large enough (threads.py); the serial twin is the reference and the bits are the same.

N:M patterns: ``m > 0`` limits every group idx // m to ``cap0[group]`` eliminations, at most one per
group per iteration (so a capacity can never be exceeded); bi = min(b_in, groups with capacity left).
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

from .threads import blas_threads, numba_threads, row_threads


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _diag_inverse(G, K):
    """K <- diag(1 / G_ii) (0 where G_ii <= 0): the fallback when a block of Hinv, PD in exact
    arithmetic, lost definiteness to float32 rounding.  It only shapes the trace (order and scores);
    the compensation is solved again exactly in float64.  (np.linalg.pinv here made the kernel's
    first-call compilation much longer.)"""
    n = G.shape[0]
    for i in range(n):
        for j in range(n):
            K[i, j] = 0.0
        if G[i, i] > 0.0:
            K[i, i] = 1.0 / G[i, i]


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _small_inverse(G, M, K):
    """K <- inverse of the tiny float64 block G of Hinv (PD in exact arithmetic), as float32, by
    Gauss-Jordan with partial pivoting on the scratch M, no allocation (several times faster than
    np.linalg.inv in numba for these tiny blocks); _diag_inverse if a pivot vanishes or the result is not finite;
    a non-finite block -> 0 (the weights are then removed without compensation)."""
    n = G.shape[0]
    if not np.all(np.isfinite(G)):
        K[:n, :n] = 0.0
        return
    if n == 1:
        K[0, 0] = 1.0 / G[0, 0] if G[0, 0] != 0.0 else 0.0
        return
    for i in range(n):
        for j in range(n):
            M[i, j] = G[i, j]
            M[i, n + j] = 1.0 if i == j else 0.0
    for col in range(n):
        piv = col
        for i in range(col + 1, n):
            if abs(M[i, col]) > abs(M[piv, col]):
                piv = i
        if M[piv, col] == 0.0:
            _diag_inverse(G, K)
            return
        if piv != col:
            for j in range(2 * n):
                M[col, j], M[piv, j] = M[piv, j], M[col, j]
        f = 1.0 / M[col, col]
        for j in range(2 * n):
            M[col, j] *= f
        for i in range(n):
            if i != col and M[i, col] != 0.0:
                g = M[i, col]
                for j in range(2 * n):
                    M[i, j] -= g * M[col, j]
    for i in range(n):
        for j in range(n):
            if not np.isfinite(M[i, n + j]):
                _diag_inverse(G, K)
                return
    for i in range(n):
        for j in range(n):
            K[i, j] = M[i, n + j]


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _select(sc, w, dcur, dead, idx, s, bi, m, cap, taken, P, sP):
    """The bi smallest alive scores in ascending order (bi argmin passes; ties -> lowest position),
    marked dead.  m == 0: over the maintained scores ``sc`` (+inf once dead); N:M: recomputed under the
    group capacities.  NaN scores are never preferred (recorded as +inf)."""
    for j in range(bi):
        best = np.inf
        bp = -1
        first = -1
        if m == 0:
            for q in range(s):
                if sc[q] < best:
                    best = sc[q]
                    bp = q
            if bp < 0:  # only +inf / NaN scores left: the first alive position
                for q in range(s):
                    if not dead[q]:
                        bp = q
                        break
                best = np.inf
        else:
            for q in range(s):
                if dead[q]:
                    continue
                g = idx[q] // m
                if cap[g] == 0 or taken[g]:
                    continue
                if first < 0:
                    first = q
                v = w[q] * w[q] / dcur[q]
                if v < best:
                    best = v
                    bp = q
            if bp < 0:
                bp = first
                best = np.inf
            taken[idx[bp] // m] = True
        P[j] = bp
        sP[j] = best
        dead[bp] = True
        sc[bp] = np.inf
    if m > 0:
        for j in range(bi):
            g = idx[P[j]] // m
            taken[g] = False
            cap[g] -= 1


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _compact(Hs, A, Bt, w, dcur, sc, idx, dead, s, r, buf):
    """Drop the dead positions and apply the r lazy downdates to the alive block (one sgemm), written
    into the flat scratch ``buf`` (not Hs; reused by later flushes: a fresh block per flush cost page
    faults on every one for large d).
    The alive entries of the tail [s2, s) move into the holes that dead ones left in [0, s2), so all
    other rows and columns are copied contiguously.  Returns the new block; w, dcur, sc, idx, dead are
    compacted in place (the diagonal refreshed exactly)."""
    s2 = s - r  # every elimination since the last flush removed one alive position
    src = np.arange(s2)  # new position i holds old position src[i]
    holes = np.empty(r, np.int64)
    nh = 0
    for q in range(s2):
        if dead[q]:
            holes[nh] = q
            nh += 1
    k = 0
    for q in range(s2, s):
        if not dead[q]:
            src[holes[k]] = q
            k += 1
    Ac = np.empty((r, s2), np.float32)
    Bc = np.empty((r, s2), np.float32)
    for t in range(r):
        at = A[t]
        bt = Bt[t]
        for i in range(s2):
            Ac[t, i] = at[src[i]]
            Bc[t, i] = bt[src[i]]
    Hn = buf[:s2 * s2].reshape((s2, s2))
    np.dot(Ac.T, Bc, Hn)  # the downdate on the alive block, in new positions
    tmp = np.empty(nh, np.float32)
    for i in range(s2):
        hn = Hn[i]
        hs = Hs[src[i]]
        if src[i] == i:  # contiguous, then the hole columns from their source columns
            for k in range(nh):
                tmp[k] = hs[src[holes[k]]] - hn[holes[k]]
            for j in range(s2):
                hn[j] = hs[j] - hn[j]
            for k in range(nh):
                hn[holes[k]] = tmp[k]
        else:
            for j in range(s2):
                hn[j] = hs[src[j]] - hn[j]
    for i in range(s2):  # src[i] >= i: the forward copy never overwrites unread entries
        q = src[i]
        w[i] = w[q]
        idx[i] = idx[q]
        dcur[i] = Hn[i, i]
        dead[i] = False
        sc[i] = w[i] * w[i] / dcur[i]
    return Hn


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _trace_row(H0, w0, b_in, flush, m, cap0, order, scores):
    d = H0.shape[0]
    n_elim = order.shape[0]
    F = flush + b_in  # r < flush before a step and a step adds <= b_in rows
    w = w0.copy()
    dcur = np.empty(d, np.float32)
    sc = np.empty(d, np.float32)
    for q in range(d):
        dcur[q] = H0[q, q]
        sc[q] = w[q] * w[q] / dcur[q]
    idx = np.arange(d)
    dead = np.zeros(d, np.bool_)
    A = np.empty((F, d), np.float32)
    Bt = np.empty((F, d), np.float32)
    HPt = np.empty((b_in, d), np.float32)
    P = np.empty(b_in, np.int64)
    sP = np.empty(b_in, np.float32)
    c = np.empty(b_in, np.float32)
    Gbuf = np.empty((b_in, b_in))
    Mbuf = np.empty((b_in, 2 * b_in))
    K = np.empty((b_in, b_in), np.float32)
    dpos = np.empty(F, np.int64)  # positions eliminated since the last flush
    cap = cap0.copy()
    taken = np.zeros(cap0.shape[0], np.bool_)
    Hs = H0
    bufs = np.empty((2, (d - min(flush, d)) ** 2), np.float32)  # ping-pong blocks (after the first flush)
    nb = 0
    s = d
    r = 0
    pos = 0
    while pos < n_elim:
        bi = min(b_in, n_elim - pos)
        if m > 0:
            navail = 0
            for g in range(cap.shape[0]):
                if cap[g] > 0:
                    navail += 1
            bi = min(bi, navail)
        _select(sc, w, dcur, dead, idx, s, bi, m, cap, taken, P, sP)
        for j in range(bi):
            order[pos + j] = idx[P[j]]
            scores[pos + j] = sP[j] if sP[j] == sP[j] else np.inf
        # current rows Hinv[P, :] = Hs[P, :] - A[:r, P]^T Bt[:r, :]   (rows == columns: symmetric)
        for j in range(bi):
            p = P[j]
            hj = HPt[j]
            hs = Hs[p]
            for q in range(s):
                hj[q] = hs[q]
            t = 0
            while t + 4 <= r:  # four factor rows per pass: a quarter of the loads/stores of hj
                a0, a1, a2, a3 = A[t, p], A[t + 1, p], A[t + 2, p], A[t + 3, p]
                b0, b1, b2, b3 = Bt[t], Bt[t + 1], Bt[t + 2], Bt[t + 3]
                for q in range(s):
                    hj[q] -= (a0 * b0[q] + a1 * b1[q]) + (a2 * b2[q] + a3 * b3[q])
                t += 4
            while t < r:
                a = A[t, p]
                bt = Bt[t]
                for q in range(s):
                    hj[q] -= a * bt[q]
                t += 1
        G = Gbuf[:bi, :bi]
        for i in range(bi):
            for j in range(bi):
                G[i, j] = HPt[i, P[j]]
        _small_inverse(G, Mbuf, K)
        for j in range(bi):  # c = K w_P (before w changes)
            acc = np.float32(0.0)
            for i in range(bi):
                acc += K[j, i] * w[P[i]]
            c[j] = acc
        for j in range(bi):
            dpos[r + j] = P[j]
        if bi == 1 and m == 0:  # one fused pass: factor rows, w, diagonal and scores
            k00 = K[0, 0]
            c0 = c[0]
            h = HPt[0]
            at = A[r]
            bt = Bt[r]
            for q in range(s):
                hq = h[q]
                bq = k00 * hq
                at[q] = hq
                bt[q] = bq
                wq = w[q] - c0 * hq
                w[q] = wq
                dq = dcur[q] - hq * bq
                dcur[q] = dq
                sc[q] = wq * wq / dq
        else:
            for j in range(bi):  # Bt rows = K HPt ; A rows = HPt
                bt = Bt[r + j]
                at = A[r + j]
                hj = HPt[j]
                for q in range(s):
                    bt[q] = 0.0
                    at[q] = hj[q]
                for i in range(bi):
                    kji = K[j, i]
                    hi = HPt[i]
                    for q in range(s):
                        bt[q] += kji * hi[q]
            for j in range(bi):  # w -= HPt^T c ;  diag(Hinv) -= diag(HPt^T K HPt)
                cj = c[j]
                hj = HPt[j]
                bt = Bt[r + j]
                for q in range(s):
                    w[q] -= cj * hj[q]
                    dcur[q] -= hj[q] * bt[q]
            if m == 0:
                for q in range(s):
                    sc[q] = w[q] * w[q] / dcur[q]
        for j in range(bi):
            w[P[j]] = 0.0
        for t in range(r + bi):  # eliminated since the last flush: never chosen again (their w is ~0)
            sc[dpos[t]] = np.inf
        r += bi
        pos += bi
        if r >= flush and pos < n_elim:
            Hs = _compact(Hs, A, Bt, w, dcur, sc, idx, dead, s, r, bufs[nb])
            nb = 1 - nb
            s = Hs.shape[0]
            r = 0


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _trace_rows(H0, W, b_in, flush, m, cap0, order, scores):
    for i in range(W.shape[0]):
        _trace_row(H0, W[i], b_in, flush, m, cap0, order[i], scores[i])


@njit(cache=True, error_model="numpy", fastmath={"contract"}, parallel=True)
def _trace_rows_par(H0, W, b_in, flush, m, cap0, order, scores):
    """_trace_rows with the rows spread over numba's threads: each row reads only H0 and its own w and
    writes only its own order / scores, so the result is the same bits whatever the thread count."""
    for i in prange(W.shape[0]):
        _trace_row(H0, W[i], b_in, flush, m, cap0, order[i], scores[i])


def trace_rows(H0, W, b_in, flush, m, cap0, order, scores) -> None:
    """Run the trace for every row of W (float32, (d_out, d)) against the symmetric float32 H0 = H^-1;
    fills order / scores (d_out, n_elim) in place.  Rows run in parallel when that pays (threads.row_threads)."""
    n = row_threads(W.shape[0], W.shape[1] ** 3)
    with blas_threads():
        if n > 1:
            with numba_threads(n):
                _trace_rows_par(H0, W, b_in, flush, m, cap0, order, scores)
        else:
            _trace_rows(H0, W, b_in, flush, m, cap0, order, scores)
    _compiled("trace_rows")


@njit(cache=True, error_model="numpy")
def _spd_solve(G, b):
    """x = G^-1 b for a (numerically) SPD G: Cholesky (LAPACK potrf) and two substitutions.  Returns
    (x, ok); ok is False if G is not positive definite or x is not finite."""
    m = G.shape[0]
    ok = True
    try:
        L = np.linalg.cholesky(G)
    except Exception:  # not positive definite
        ok = False
        L = np.empty((0, 0))
    if ok:
        x = b.copy()
        for i in range(m):  # L y = b (rows of L: contiguous)
            acc = x[i]
            Li = L[i]
            for k in range(i):
                acc -= Li[k] * x[k]
            x[i] = acc / Li[i]
        for i in range(m - 1, -1, -1):  # L^T x = y, column-oriented (reads rows of L)
            x[i] /= L[i, i]
            xi = x[i]
            Li = L[i]
            for k in range(i):
                x[k] -= Li[k] * xi
        if np.all(np.isfinite(x)):
            return x, True
    return b, False


def sub_solve_rows(A, sel, rhs, X) -> np.ndarray:
    """For every row i: X[i, S] = A[S, S]^-1 rhs[i, S] with S = flatnonzero(sel[i]) (A: SPD float64,
    a damped Hessian or its inverse); X must be zero elsewhere on entry.  Returns the rows whose
    system was not numerically positive definite (left 0 for the caller's least squares).  Rows run in
    parallel when that pays (threads.row_threads; the same bits whatever the thread count)."""
    m = int(sel.sum(1).max()) if sel.size else 0
    n = row_threads(sel.shape[0], m ** 3 / 3)
    failed = np.zeros(sel.shape[0], np.bool_)
    with blas_threads():
        if n > 1:
            with numba_threads(n):
                _sub_solve_rows_par(A, sel, rhs, X, failed)
        else:
            _sub_solve_rows(A, sel, rhs, X, failed)
    _compiled("sub_solve_rows")
    return np.flatnonzero(failed)


@njit(cache=True, error_model="numpy")
def _sub_solve_row(A, sel, rhs, X, failed, i, S):
    d = sel.shape[1]
    m = 0
    for j in range(d):
        if sel[i, j]:
            S[m] = j
            m += 1
    if m == 0:
        return
    G = np.empty((m, m))
    b = np.empty(m)
    for a in range(m):
        Aa = A[S[a]]
        for c in range(m):
            G[a, c] = Aa[S[c]]
        b[a] = rhs[i, S[a]]
    x, ok = _spd_solve(G, b)
    if not ok:
        failed[i] = True
        return
    for a in range(m):
        X[i, S[a]] = x[a]


@njit(cache=True, error_model="numpy")
def _sub_solve_rows(A, sel, rhs, X, failed):
    S = np.empty(sel.shape[1], np.int64)
    for i in range(sel.shape[0]):
        _sub_solve_row(A, sel, rhs, X, failed, i, S)


@njit(cache=True, error_model="numpy", parallel=True)
def _sub_solve_rows_par(A, sel, rhs, X, failed):
    for i in prange(sel.shape[0]):
        S = np.empty(sel.shape[1], np.int64)
        _sub_solve_row(A, sel, rhs, X, failed, i, S)


# ---- "is the compiled code on disk?" -------------------------------------------------------------------
# numba (cache=True) keeps the compiled kernels beside this file and reloads them in later processes; only
# the first run after an install or an update compiles, which takes long enough to deserve a notice.  The
# project does not read numba's cache (its layout is not public API): after both kernels have run once,
# it leaves its own marker in the user cache folder, named after everything that invalidates numba's
# cache (this file's source, the numba and Python versions, the interpreter, the machine).
_KERNELS = ("trace_rows", "sub_solve_rows")
_ran: set[str] = set()


def _marker() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    key = hashlib.sha256()
    key.update(Path(__file__).read_bytes())
    for part in (numba.__version__, sys.version, sys.executable, platform.machine(),
                 os.environ.get("NUMBA_CACHE_DIR", "")):
        key.update(b"\0" + part.encode())
    return Path(base) / "sbc-onnx" / f"numba-obs-kernels-{key.hexdigest()[:20]}"


def _compiled(name: str) -> None:
    """Called after a kernel returned: it is compiled and (cache=True) saved, or was loaded from disk."""
    if name in _ran:
        return
    _ran.add(name)
    if _ran.issuperset(_KERNELS):
        try:
            path = _marker()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        except OSError:  # a read-only home: the notice is only a courtesy
            pass


def compiled_on_disk() -> bool:
    """True when the ExactOBS kernels have been compiled (and cached on disk by numba) by an earlier run of
    this installation, so loading them is quick; False before the first run after an install or an
    update, which compiles them.  Best effort (a marker of the project's own, see above): deleting
    numba's cache behind its back only costs the accuracy of the notice."""
    try:
        return _marker().exists()
    except OSError:
        return True
