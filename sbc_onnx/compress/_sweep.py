"""Shared GPTQ/SparseGPT column sweep with one upper factor U of H^-1 (U^T U = H^-1).

For a fixed column order, eliminating column i (fixing it to q_i) is the OBS update
    err = (w_i - q_i) / U_ii ;  W[:, i+1:] -= err (outer) U[i, i+1:]
(compression_methods.md §1.0).  Two-level lazy blocking, numerically the same updates regrouped:
rank-1 updates only inside a sub-block of ``sub`` columns, one GEMM from the sub-block to the rest of
its ``blocksize`` block, one GEMM from the block to all trailing columns.  We store W^T (d_in, d_out)
so a column of W is a contiguous row; the sweep runs in float32.
"""

from __future__ import annotations

import numpy as np


def obs_sweep(Wt, U, fix, *, blocksize=128, sub=32, on_block=None):
    """Sweep columns 0..d-1 of W (given transposed as ``Wt``, modified in place).

    fix(i, w) -> q : value the current column i (vector over rows) is fixed to.
    on_block(i1, i2) is called when columns [i1, i2) are up to date w.r.t. all earlier blocks
    (SparseGPT's adaptive mask selection happens there).
    Returns the per-row loss sum_i err_i^2 / 2 (OBS estimate of the objective increase, /2 as GPTQ).
    """
    d, n = Wt.shape
    Err = np.empty_like(Wt)
    loss = np.zeros(n, dtype=np.float64)
    diag = np.diag(U)
    for i1 in range(0, d, blocksize):
        i2 = min(d, i1 + blocksize)
        if on_block is not None:
            on_block(i1, i2)
        for j1 in range(i1, i2, sub):
            j2 = min(i2, j1 + sub)
            for i in range(j1, j2):
                w = Wt[i]
                q = fix(i, w)
                err = (w - q) / diag[i]
                Wt[i] = q
                if i + 1 < j2:
                    Wt[i + 1:j2] -= U[i, i + 1:j2, None] * err[None, :]
                Err[i] = err
            loss += 0.5 * np.einsum("ij,ij->j", Err[j1:j2], Err[j1:j2], dtype=np.float64)
            if j2 < i2:
                Wt[j2:i2] -= U[j1:j2, j2:i2].T @ Err[j1:j2]
        if i2 < d:
            Wt[i2:] -= U[i1:i2, i2:].T @ Err[i1:i2]
    return loss
