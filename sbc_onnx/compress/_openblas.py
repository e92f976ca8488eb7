"""Direct ctypes calls into the OpenBLAS bundled with SciPy's wheels.

Two uses: cblas_somatcopy (a float32 transpose several times faster than NumPy's strided one), and
BLAS calls that release the GIL (SciPy's own wrappers hold it), so that independent pieces of one
computation can run on several Python threads at once (threads.parallel_map), each piece a
single-threaded BLAS call whose bits do not depend on what runs beside it.  Where the library is not
found (another wheel layout), the functions are None and callers use SciPy's wrappers on the same
pieces, one after the other: the same bits, without the parallelism.
"""

from __future__ import annotations

import ctypes
import glob
import os

import numpy as np

__all__ = ["kernels", "somatcopy"]

# CBLAS enums
_ROW, _COL, _LEFT, _RIGHT, _LOWER, _NOTRANS, _TRANS, _NONUNIT = 101, 102, 141, 142, 122, 111, 112, 131


def _library():
    try:
        import scipy

        libs = glob.glob(os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs",
                                      "libscipy_openblas-*.so"))
        return ctypes.CDLL(libs[0]) if len(libs) == 1 else None
    except Exception:  # pragma: no cover - depends on the installed wheels
        return None


def _bind(lib, name, argtypes):
    try:
        f = getattr(lib, name)
    except AttributeError:  # pragma: no cover
        return None
    f.restype = None
    f.argtypes = argtypes
    return f


def _load_omatcopy():
    lib = _library()
    if lib is None:  # pragma: no cover
        return None
    i, f, p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    omat = _bind(lib, "scipy_cblas_somatcopy", [i] * 4 + [f, p, i, p, i])
    try:  # checked once on a tiny case against NumPy
        a = np.arange(6, dtype=np.float32).reshape(2, 3)
        b = np.empty((3, 2), np.float32)
        omat(_ROW, _TRANS, 2, 3, 1.0, a.ctypes.data, 3, b.ctypes.data, 2)
        return omat if np.array_equal(b, a.T) else None
    except Exception:  # pragma: no cover
        return None


_omatcopy = _load_omatcopy()
_kernels: list = []


def kernels():
    """Column-major float32 kernels on raw pointers (element offsets computed by the caller), GIL-free:
    a namespace with potrf(n, a, lda) -> info (lower), trtri(n, a, lda) -> info (lower, in place),
    trmm_rln(m, n, alpha, a, lda, b, ldb) (B := alpha B A) and trmm_lln (B := alpha A B), A lower,
    trsm_rlt(m, n, l, ldl, b, ldb) (B := B L^-T),
    syrk_ln(n, k, a, lda, c, ldc) (C -= A A^T, lower), gemm_nt(m, n, k, a, lda, b, ldb, c, ldc)
    (C -= A B^T) and, row-major, gemm_rm_tn(m, n, k, a, lda, b, ldb, c, ldc) (C (m, n) -= A^T B with
    A (k, m), B (k, n)) and gemm_rm_nn (C -= A B, A (m, k)); None where the library or a symbol is missing."""
    if _kernels:
        return _kernels[0]
    lib, ns = _library(), None
    i, f, p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    if lib is not None:
        try:
            potrf = lib.scipy_LAPACKE_spotrf
            potrf.restype, potrf.argtypes = ctypes.c_int, [i, ctypes.c_char, i, p, i]
            trtri = lib.scipy_LAPACKE_strtri
            trtri.restype, trtri.argtypes = ctypes.c_int, [i, ctypes.c_char, ctypes.c_char, i, p, i]
            trmm = _bind(lib, "scipy_cblas_strmm", [i] * 7 + [f, p, i, p, i])
            trsm = _bind(lib, "scipy_cblas_strsm", [i] * 7 + [f, p, i, p, i])
            syrk = _bind(lib, "scipy_cblas_ssyrk", [i] * 5 + [f, p, i, f, p, i])
            gemm = _bind(lib, "scipy_cblas_sgemm", [i] * 6 + [f, p, i, p, i, f, p, i])

            class ns:  # noqa: N801 - a namespace
                @staticmethod
                def potrf(n, a, lda):
                    return potrf(_COL, b"L", n, a, lda)

                @staticmethod
                def trtri(n, a, lda):
                    return trtri(_COL, b"L", b"N", n, a, lda)

                @staticmethod
                def trmm_rln(m, n, alpha, a, lda, b, ldb):
                    trmm(_COL, _RIGHT, _LOWER, _NOTRANS, _NONUNIT, m, n, alpha, a, lda, b, ldb)

                @staticmethod
                def trmm_lln(m, n, alpha, a, lda, b, ldb):
                    trmm(_COL, _LEFT, _LOWER, _NOTRANS, _NONUNIT, m, n, alpha, a, lda, b, ldb)

                @staticmethod
                def trsm_rlt(m, n, l, ldl, b, ldb):
                    trsm(_COL, _RIGHT, _LOWER, _TRANS, _NONUNIT, m, n, 1.0, l, ldl, b, ldb)

                @staticmethod
                def syrk_ln(n, k, a, lda, c, ldc):
                    syrk(_COL, _LOWER, _NOTRANS, n, k, -1.0, a, lda, 1.0, c, ldc)

                @staticmethod
                def gemm_nt(m, n, k, a, lda, b, ldb, c, ldc):
                    gemm(_COL, _NOTRANS, _TRANS, m, n, k, -1.0, a, lda, b, ldb, 1.0, c, ldc)

                @staticmethod
                def gemm_rm_tn(m, n, k, a, lda, b, ldb, c, ldc):
                    gemm(_ROW, _TRANS, _NOTRANS, m, n, k, -1.0, a, lda, b, ldb, 1.0, c, ldc)

                @staticmethod
                def gemm_rm_nn(m, n, k, a, lda, b, ldb, c, ldc):
                    gemm(_ROW, _NOTRANS, _NOTRANS, m, n, k, -1.0, a, lda, b, ldb, 1.0, c, ldc)
        except Exception:  # pragma: no cover - depends on the installed wheels
            ns = None
    _kernels.append(ns)
    return ns


def somatcopy():
    """cblas_somatcopy(order, trans, rows, cols, alpha, a, lda, b, ldb), or None."""
    return _omatcopy

