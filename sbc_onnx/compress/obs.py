"""ExactOBS pruning (methods "sbc" and "obc"; docs/sbc_method.md §2.2).  "obc" is the same code fed the
identity-filter (current) Hessian.

Step 1 (trace): every row greedily eliminates B_in weights per iteration with the group-OBS update,
recording each weight's score w_p^2 / [H^-1]_pp at the moment it is eliminated.  Compiled, one row at
a time (_obs_kernel.py): the rank-B_in downdates are kept lazily and flushed with one sgemm every
``flush`` eliminations on OBC's shrinking active set, ~2/3 d^3 flops per row as GEMM.  Mathematically
identical to the eager update (tests compare with it).  Memory: one row's d x d float32 block.
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

import numba
import numpy as np

from ._obs_kernel import sub_solve_rows, trace_rows
from .masks import nm_pattern, select_smallest
from .numerics import damped_hessian, damped_inverse
from .threads import blas_threads, block_runner


__all__ = ["load_kernels", "PruneResult", "ObsTrace", "prune_exact_obs", "exact_resolve", "obs_trace", "trace_layer",
           "trace_operand", "masked_solve"]


@dataclass
class PruneResult:
    W: np.ndarray                    # float64 pruned + compensated weights
    mask: np.ndarray                 # bool, True = kept
    damp: float | None               # relative damping actually used (None: no Hessian solve, e.g. magnitude)
    escalations: list = field(default_factory=list)
    order: np.ndarray | None = None  # ExactOBS: per-row elimination order (d_out, n_elim)
    scores: np.ndarray | None = None  # ExactOBS: score of each eliminated weight, in that order
    seconds: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


@dataclass(frozen=True)
class ObsTrace:
    """Step 1 of ExactOBS for one layer, kept so that step 2 need not run it again (the "obs" allocation
    ranks every layer by it before any layer is pruned)."""
    order: np.ndarray                # (d_out, n_elim) elimination order of each row
    scores: np.ndarray               # score of each eliminated weight, in that order
    damp: float                      # the relative damping of the H^-1 it ran on
    pattern: tuple[int, int] | None = None


def _b_in(d_in: int) -> int:
    return math.ceil(d_in / min(d_in, 256))


def default_flush(d_in: int) -> int:
    """Eliminations between two flushes of a row's lazy downdates.  A flush rewrites the whole alive block
    (memory traffic); between flushes each step pays O(r s) for the r pending downdates.  Wide layers
    gain from rarer flushes, above all with two rows in flight (two blocks beside one L3); narrow ones
    lose (measured per width: benchmarks/results/kernels.md).  A function of d_in only."""
    return 64 if d_in < 512 else 128 if d_in < 2048 else 256


def obs_trace(W, Hinv, *, b_in=None, pattern=None, flush=None, on_rows=None, prepared=False):
    """Step 1 of ExactOBS.  Returns (order, scores) of shape (d_out, n_elim); n_elim = d_in, or the
    per-row pattern count for N:M.  Runs in float32, one row at a time (compiled: _obs_kernel).
    on_rows(done, total): progress callback, called after every chunk of rows (a 2048 x 2048 layer
    takes minutes).  prepared: Hinv is `trace_operand`'s result already (a writable copy of it), used as it is
    (a row chunk of a big layer would otherwise spend a good part of its time symmetrising it again)."""
    W = np.asarray(W, dtype=np.float64)
    d_out, d = W.shape
    b_in = _b_in(d) if b_in is None else int(b_in)
    H0 = Hinv if prepared else trace_operand(Hinv)
    pattern = nm_pattern(pattern)
    if pattern is not None:
        n, m = pattern
        cap0 = np.full(-(-d // m), m - n, dtype=np.int64)
        if d % m:
            cap0[-1] = max(0, d % m - n)
    else:
        m, cap0 = 0, np.zeros(1, dtype=np.int64)
    n_elim = int(cap0.sum()) if m else d
    order = np.empty((d_out, n_elim), dtype=np.int64)
    scores = np.empty((d_out, n_elim), dtype=np.float64)
    W32 = np.ascontiguousarray(W, dtype=np.float32)
    # a few rows per call so that progress moves, at least one per thread so that every thread has one
    step = d_out if on_rows is None else max(numba.get_num_threads(), -(-(1 << 32) // max(1, d) ** 3))
    for r0 in range(0, d_out, step):
        r1 = min(d_out, r0 + step)
        trace_rows(H0, W32[r0:r1], b_in, max(int(flush or default_flush(d)), b_in), m, cap0, order[r0:r1],
                   scores[r0:r1])
        if on_rows is not None:
            on_rows(r1, d_out)
    return order, scores


def trace_operand(Hinv) -> np.ndarray:
    """The float32, exactly symmetric H^-1 the trace reads (rows are read as columns).  Given a result of its
    own it returns the same bits ((a + a) / 2 == a), so row chunks traced on one operand (distributed/) equal
    the rows of the whole layer's trace."""
    H0 = np.asarray(Hinv, dtype=np.float32)
    return np.ascontiguousarray((H0 + H0.T) * np.float32(0.5))


