"""ExactOBS pruning (methods "sbc" and "obc"; spec §2.2).  "obc" is the same code fed the
identity-filter (current) Hessian.

Step 1 (trace): every row greedily eliminates B_in weights per iteration with the group-OBS update,
recording each weight's score w_p^2 / [H^-1]_pp at the moment it is eliminated.  Rows are batched
(B_out rows share one (B_out, d, d) float32 stack of inverses, bounded by ``mem_budget``).
Speed: the rank-B_in downdates  Hinv -= Hinv[:,P] Hinv[P,P]^-1 Hinv[P,:]  are kept *lazily* as
A (d x r) and Bt (r x d) factors and flushed into the stack with one GEMM (sgemm, in place) every
``flush`` ranks.  Between flushes the needed columns Hinv[:,P] are corrected with A @ Bt[:,P] and the
diagonal is maintained incrementally, so the O(d_out d^3) work runs as GEMM instead of memory-bound
rank-B_in updates.  Mathematically identical to the eager update.
Global selection: the k smallest recorded scores of the layer; n_i = how many fall in row i.
Step 2: from the ORIGINAL W and the float64 damped H, one exact group-OBS solve per row
  delta = -Hinv[:,P] Hinv[P,P]^-1 W[i,P]  ==  w_K = w0_K + H_KK^-1 H_KP w0_P  (masked least squares);
we evaluate whichever side (|P| or |K|) is smaller.  Masked entries are exactly 0.
N:M (not in the paper; like the TWTcodeKing/SparseSNN fork): the same greedy trace under a per-group
capacity (each group of m prunes m - n); per iteration at most one weight per group is eliminated so
the capacity can never be exceeded; every row then prunes exactly its pattern count (k is implied).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import blas

from .numerics import damped_hessian, damped_inverse

__all__ = ["PruneResult", "prune_exact_obs", "exact_resolve", "obs_trace", "masked_solve"]


@dataclass
class PruneResult:
    W: np.ndarray                    # float64 pruned + compensated weights
    mask: np.ndarray                 # bool, True = kept
    damp: float                      # relative damping actually used
    escalations: list = field(default_factory=list)
    order: np.ndarray | None = None  # ExactOBS: per-row elimination order (d_out, n_elim)
    scores: np.ndarray | None = None  # ExactOBS: score of each eliminated weight, in that order
    seconds: dict = field(default_factory=dict)


def _b_in(d_in: int) -> int:
    return math.ceil(d_in / min(d_in, 256))


def obs_trace(W, Hinv, *, b_in=None, pattern=None, row_scale=None, mem_budget=1 << 30, flush=64):
    """Step 1 of ExactOBS.  Returns (order, scores) of shape (d_out, n_elim); n_elim = d_in, or the
    per-row pattern count for N:M."""
    W = np.asarray(W, dtype=np.float64)
    d_out, d = W.shape
    b_in = _b_in(d) if b_in is None else int(b_in)
    H0 = np.asarray(Hinv, dtype=np.float32)
    B = int(max(1, min(d_out, mem_budget // (4 * d * d))))
    if pattern is not None:
        n, m = pattern
        G = -(-d // m)
        cap0 = np.full(G, m - n, dtype=np.int64)
        if d % m:
            cap0[-1] = max(0, d % m - n)
        n_elim = int(cap0.sum())
    else:
        n_elim = d
    order = np.empty((d_out, n_elim), dtype=np.int64)
    scores = np.empty((d_out, n_elim), dtype=np.float64)
    flush = max(int(flush), b_in)
    if pattern is None:
        for r0 in range(0, d_out, B):
            r1 = min(d_out, r0 + B)
            _trace_block(W[r0:r1], H0, b_in, flush, order[r0:r1], scores[r0:r1])
            if row_scale is not None:
                scores[r0:r1] *= np.asarray(row_scale, np.float64)[r0:r1, None] ** 2
        return order, scores
    for r0 in range(0, d_out, B):
        r1 = min(d_out, r0 + B)
        nb = r1 - r0
        Hs = np.empty((nb, d, d), dtype=np.float32)
        Hs[:] = H0
        w = W[r0:r1].astype(np.float32)
        dcur = np.repeat(np.diag(H0)[None, :], nb, axis=0).astype(np.float32)
        A = np.empty((nb, d, flush + b_in), dtype=np.float32)   # lazy downdate:  Hinv_true = Hs - A Bt
        Bt = np.empty((nb, flush + b_in, d), dtype=np.float32)
        r = 0
        ridx = np.arange(nb)[:, None]  # fancy-index gather of rows is ~10x faster than take_along_axis
        alive = np.ones((nb, d), dtype=bool)
        cap = None if pattern is None else np.repeat(cap0[None, :], nb, axis=0)
        pos = 0
        while pos < n_elim:
            with np.errstate(divide="ignore", invalid="ignore"):
                sc = np.where(alive, w * w / dcur, np.inf)
            sc[np.isnan(sc)] = np.inf  # eliminated or degenerate entries are never chosen again
            if pattern is None:
                bi = min(b_in, n_elim - pos)
                P = np.argpartition(sc, bi - 1, axis=1)[:, :bi] if bi < d else np.argsort(sc, axis=1)
            else:
                # one candidate (the group minimum) per group that still has capacity
                pad = np.full((nb, G * m), np.inf, dtype=sc.dtype)
                pad[:, :d] = sc
                g = pad.reshape(nb, G, m)
                arg = np.argmin(g, axis=2)
                gmin = np.take_along_axis(g, arg[:, :, None], 2)[:, :, 0]
                gmin[cap == 0] = np.inf
                bi = int(min(b_in, n_elim - pos, (cap > 0).sum(1).min()))
                gsel = np.argpartition(gmin, bi - 1, axis=1)[:, :bi] if bi < G else np.argsort(gmin, 1)
                P = gsel * m + np.take_along_axis(arg, gsel, 1)
                np.put_along_axis(cap, gsel, np.take_along_axis(cap, gsel, 1) - 1, 1)
            sP = np.take_along_axis(sc, P, 1)
            o = np.argsort(sP, axis=1, kind="stable")
            P = np.take_along_axis(P, o, 1)
            order[r0:r1, pos:pos + bi] = P
            scores[r0:r1, pos:pos + bi] = np.take_along_axis(sP, o, 1)
            # current columns Hinv[:, P] = Hs[:, :, P] - A[:, :, :r] @ Bt[:, :r, P]
            # gather ROWS P of the symmetric stack (contiguous reads) instead of strided columns
            HP = Hs[ridx, P].transpose(0, 2, 1)
            if r:
                HP = HP - A[:, :, :r] @ np.take_along_axis(Bt[:, :r, :], P[:, None, :], axis=2)
            HPP = np.take_along_axis(HP, P[:, :, None], axis=1).astype(np.float64)
            HPPinv = np.linalg.pinv(HPP, hermitian=True).astype(np.float32)  # tiny (bi x bi) blocks
            wP = np.take_along_axis(w, P, 1)
            w -= (HP @ (HPPinv @ wP[:, :, None]))[:, :, 0]
            np.put_along_axis(w, P, 0.0, 1)
            np.put_along_axis(alive, P, False, 1)
            newBt = HPPinv @ HP.transpose(0, 2, 1)  # (nb, bi, d); update = HP @ newBt
            A[:, :, r:r + bi] = HP
            Bt[:, r:r + bi, :] = newBt
            dcur -= (HP * newBt.transpose(0, 2, 1)).sum(axis=2)
            r += bi
            pos += bi
            if r >= flush:
                for b in range(nb):  # in-place sgemm on the transposed (F-ordered) view: no temporaries
                    blas.sgemm(-1.0, Bt[b, :r].T, A[b, :, :r].T, beta=1.0, c=Hs[b].T, overwrite_c=1)
                r = 0
        if row_scale is not None:
            scores[r0:r1] *= np.asarray(row_scale, np.float64)[r0:r1, None] ** 2
    return order, scores


def _trace_block(Wb, H0, b_in, flush, order, scores):
    """Unstructured Step 1 for one block of rows (all rows eliminate b_in weights per iteration).

    Lazy downdates kept as row-major factors At (r, d) = Hinv[:, P]^T and Bt (r, d) =
    Hinv_PP^-1 Hinv[P, :] (contiguous, so the column corrections are one batched GEMM and the flush
    is one in-place sgemm per row).  Eliminated entries get a NaN diagonal: their score is NaN, which
    argpartition places after every number (never chosen again), with no masking pass."""
    nb, d = Wb.shape
    Hs = np.empty((nb, d, d), dtype=np.float32)
    Hs[:] = H0
    w = Wb.astype(np.float32)
    dcur = np.repeat(np.diag(H0)[None, :], nb, axis=0).astype(np.float32)
    At = np.empty((nb, flush + b_in, d), dtype=np.float32)
    Bt = np.empty((nb, flush + b_in, d), dtype=np.float32)
    sc = np.empty((nb, d), dtype=np.float32)
    ridx = np.arange(nb)[:, None]
    r = 0
    pos = 0
    with np.errstate(divide="ignore", invalid="ignore"):
        while pos < d:
            bi = min(b_in, d - pos)
            np.multiply(w, w, out=sc)
            np.divide(sc, dcur, out=sc)
            if bi < d:
                P = np.argpartition(sc, bi - 1, axis=1)[:, :bi]
            else:
                P = np.argsort(sc, axis=1)
            sP = np.take_along_axis(sc, P, 1)
            if bi > 1:
                o = np.argsort(sP, axis=1, kind="stable")
                P = np.take_along_axis(P, o, 1)
                sP = np.take_along_axis(sP, o, 1)
            order[:, pos:pos + bi] = P
            scores[:, pos:pos + bi] = np.where(np.isnan(sP), np.inf, sP)
            HPt = Hs[ridx, P]  # (nb, bi, d): rows P of the symmetric stack == columns P
            if r:
                HPt -= np.take_along_axis(Bt[:, :r], P[:, None, :], 2).transpose(0, 2, 1) @ At[:, :r]
            HPP = np.take_along_axis(HPt, P[:, None, :], 2).astype(np.float64)
            if bi == 1:
                HPPinv = np.where(HPP != 0, 1.0 / np.where(HPP != 0, HPP, 1.0), 0.0).astype(np.float32)
            else:
                HPPinv = np.linalg.pinv(HPP, hermitian=True).astype(np.float32)  # tiny (bi x bi) blocks
            wP = np.take_along_axis(w, P, 1)
            w -= ((HPPinv @ wP[:, :, None]).transpose(0, 2, 1) @ HPt)[:, 0, :]
            newBt = HPPinv @ HPt  # (nb, bi, d); the downdate is HPt^T newBt
            At[:, r:r + bi] = HPt
            Bt[:, r:r + bi] = newBt
            dcur -= np.einsum("nbd,nbd->nd", HPt, newBt)
            np.put_along_axis(w, P, 0.0, 1)
            np.put_along_axis(dcur, P, np.nan, 1)
            r += bi
            pos += bi
            if r >= flush and pos < d:
                for b in range(nb):  # Hs[b] -= At^T Bt, in place on the F view (Hs symmetric)
                    blas.sgemm(-1.0, Bt[b, :r].T, At[b, :r].T, trans_b=1, beta=1.0, c=Hs[b].T,
                               overwrite_c=1)
                r = 0


def _batched_sub_solve(A, sel, rhs_full, chunk_bytes=64 << 20):
    """For every row i: solve A[S_i, S_i] x_i = rhs_full[i, S_i] with S_i = flatnonzero(sel[i]).
    Rows are sorted by |S_i| and solved in chunks as stacked systems padded with identity blocks
    (np.linalg.solve on (rows, m, m)).  Returns X (rows, d) with x_i scattered into S_i, 0 elsewhere."""
    nr, d = sel.shape
    X = np.zeros((nr, d + 1))
    if nr == 0:
        return X[:, :d]
    sizes = sel.sum(1)
    order = np.argsort(sizes, kind="stable")
    # per row, the selected indices first (ascending), then the rest
    idx_all = np.argsort(~sel, axis=1, kind="stable")
    s0 = 0
    while s0 < nr:
        m = int(sizes[order[s0]])
        nb = max(1, chunk_bytes // (8 * max(m, 1) ** 2))
        s1 = min(nr, s0 + nb)
        rows = order[s0:s1]
        m = int(sizes[rows].max())
        if m == 0:
            s0 = s1
            continue
        idx = idx_all[rows, :m]
        valid = np.arange(m)[None, :] < sizes[rows][:, None]
        ig = np.where(valid, idx, 0)
        G = A[ig[:, :, None], ig[:, None, :]]
        G *= valid[:, :, None] & valid[:, None, :]
        ar = np.arange(m)
        G[:, ar, ar] += ~valid  # identity on the padding: its solution is 0
        b = np.where(valid, np.take_along_axis(rhs_full[rows], ig, 1), 0.0)
        x = np.linalg.solve(G, b[:, :, None])[:, :, 0]
        Xr = np.zeros((len(rows), d + 1))
        np.put_along_axis(Xr, np.where(valid, idx, d), x, 1)
        X[rows] = Xr
        s0 = s1
    return X[:, :d]


def masked_solve(W0, Hd, mask, Hinv=None):
    """Exact per-row masked least squares with the (damped) Hessian Hd:
    w_K = w0_K + Hd_KK^-1 Hd_KP w0_P, w_P = 0.  Uses the equivalent group-OBS form
    w = w0 - Hinv[:,P] Hinv_PP^-1 w0_P when |P| < |K| (needs Hinv).
    Batched: rows are grouped by system size and solved as stacked (padded) systems; the products
    with Hd / Hinv are one GEMM per form:  R = (W0 * pruned) @ Hd  and  delta = C @ Hinv."""
    W0 = np.asarray(W0, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    Wn = np.where(mask, W0, 0.0)
    nP = (~mask).sum(1)
    nK = mask.shape[1] - nP
    active = (nP > 0) & (nK > 0)
    useP = active & (nP < nK) if Hinv is not None else np.zeros_like(active)
    useK = active & ~useP
    rows = np.flatnonzero(useP)
    if rows.size:
        Hinv = np.asarray(Hinv, dtype=np.float64)
        C = _batched_sub_solve(Hinv, ~mask[rows], W0[rows])          # c_i on P_i
        Wn[rows] = np.where(mask[rows], W0[rows] - C @ Hinv, 0.0)     # w_K = w0_K - Hinv[K,P] c
    rows = np.flatnonzero(useK)
    if rows.size:
        Hd = np.asarray(Hd, dtype=np.float64)
        R = np.where(mask[rows], 0.0, W0[rows]) @ Hd                   # Hd[K,P] w0_P on K
        Xk = _batched_sub_solve(Hd, mask[rows], R)
        Wn[rows] = np.where(mask[rows], W0[rows] + Xk, 0.0)
    return Wn


def exact_resolve(W0, H, mask, *, rel_damp=0.01, max_damp=1.0):
    """Re-solve every row exactly on its kept inputs (the brute-force optimum of the damped layer
    objective for a fixed mask).  Returns (W, rel_damp_used, escalations)."""
    Hinv, rd, esc = damped_inverse(H, rel_damp, max_damp)
    Hd, _ = damped_hessian(H, rd)
    return masked_solve(W0, Hd, np.asarray(mask, bool), Hinv), rd, esc


def prune_exact_obs(W, H, k=None, *, rel_damp=0.01, max_damp=1.0, pattern=None, b_in=None,
                    row_scale=None, mem_budget=1 << 30, flush=64) -> PruneResult:
    """ExactOBS / SBC pruning of k weights of the layer (or an (n, m) N:M pattern)."""
    W0 = np.asarray(W, dtype=np.float64)
    d_out, d = W0.shape
    t0 = time.perf_counter()
    Hinv, rd, esc = damped_inverse(H, rel_damp, max_damp)
    Hd, _ = damped_hessian(H, rd)
    t1 = time.perf_counter()
    order, scores = obs_trace(W0, Hinv, b_in=b_in, pattern=pattern, row_scale=row_scale,
                              mem_budget=mem_budget, flush=flush)
    t2 = time.perf_counter()
    if pattern is not None:
        counts = np.full(d_out, order.shape[1])
        if k is not None and int(k) != counts.sum():
            raise ValueError(f"k={k} disagrees with the {pattern} pattern count {counts.sum()}")
    else:
        if k is None or not 0 <= int(k) <= W0.size:
            raise ValueError(f"k must be in [0, {W0.size}], got {k}")
        sel = np.argsort(scores.ravel(), kind="stable")[: int(k)]
        counts = np.bincount(sel // order.shape[1], minlength=d_out)
    mask = np.ones((d_out, d), dtype=bool)
    for i in range(d_out):
        mask[i, order[i, : counts[i]]] = False
    Wn = masked_solve(W0, Hd, mask, Hinv)
    t3 = time.perf_counter()
    return PruneResult(Wn, mask, rd, esc, order, scores,
                       {"factor": t1 - t0, "trace": t2 - t1, "compensate": t3 - t2})
