"""ExactOBS pruning (methods "sbc" and "obc"; spec §2.2).  "obc" is the same code fed the
identity-filter (current) Hessian.

Step 1 (trace): every row greedily eliminates B_in weights per iteration with the group-OBS update,
recording each weight's score w_p^2 / [H^-1]_pp at the moment it is eliminated.  Rows are batched
(B_out rows share one (B_out, d, d) float32 stack of inverses, bounded by ``mem_budget``).
Speed: the rank-B_in downdates  Hinv -= Hinv[:,P] Hinv[P,P]^-1 Hinv[P,:]  are kept *lazily* (the rows
Hinv[P,:] and the tiny inverses) and flushed into the stack with one sgemm per row every ``flush``
ranks; between flushes the needed rows are corrected with one batched product and the diagonal is
maintained incrementally.  At every flush the eliminated rows/columns are compacted away (OBC's
shrinking active set), so the trace costs ~2/3 d^3 per row as GEMM instead of 2 d^3 of memory-bound
rank-B_in updates.  Mathematically identical to the eager update (tests compare with it).
Unstructured rows take the fast path (_trace_block); N:M uses the general loop in obs_trace.
Global selection: the k smallest recorded scores of the layer; n_i = how many fall in row i.
Step 2: from the ORIGINAL W and the float64 damped H, one exact group-OBS solve per row
  delta = -Hinv[:,P] Hinv[P,P]^-1 W[i,P]  ==  w_K = w0_K + H_KK^-1 H_KP w0_P  (masked least squares);
we evaluate whichever side (|P| or |K|) is smaller.  Masked entries are exactly 0.
N:M (not in the paper; like the TWTcodeKing/SparseSNN fork): the same greedy trace under a per-group
capacity (each group of m prunes m - n); per iteration at most one weight per group is eliminated so
the capacity can never be exceeded; every row then prunes exactly its pattern count (k is implied).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import blas, lapack

from .numerics import damped_hessian, damped_inverse

BIG_SYSTEM = 96  # masked_solve: larger per-row systems are solved one by one with Cholesky
CHUNK_BYTES = 4 << 20  # lazy factors of one row chunk (cache-resident during a flush period)

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


@contextlib.contextmanager
def _small_pages():
    """Allocate without NumPy's madvise(MADV_HUGEPAGE): for the (rows, d, d) stack the kernel's huge-page
    compaction on first touch made every first call of a layer size ~1.4x slower (512 x 512: 8.3 s
    cold vs 5.9 s warm with huge pages, 6.8 / 6.4 s without, same load); the warm gain was nil."""
    setter = getattr(getattr(getattr(np, "_core", None), "multiarray", None), "_set_madvise_hugepage", None)
    if setter is None:
        yield
        return
    old = setter(False)
    try:
        yield
    finally:
        setter(old)


def _trace_block(Wb, H0, b_in, flush, order, scores):
    """Unstructured Step 1 for one block of rows (all rows eliminate b_in weights per iteration).

    Lazy downdates: after eliminating blocks P_1..P_m since the last flush,
        Hinv_true = Hs - sum_k A_k^T K_k A_k ,   A_k = Hinv[P_k, :] (b_in x s),  K_k = Hinv_{P_k P_k}^-1,
    so only the rows A_k (contiguous, ``At``) and the tiny K_k (``K``) are stored; the current rows P
    are Hs[P] minus one batched (bi x r) @ (r x s) product.  Eliminated entries get w = 0, diagonal
    +inf and penalty +inf: their score is +inf.  The B_in smallest scores are found with B_in argmin
    passes (argpartition is ~50x slower per row).
    Compaction (OBC's shrinking active set): at every flush each row's alive weights are moved to the
    front (the few alive ones from the tail fill the holes the eliminated ones left, O(r s) moves per
    row, ``perm`` maps positions back to inputs), and the flush GEMM updates only the leading s x s
    block, written back contiguously.  The trace then costs sum_s 2 r s^2 = 2/3 d^3 per row instead of
    2 d^3, and every per-iteration pass shrinks with s."""
    nb, d = Wb.shape
    nblk = -(-flush // b_in) + 1
    F = nblk * b_in
    with _small_pages():
        st = {"h": np.empty(nb * d * d, dtype=np.float32), "a": np.empty(nb * F * d, dtype=np.float32)}
    Hs = st["h"].reshape(nb, d, d)
    Hs[:] = (H0 + H0.T) * np.float32(0.5)  # exactly symmetric (rows are read as columns)
    At = st["a"].reshape(nb, F, d)
    K = np.empty((nb, nblk, b_in, b_in), dtype=np.float32)
    w = Wb.astype(np.float32)
    dcur = np.repeat(np.diag(H0)[None, :], nb, axis=0).astype(np.float32)
    pen = np.zeros((nb, d), dtype=np.float32)  # +inf once eliminated
    perm = np.repeat(np.arange(d)[None, :], nb, axis=0)
    s = d  # active size: positions [0, s) hold the weights not eliminated before the last flush
    r = 0
    pos = 0
    while pos < d:
        steps = []  # the elimination sizes until the next flush (or the end)
        rr = r
        while pos + sum(steps) < d and (rr < flush or not steps):
            steps.append(min(b_in, d - pos - sum(steps)))
            rr += steps[-1]
        # row chunks whose lazy factors stay in cache for all the steps (the corrections re-read
        # A every step: from memory for the whole block they run at ~1 flop/byte)
        chunk = max(8, CHUNK_BYTES // (F * s * 4))
        for c0 in range(0, nb, chunk):
            c = slice(c0, min(nb, c0 + chunk))
            _eliminate(Hs[c], At[c], K[c], w[c], dcur[c], pen[c], perm[c], order[c], scores[c],
                       pos, r, steps)
        pos += sum(steps)
        r = rr
        if r >= flush and pos < d:
            Hs, At, w, dcur, pen, perm, s = _compact_flush(st, Hs, At, K, w, pen, perm, s, r, F)
            r = 0


def _eliminate(Hs, At, K, w, dcur, pen, perm, order, scores, pos, r, steps):
    """Run the greedy eliminations ``steps`` (sizes) on a chunk of rows (all arrays are row slices,
    updated in place); pos / r = eliminations done so far / since the last flush."""
    nb, s, _ = Hs.shape
    b_in = K.shape[2]
    F = At.shape[1]
    ar = np.arange(nb)
    ridx = ar[:, None]
    Af = At.reshape(-1)
    Hf = Hs.reshape(nb * s, s)
    base = (ar * (F * s))[:, None, None] + (np.arange(F) * s)[None, :, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        for bi in steps:
            sc = w * w
            np.divide(sc, dcur, out=sc)
            np.add(sc, pen, out=sc)
            if bi == 1:
                P = np.argmin(sc, axis=1)[:, None]
                sP = sc[ridx, P]
            else:  # ascending: the j-th smallest alive score is the j-th argmin after masking
                P = np.empty((nb, bi), dtype=np.int64)
                sP = np.empty((nb, bi), dtype=np.float32)
                for j in range(bi):
                    p = np.argmin(sc, axis=1)
                    P[:, j] = p
                    sP[:, j] = sc[ar, p]
                    sc[ar, p] = np.inf
            order[:, pos:pos + bi] = perm[ridx, P]
            scores[:, pos:pos + bi] = np.where(np.isnan(sP), np.inf, sP)
            HPt = Hf.take((ridx * s + P).ravel(), axis=0).reshape(nb, bi, s)  # rows P == columns P
            if r:
                m = r // b_in
                Ag = Af.take(base[:, :r] + P[:, None, :])                       # A[:r, P]: (nb, r, bi)
                Bg = (K[:, :m] @ Ag.reshape(nb, m, b_in, bi)).reshape(nb, r, bi)  # (K A)[:r, P]
                HPt -= Bg.transpose(0, 2, 1) @ At[:, :r]
            HPP = HPt[ridx[:, :, None], np.arange(bi)[None, :, None], P[:, None, :]].astype(np.float64)
            HPPinv = _small_inverse(HPP)
            c = HPPinv @ w[ridx, P][:, :, None]  # (nb, bi, 1)
            if bi == 1:
                h = HPt[:, 0]
                w -= c[:, 0] * h
                dcur -= HPPinv[:, 0] * (h * h)
            else:
                w -= (c.transpose(0, 2, 1) @ HPt)[:, 0, :]
                dcur -= np.einsum("nbd,nbd->nd", HPt, HPPinv @ HPt)
            if bi == b_in:
                At[:, r:r + bi] = HPt
                K[:, r // b_in] = HPPinv
            w[ridx, P] = 0.0
            dcur[ridx, P] = np.inf
            pen[ridx, P] = np.inf
            r += bi
            pos += bi


def _small_inverse(HPP):
    """Inverses of a stack of tiny (bi x bi) blocks of Hinv (PD in exact arithmetic) as float32; pinv
    (5x slower: eigh + sorting) only if plain inversion fails or is not finite; 1 x 1 zeros -> 0."""
    if HPP.shape[1] == 1:
        return np.where(HPP != 0, 1.0 / np.where(HPP != 0, HPP, 1.0), 0.0).astype(np.float32)
    try:
        inv = np.linalg.inv(HPP)
        if np.isfinite(inv).all():
            return inv.astype(np.float32)
    except np.linalg.LinAlgError:
        pass
    return np.linalg.pinv(HPP, hermitian=True).astype(np.float32)


def _compact_flush(st, Hs, At, K, w, pen, perm, s, r, F):
    """Apply the r lazy downdates to the alive block and shrink the active size from s to s - r.

    Per row b: the alive entries of the tail [s2, s) (``fill``) move into the holes the eliminated
    ones left in [0, s2) (``dst``).  The new leading block is assembled in a cache-resident copy from
    the old one: rows dst <- rows fill, columns dst <- rows fill transposed (the stack is symmetric;
    contiguous reads instead of strided column gathers), the (dst, dst) block <- (fill, fill); the
    lazy factors are moved the same way, and one in-place sgemm applies the downdate A^T (K A)."""
    nb = Hs.shape[0]
    b_in = K.shape[2]
    m = r // b_in
    s2 = s - r  # every row eliminated exactly r weights since the last flush
    alive = pen == 0
    holes = np.argsort(alive[:, :s2], axis=1, kind="stable")   # dead front positions first
    tail = s2 + np.argsort(~alive[:, s2:], axis=1, kind="stable")  # alive tail positions first
    cnt = (~alive[:, :s2]).sum(1)  # holes per row == alive tail entries per row
    cm = int(cnt.max())
    if cm:
        # vectors: pair the j-th hole with the j-th alive tail entry; rows with fewer holes copy a dead
        # tail entry onto itself (distinct positions, so the scatter is well defined)
        ridx = np.arange(nb)[:, None]
        fill = tail[:, :cm]
        dst = np.where(np.arange(cm)[None, :] < cnt[:, None], holes[:, :cm], fill)
        for x in (w, perm):
            x[ridx, dst] = x[ridx, fill]
    KA = (K[:, :m] @ At[:, :r].reshape(nb, m, b_in, s)).reshape(nb, r, s)
    Hn = st["h"][:nb * s2 * s2].reshape(nb, s2, s2)
    # new block b ends at or before old block b + 1 starts, so writing it never clobbers unread data;
    # from b0 on it also ends before old block b starts: assembled in place, no temporary
    b0 = -(-s2 * s2 // (s * s - s2 * s2))
    for b in range(nb):
        c = int(cnt[b])
        if b >= b0:
            cb = Hn[b]
            R = Hs[b, tail[b, :c]] if c else None  # old rows fill: read before anything is written
            cb[:] = Hs[b, :s2, :s2]
        else:
            cb = np.array(Hs[b, :s2, :s2])
            R = Hs[b, tail[b, :c]] if c else None
        a = np.array(At[b, :r, :s2])
        ka = np.array(KA[b, :, :s2])
        if c:
            hb, fb = holes[b, :c], tail[b, :c]
            cb[hb] = R[:, :s2]
            cb[:, hb] = R[:, :s2].T
            cb[np.ix_(hb, hb)] = R[:, fb]
            a[:, hb] = At[b, :r][:, fb]
            ka[:, hb] = KA[b][:, fb]
        blas.sgemm(-1.0, ka.T, a.T, trans_b=1, beta=1.0, c=cb.T, overwrite_c=1)  # cb -= a^T ka
        if b < b0:
            Hn[b] = cb
    dcur = np.ascontiguousarray(np.einsum("nii->ni", Hn))  # refresh the diagonal exactly
    At = st["a"][:nb * F * s2].reshape(nb, F, s2)
    return (Hn, At, np.ascontiguousarray(w[:, :s2]), dcur, np.zeros((nb, s2), np.float32),
            np.ascontiguousarray(perm[:, :s2]), s2)


def _batched_sub_solve(A, sel, rhs_full, chunk_bytes=64 << 20):
    """For every row i: solve A[S_i, S_i] x_i = rhs_full[i, S_i] with S_i = flatnonzero(sel[i]) (A is
    SPD: a damped Hessian or its inverse).  Systems larger than BIG_SYSTEM: one LAPACK dposv each.
    The rest are sorted by |S_i| and solved in chunks as stacked systems padded with identity blocks
    (np.linalg.solve on (rows, m, m): per-call overhead dominates small systems).  Returns X (rows, d) with x_i scattered into S_i, 0 elsewhere."""
    nr, d = sel.shape
    X = np.zeros((nr, d + 1))
    if nr == 0:
        return X[:, :d]
    sizes = sel.sum(1)
    big = sizes > BIG_SYSTEM
    for i in np.flatnonzero(big):  # large systems: one Cholesky solve each (half the LU flops)
        S = np.flatnonzero(sel[i])
        G = A.take(S, axis=0).take(S, axis=1)
        _, x, info = lapack.dposv(G, rhs_full[i, S], overwrite_a=1, overwrite_b=0)
        if info != 0:  # not numerically positive definite: LU (or least squares) as the small path does
            x = np.linalg.lstsq(A[np.ix_(S, S)], rhs_full[i, S], rcond=None)[0]
        X[i, S] = x
    small = np.flatnonzero(~big)
    order = small[np.argsort(sizes[small], kind="stable")]
    nr = order.size
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
