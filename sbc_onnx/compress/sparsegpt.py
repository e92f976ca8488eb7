"""SparseGPT pruning ("sbc-fast"): one shared upper factor of H^-1, blocked sweep, adaptive masks.

Exact count: SparseGPT thresholds each column block at the target *fraction*; we give block
[i1, i2) exactly round(k*i2/d) - round(k*i1/d) prunings (cumulative rounding, so the layer total is
exactly k), chosen as the smallest w^2 / U_ii^2 over all rows of the block using the weights as
updated by all earlier blocks (per-row and per-column sparsity stay adaptive inside a block).
N:M: at every group start the (m - n) smallest w^2 / U_ii^2 of the next m columns are pruned per row,
using the already-updated weights (the group lies inside one rank-1 sub-block, so it is current).
Dead inputs: see numerics.py (never force-zeroed; pruned only if selected).
"""

from __future__ import annotations

import time

import numpy as np

from ._sweep import obs_sweep, transpose
from .masks import nm_pattern, nm_prune_count, select_smallest
from .numerics import upper_inverse_factor
from .obs import PruneResult

__all__ = ["prune_sparsegpt"]


def prune_sparsegpt(W, H, k=None, *, pattern=None, blocksize=128, sub=32, rel_damp=0.01,
                    max_damp=1.0, U=None) -> PruneResult:
    W0 = np.asarray(W, dtype=np.float64)
    d_out, d = W0.shape
    t0 = time.perf_counter()
    esc: list = []
    rd = rel_damp
    if U is None:
        U, rd, esc = upper_inverse_factor(H, rel_damp, max_damp)
    U32 = np.asarray(U, dtype=np.float32)
    t1 = time.perf_counter()
    Wt = transpose(W0, np.float32)
    keepT = np.ones((d, d_out), dtype=bool)
    u2 = np.diag(U32).astype(np.float64) ** 2
    iu2 = (1.0 / u2).astype(np.float32)

    pattern = nm_pattern(pattern)
    if pattern is not None:
        n, m = pattern
        if k is not None and int(k) != nm_prune_count(W0.shape, pattern):
            raise ValueError(f"k={k} disagrees with the {pattern} pattern count")
        sub = m * max(1, -(-sub // m))             # groups never straddle a rank-1 sub-block
        blocksize = sub * max(1, -(-blocksize // sub))

        def fix(i, w, out):
            if i % m == 0:
                g = Wt[i:i + m].astype(np.float64) ** 2 / u2[i:i + m, None]  # (group, rows), current
                n_prune = max(0, g.shape[0] - n)
                if n_prune:
                    low = np.argsort(g, axis=0, kind="stable")[:n_prune]
                    np.put_along_axis(keepT[i:i + m], low, False, axis=0)
            np.multiply(w, keepT[i], out=out)

        on_block = None
        panel = m  # the whole group is brought up to date at its first column
    else:
        if k is None or not 0 <= int(k) <= W0.size:
            raise ValueError(f"k must be in [0, {W0.size}], got {k}")
        k = int(k)

        def on_block(i1, i2):
            kb = int(round(k * i2 / d)) - int(round(k * i1 / d))
            if kb:
                s = Wt[i1:i2] * Wt[i1:i2]
                s *= iu2[i1:i2, None]  # float32 scores: the selection is a ranking, no accumulation
                keep = keepT[i1:i2].ravel()  # keepT rows are contiguous: ravel() is a view
                # the kb smallest by a partition threshold (faster than argpartition), ties in index order
                sel = select_smallest(s.ravel(), kb)
                np.logical_and(keep, ~sel, out=keep)  # a boolean-mask setitem is much slower

        fix = None  # pruning mode of the sweep: q = w * keepT[i]
        panel = 1

    ts = time.perf_counter()
    obs_sweep(Wt, U32, fix, blocksize=blocksize, sub=sub, on_block=on_block, keep=keepT, panel=panel)
    te = time.perf_counter()
    mask = transpose(keepT)
    Wn = transpose(Wt).astype(np.float64)  # the sweep fixed pruned entries to exactly 0 (w * False)
    t2 = time.perf_counter()
    # "sweep": the column sweep with its mask selection; "layout": the float32 transposes in and out
    return PruneResult(Wn, mask, rd, esc, seconds={"factor": t1 - t0, "sweep": te - ts,
                                                   "layout": (ts - t1) + (t2 - te)})
