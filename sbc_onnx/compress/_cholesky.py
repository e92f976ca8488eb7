"""Blocked float32 Cholesky and triangular inverse whose pieces run on several threads, with the same
bits at any count.

LAPACK's spotrf (`potrf_eager`, the readable twin) runs on one thread here: OpenBLAS's threaded potrf
rounds differently with the thread count (threads.py).  This is the right-looking blocked algorithm
written out: for each diagonal block k (width NB), factor it (spotrf), solve the panel below it
(B := B L_kk^-T, in row pieces), and update the trailing matrix (C -= P P^T, in column pieces of width
NB: a syrk on the diagonal block and a gemm below it).  Each piece is one single-threaded BLAS call on
fixed index ranges (a function of n only), run as a dependency graph (threads.run_graph: a piece starts
once the pieces it reads from are done, so the next diagonal block is factored while the rest of a step's
update runs); on one or several threads it computes the same numbers.

`trtri_blocked` inverts the lower factor in place the same way (`trtri_eager`, LAPACK's strtri, is its
readable twin): the diagonal is cut into leaf blocks (inverted by strtri, independently), and neighbours
are merged level by level: with [A 0; B C]^-1 = [A^-1 0; -C^-1 B A^-1  C^-1], B := B A^-1 in row pieces,
then B := -C^-1 B in column pieces, both triangular products (trmm).  Three quarters of the d^3 / 3
flop are then large trmm calls, near GEMM speed.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import lapack

from ._openblas import kernels
from .threads import blas_threads, parallel_map, run_graph

__all__ = ["NB", "TRI_LEAF", "potrf_blocked", "potrf_eager", "trtri_blocked", "trtri_eager"]

NB = 256  # block width: GEMM-efficient pieces, few enough Python-level calls
TRI_LEAF = 640  # trtri_blocked: diagonal blocks at most this wide are inverted by one strtri call


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
    starts = list(range(0, n, NB))
    end = lambda b: min(n, starts[b] + NB)  # noqa: E731
    tasks, deps = {}, {}
    # task keys sort by urgency: (b, 0, 0) factors diagonal block b, (b, 1, r) solves row block r of its panel,
    # (c - 1, 2, b, c) is step b's update of column block c, ranked by the factor that waits for it (block c): the
    # next panel's column is updated first and factored while the rest of the step's update runs (lookahead)
    for b, k0 in enumerate(starts):
        k1 = end(b)
        tasks[(b, 0, 0)] = lambda k0=k0, k1=k1: k.potrf(k1 - k0, at(k0, k0), n)
        deps[(b, 0, 0)] = [(b - 1, 2, b - 1, b)] if b else []
        for r in range(b + 1, len(starts)):
            r0 = starts[r]
            tasks[(b, 1, r)] = lambda k0=k0, k1=k1, r0=r0, r1=end(r): k.trsm_rlt(r1 - r0, k1 - k0, at(k0, k0), n,
                                                                                    at(r0, k0), n)
            deps[(b, 1, r)] = [(b, 0, 0)]
        for c in range(b + 1, len(starts)):
            c0, c1 = starts[c], end(c)

            def update(k0=k0, k1=k1, c0=c0, c1=c1):
                k.syrk_ln(c1 - c0, k1 - k0, at(c0, k0), n, at(c0, c0), n)
                if c1 < n:
                    k.gemm_nt(n - c1, c1 - c0, k1 - k0, at(c1, k0), n, at(c0, k0), n, at(c1, c0), n)

            key = (c - 1, 2, b, c)
            tasks[key] = update
            deps[key] = [(b, 1, r) for r in range(c, len(starts))] + ([(c - 1, 2, b - 1, c)] if b else [])
    out = run_graph(tasks, deps, n**3 / 3)
    fail = [(key[0], info) for key, info in out.items() if key[1] == 0 and info]
    return starts[fail[0][0]] + int(fail[0][1]) if fail else 0


def trtri_eager(L: np.ndarray) -> tuple[np.ndarray, int]:
    """(L^-1, info) of the float32 lower-triangular L by LAPACK's strtri (one thread)."""
    with blas_threads():
        return lapack.strtri(np.asfortranarray(L, dtype=np.float32), lower=1)


def _cuts(n: int, parts: int) -> list[int]:
    """parts + 1 cut points of [0, n), multiples of 16 inside (a function of n and parts only)."""
    return sorted({0, n, *(16 * round(n * k / parts / 16) for k in range(1, parts))})


def trtri_blocked(A: np.ndarray) -> int:
    """In-place inverse of the lower triangle of the float32 Fortran-ordered A (the strict upper
    triangle is not touched).  Returns LAPACK's info (0, or the index of the first zero diagonal entry).
    Falls back to `trtri_eager`'s call where the GIL-free kernels are missing."""
    if A.dtype != np.float32 or not A.flags.f_contiguous or A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError("trtri_blocked: a square float32 Fortran array expected")
    n = A.shape[0]
    k = kernels()
    if k is None or n <= TRI_LEAF:
        with blas_threads():
            X, info = lapack.strtri(A, lower=1, overwrite_c=1)
        if not np.shares_memory(X, A):  # pragma: no cover - f2py works in place on this array
            A[np.tril_indices(n)] = X[np.tril_indices(n)]
        return int(info)
    base, es = A.ctypes.data, 4
    at = lambda i, j: base + (j * n + i) * es  # noqa: E731 - address of A[i, j] (column-major)
    parts = 1 << int(np.ceil(np.log2(n / TRI_LEAF)))  # a power of two: neighbours merge in pairs
    cuts = _cuts(n, parts)
    with blas_threads():
        leaves = list(zip(cuts, cuts[1:]))
        infos = parallel_map(lambda b: k.trtri(b[1] - b[0], at(b[0], b[0]), n), leaves, n**3 / parts**2 / 3)
        for (b0, _), info in zip(leaves, infos):
            if info != 0:
                return int(b0 + info) if info > 0 else int(info)
        while len(cuts) > 2:  # merge neighbours: blocks [a, s) and [s, b) into [a, b)
            merges = [tuple(cuts[i:i + 3]) for i in range(0, len(cuts) - 1, 2)]
            rows, cols = [], []
            for a, s, b in merges:
                pieces = max(1, min(4, (b - s) // 128))
                rows += [(a, s, s + r0, s + r1) for r0, r1 in zip(_cuts(b - s, pieces), _cuts(b - s, pieces)[1:])]
                cols += [(a, s, b, a + c0, a + c1) for c0, c1 in zip(_cuts(s - a, pieces), _cuts(s - a, pieces)[1:])]
            flop = sum((b - s) * (s - a) ** 2 for a, s, b in merges)
            # B := B A^-1 (rows [r0, r1) of B need only A^-1)
            parallel_map(lambda p: k.trmm_rln(p[3] - p[2], p[1] - p[0], 1.0, at(p[0], p[0]), n, at(p[2], p[0]), n),
                         rows, flop)
            flop = sum((b - s) ** 2 * (s - a) for a, s, b in merges)
            # B := -C^-1 B (columns [c0, c1) of B need only C^-1)
            parallel_map(lambda p: k.trmm_lln(p[2] - p[1], p[4] - p[3], -1.0, at(p[1], p[1]), n, at(p[1], p[3]), n),
                         cols, flop)
            cuts = cuts[::2]
    return 0
