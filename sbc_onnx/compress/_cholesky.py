"""Blocked float32 Cholesky whose pieces run on several threads, with the same bits at any count.

LAPACK's spotrf (`potrf_eager`, the readable twin) runs on one thread here: OpenBLAS's threaded potrf
rounds differently with the thread count (threads.py).  This is the right-looking blocked algorithm
written out: for each diagonal block k (width NB), factor it (spotrf), solve the panel below it
(B := B L_kk^-T, in row pieces), and update the trailing matrix (C -= P P^T, in column pieces of width
NB: a syrk on the diagonal block and a gemm below it).  The pieces of a step are independent and
each is one single-threaded BLAS call on fixed index ranges (a function of n only), so running them
on one or several threads (threads.parallel_map) computes the same numbers.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import lapack

from ._openblas import kernels
from .threads import blas_threads, parallel_map

__all__ = ["NB", "potrf_blocked", "potrf_eager"]

NB = 256  # block width: GEMM-efficient pieces, few enough Python-level calls


def potrf_eager(A: np.ndarray) -> tuple[np.ndarray, int]:
    """(lower factor, info) of the float32 symmetric A (lower triangle read) by LAPACK's spotrf."""
    with blas_threads():
        return lapack.spotrf(np.asfortranarray(A, dtype=np.float32), lower=1, clean=1)


def potrf_blocked(A: np.ndarray) -> int:
    """In-place lower Cholesky of the float32 Fortran-ordered A (only its lower triangle is read and
    written; the strict upper triangle is left as it was).  Returns LAPACK's info (0, or the order of
    the first non-positive leading minor).  Falls back to `potrf_eager`'s call where the GIL-free
    kernels are missing (one thread)."""
    if A.dtype != np.float32 or not A.flags.f_contiguous or A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError("potrf_blocked: a square float32 Fortran array expected")
    n = A.shape[0]
    k = kernels()
    if k is None or n <= NB:  # one block (or no GIL-free kernels): LAPACK's own call
        with blas_threads():
            L, info = lapack.spotrf(A, lower=1, clean=0, overwrite_a=1)
        if L is not A:
            A[...] = L
        return int(info)
    base, es = A.ctypes.data, 4
    at = lambda i, j: base + (j * n + i) * es  # noqa: E731 - address of A[i, j] (column-major)
    with blas_threads():
        for k0 in range(0, n, NB):
            k1 = min(n, k0 + NB)
            info = k.potrf(k1 - k0, at(k0, k0), n)
            if info != 0:
                return k0 + int(info)
            if k1 == n:
                break
            m = n - k1
            rows = [(r, min(n, r + NB)) for r in range(k1, n, NB)]
            parallel_map(lambda r: k.trsm_rlt(r[1] - r[0], k1 - k0, at(k0, k0), n, at(r[0], k0), n), rows,
                         m * (k1 - k0) ** 2)

            def update(c):
                c0, c1 = c
                k.syrk_ln(c1 - c0, k1 - k0, at(c0, k0), n, at(c0, c0), n)
                if c1 < n:
                    k.gemm_nt(n - c1, c1 - c0, k1 - k0, at(c1, k0), n, at(c0, k0), n, at(c1, c0), n)

            parallel_map(update, rows, m * m * (k1 - k0))
    return 0