def trace_layer(W, H, *, rel_damp=0.01, max_damp=1.0, pattern=None, on_rows=None) -> ObsTrace:
    """The ExactOBS trace of W on the damped inverse of H, as `prune_exact_obs` runs it."""
    Hinv, rd, _ = damped_inverse(H, rel_damp, max_damp)
    order, scores = obs_trace(W, Hinv, pattern=pattern, on_rows=on_rows)
    return ObsTrace(order, scores, rd, nm_pattern(pattern))


def _sub_solve(A, sel, rhs):
    """X (rows, d): x_i = A[S_i, S_i]^-1 rhs[i, S_i] on S_i = flatnonzero(sel[i]), 0 elsewhere."""
    A = np.ascontiguousarray(A, np.float64)
    X = np.zeros(sel.shape)
    for i in sub_solve_rows(A, np.ascontiguousarray(sel, bool), np.ascontiguousarray(rhs, np.float64), X):
        S = np.flatnonzero(sel[i])  # not numerically positive definite: least squares
        X[i, S] = np.linalg.lstsq(A[np.ix_(S, S)], rhs[i, S], rcond=None)[0]
    return X


def masked_solve(W0, Hd, mask, Hinv=None):
    """Exact per-row masked least squares with the (damped) Hessian Hd:
    w_K = w0_K + Hd_KK^-1 Hd_KP w0_P, w_P = 0.  Uses the equivalent group-OBS form
    w = w0 - Hinv[:,P] Hinv_PP^-1 w0_P when |P| < |K| (needs Hinv).
    Per row a gathered Cholesky solve (compiled, _obs_kernel.sub_solve_rows); the products with Hd /
    Hinv are one GEMM per form:  R = (W0 * pruned) @ Hd  and  delta = C @ Hinv."""
    W0 = np.asarray(W0, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    n = W0.shape[0]
    spans = [(r0, min(n, r0 + SOLVE_BLOCK)) for r0 in range(0, n, SOLVE_BLOCK)]
    runner = block_runner()
    m = min(mask.shape[1] // 2, int(max((~mask).sum(1).max(), 0))) if mask.size else 0
    if runner is not None and len(spans) > 1:  # elsewhere (distributed/), the same calls: the same bits
        parts = runner(solve_blocks, (W0, Hd, mask, Hinv), spans, n * m ** 3 / 3)
    else:
        parts = [solve_blocks(W0, Hd, mask, Hinv, r0, r1) for r0, r1 in spans]
    return np.concatenate(parts, axis=0) if parts else np.where(mask, W0, 0.0)


SOLVE_BLOCK = 64  # rows per block of masked solves; a row's bits depend on its block only, not on the layer's size


def solve_blocks(W0, Hd, mask, Hinv, r0: int, r1: int) -> np.ndarray:
    """Rows r0:r1 of `masked_solve`, block by block (SOLVE_BLOCK rows from a multiple of it: the GEMMs' rows
    round alike only within the same call, so a block is always the same call wherever it runs)."""
    out = []
    for b0 in range(r0, r1, SOLVE_BLOCK):
        b = slice(b0, min(r1, b0 + SOLVE_BLOCK))
        W, M = W0[b], mask[b]
        Wn = np.where(M, W, 0.0)
        nP = (~M).sum(1)
        nK = M.shape[1] - nP
        active = (nP > 0) & (nK > 0)
        useP = active & (nP < nK) if Hinv is not None else np.zeros_like(active)
        useK = active & ~useP
        with blas_threads():  # the same bits at any thread count (threads.py)
            _masked_solve_rows(W, Hd, M, Hinv, Wn, useP, useK)
        out.append(Wn)
    return np.concatenate(out, axis=0)


def _masked_solve_rows(W0, Hd, mask, Hinv, Wn, useP, useK):
    rows = np.flatnonzero(useP)
    if rows.size:
        Hinv = np.asarray(Hinv, dtype=np.float64)
        C = _sub_solve(Hinv, ~mask[rows], W0[rows])          # c_i on P_i
        Wn[rows] = np.where(mask[rows], W0[rows] - C @ Hinv, 0.0)     # w_K = w0_K - Hinv[K,P] c
    rows = np.flatnonzero(useK)
    if rows.size:
        Hd = np.asarray(Hd, dtype=np.float64)
        R = np.where(mask[rows], 0.0, W0[rows]) @ Hd                   # Hd[K,P] w0_P on K
        Xk = _sub_solve(Hd, mask[rows], R)
        Wn[rows] = np.where(mask[rows], W0[rows] + Xk, 0.0)


def exact_resolve(W0, H, mask, *, rel_damp=0.01, max_damp=1.0):
    """Re-solve every row exactly on its kept inputs (the brute-force optimum of the damped layer
    objective for a fixed mask).  Returns (W, rel_damp_used, escalations)."""
    Hinv, rd, esc = damped_inverse(H, rel_damp, max_damp)
    Hd, _ = damped_hessian(H, rd)
    return masked_solve(W0, Hd, np.asarray(mask, bool), Hinv), rd, esc


def prune_exact_obs(W, H, k=None, *, rel_damp=0.01, max_damp=1.0, pattern=None, b_in=None,
                    flush=None, on_rows=None, trace: ObsTrace | None = None) -> PruneResult:
    """ExactOBS / SBC pruning of k weights of the layer (or an (n, m) N:M pattern).  on_rows: progress
    callback of the trace (see obs_trace).  trace: step 1 already run on this W and H (`trace_layer`
    with the same damping), reused instead of running it again."""
    W0 = np.asarray(W, dtype=np.float64)
    d_out, d = W0.shape
    pattern = nm_pattern(pattern)
    t0 = time.perf_counter()
    Hinv, rd, esc = damped_inverse(H, rel_damp, max_damp)
    Hd, _ = damped_hessian(H, rd)
    t1 = time.perf_counter()
    if trace is None:
        order, scores = obs_trace(W0, Hinv, b_in=b_in, pattern=pattern, flush=flush, on_rows=on_rows)
    else:
        if trace.damp != rd or trace.pattern != pattern or trace.order.shape[0] != d_out:
            raise ValueError("the ExactOBS trace was run on another layer, damping or pattern")
        order, scores = trace.order, trace.scores
    t2 = time.perf_counter()
    if pattern is not None:
        counts = np.full(d_out, order.shape[1])
        if k is not None and int(k) != counts.sum():
            raise ValueError(f"k={k} disagrees with the {pattern} pattern count {counts.sum()}")
    else:
        if k is None or not 0 <= int(k) <= W0.size:
            raise ValueError(f"k must be in [0, {W0.size}], got {k}")
        # the layer-global selection: the k smallest trace scores, counted per row
        counts = select_smallest(scores, int(k)).sum(1)
    mask = np.ones((d_out, d), dtype=bool)  # row i prunes the first counts[i] weights of its order
    np.put_along_axis(mask, order, np.arange(order.shape[1])[None, :] >= counts[:, None], axis=1)
    Wn = masked_solve(W0, Hd, mask, Hinv)
    t3 = time.perf_counter()
    return PruneResult(Wn, mask, rd, esc, order, scores,
                       {"factor": t1 - t0, "trace": t2 - t1, "compensate": t3 - t2})


def load_kernels() -> None:
    """Run the compiled ExactOBS kernels once on a 2 x 3 problem, so that they are loaded from numba's cache
    (or compiled) now: the memory they take is then part of what the process holds (`memory.estimate_peak`
    measures it), not a surprise of the first layer."""
    W = np.array([[1.0, -2.0, 0.5], [0.25, 1.5, -1.0]])
    X = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [2.0, 0.0, 1.0]])
    prune_exact_obs(W, X.T @ X, 2)
