"""Streaming SMP Hessian: H = 2/N_units * sum_{units} (M X)^T (M X).

X is one unit's input spike train (T x d_in; a unit is one sample at one spatial position for convs),
M the causal leak kernel of the neuron the layer feeds (docs/sbc_method.md §1.2-1.4).  M X is computed *causally* and
streamed: z_t = beta z_{t-1} + x_t per beta of the cascade, so no T x T matrix is ever built.

Constant prefactors of the kernel (1/tau, dt/tau, the surrogate slope c) only rescale H.  Damping is
relative (0.01 * mean diag H) and the OBS updates are invariant to a scalar factor of H, so every
prefactor is dropped here on purpose.
"""

from __future__ import annotations

import numpy as np

from .threads import blas_threads, parallel_map

__all__ = ["HessianAccumulator", "TimeFilter", "eager_hessian", "filter_time", "kernel_matrix"]


class TimeFilter:
    """Causal exponential filter cascade, streamed one time step at a time.

    For each beta in ``betas`` (applied in order): ``z_t = beta * z_{t-1} + x_t``.
    CubaLIF: (beta_syn, beta_mem); LIF: (beta_mem,); IF: (1.0,) = cumulative sum; identity: ().
    ``shape`` is the per-step shape of x_t (e.g. (units, d_in)); the state is kept in float64 so long
    IF integrations do not lose precision.
    """

    def __init__(self, betas, shape):
        self.betas = tuple(float(b) for b in betas)
        self.shape = tuple(shape)
        self.reset()

    def reset(self) -> None:
        self._state = [np.zeros(self.shape, dtype=np.float64) for _ in self.betas]

    def step(self, x_t: np.ndarray) -> np.ndarray:
        z = np.asarray(x_t, dtype=np.float64)
        for k, beta in enumerate(self.betas):
            s = self._state[k]
            s *= beta
            s += z
            z = s  # the output of stage k is the input of stage k+1
        return np.array(z, dtype=np.float64, copy=True)


def kernel_matrix(T: int, betas) -> np.ndarray:
    """Dense (T, T) lower-triangular M with M X == streamed TimeFilter output (for tests / reference).

    One beta: M[t, s] = beta**(t - s) for s <= t.  A cascade is the product of the stage matrices.
    """
    t = np.arange(T)
    diff = t[:, None] - t[None, :]
    M = np.eye(T)
    for beta in betas:
        Mb = np.where(diff >= 0, float(beta) ** np.maximum(diff, 0), 0.0)
        M = Mb @ M
    return M


def filter_time(X: np.ndarray, betas, axis: int = 0) -> np.ndarray:
    """Apply the causal cascade along ``axis`` of a whole array (float64 result)."""
    Z = np.moveaxis(np.array(X, dtype=np.float64, copy=True), axis, 0)
    for beta in betas:
        for t in range(1, Z.shape[0]):
            Z[t] += beta * Z[t - 1]
    return np.moveaxis(Z, 0, axis)


class HessianAccumulator:
    """Streaming accumulator of H = 2/N_units * sum z z^T.

    ``add(Z, n_units)``: Z (rows, d) are *already filtered* rows (one per unit and time step);
    ``n_units`` is the number of (sample x position) units they belong to (time is summed, not averaged).

    Precision: filtered spikes are not integers, so float32 sums can drift.  The rows of all calls form
    one stream, cut into blocks of ``block_rows`` rows; each block is one syrk (NumPy's Z^T Z) with
    bounded float32 rounding (relative error ~ sqrt(block_rows) * 6e-8), folded into a float64 total.
    Rows arriving in small pieces (a dense layer gets batch-size rows per time step) are copied into a
    block buffer first: folding the d x d total once per step cost several times the syrk itself.  The
    partition does not depend on how the rows were split into calls, so many small ``add`` calls give
    the bits of one call with all the rows (``eager_hessian`` is the readable float64 formula).
    ``precision="float64"`` uses float64 throughout (slower).  syrk = n d^2 FLOPs, half of a GEMM.
    ``block_rows`` defaults to 8192, fewer for wide layers so that the buffer stays <= 16 MiB.
    """

    BUFFER_BYTES = 1 << 24

    @classmethod
    def default_block_rows(cls, d: int, itemsize: int = 4) -> int:
        return min(8192, max(512, cls.BUFFER_BYTES // (itemsize * max(1, int(d)))))

    @classmethod
    def buffer_bytes(cls, d: int, itemsize: int = 4) -> int:
        """Bytes of the row buffer of a d-input layer (what `memory.estimate_peak` counts)."""
        return cls.default_block_rows(d, itemsize) * int(d) * itemsize

    def __init__(self, d: int, betas: tuple = (), *, precision: str = "float32", block_rows: int | None = None):
        if precision not in ("float32", "float64"):
            raise ValueError(f"precision must be float32 or float64, not {precision!r}")
        self.d = int(d)
        self.betas = tuple(float(b) for b in betas)
        self.precision = precision
        self._dtype = np.dtype(np.float32 if precision == "float32" else np.float64)
        self.block_rows = int(block_rows or self.default_block_rows(self.d, self._dtype.itemsize))
        self._S = np.zeros((self.d, self.d), dtype=np.float64, order="F")  # upper triangle of sum z z^T
        self._part = None  # Z^T Z of one block, reused
        self._buf = None   # rows of the current, not yet folded block
        self._fill = 0
        self._n_units = 0
        self._sq = np.zeros(self.d, dtype=np.float64)

    # -- accumulation -------------------------------------------------------------------------
    def add(self, Z: np.ndarray, n_units: int) -> None:
        """Add filtered rows Z (rows, d) belonging to ``n_units`` units."""
        Z = np.asarray(Z)
        if Z.ndim != 2 or Z.shape[1] != self.d:
            raise ValueError(f"Z must have shape (rows, {self.d}), got {Z.shape}")
        br, n = self.block_rows, Z.shape[0]
        if n >= br and not Z.flags.c_contiguous:
            Z = np.ascontiguousarray(Z)  # row blocks of Fortran data would be strided copies anyway
        pos = 0
        while pos < n:
            if self._fill == 0 and n - pos >= br:  # a whole block: fold it where it is
                self._fold(np.asarray(Z[pos:pos + br], dtype=self._dtype))
                pos += br
                continue
            if self._buf is None:
                self._buf = np.empty((br, self.d), dtype=self._dtype)
            take = min(br - self._fill, n - pos)
            self._buf[self._fill:self._fill + take] = Z[pos:pos + take]
            self._fill += take
            pos += take
            if self._fill == br:
                self.flush()
        self._n_units += int(n_units)

    def flush(self) -> None:
        """Fold the buffered rows of the current block into the total (done by ``H`` and ``is_finite``)."""
        if self._fill:
            self._fold(self._buf[:self._fill])
            self._fill = 0

    SPLIT_MIN_D = 1024  # from this width each block's product is computed in two independent pieces

    @staticmethod
    def split_at(d: int) -> int | None:
        """Where a block's Z^T Z is cut in two pieces of about equal work, or None (one syrk).  Piece A is
        the leading d1 x d1 syrk, piece B the trailing syrk plus the d1 x d2 cross product (d1 = d / sqrt 2
        balances d1^2 against d2^2 + 2 d1 d2).  A function of d only: the bits never depend on threads."""
        if d < HessianAccumulator.SPLIT_MIN_D:
            return None
        return 64 * int(round(d / np.sqrt(2) / 64))

    def _fold(self, Zb, cols: int = 256) -> None:
        """Zb^T Zb into the reused buffer, folded into the float64 total over the upper triangle only,
        column block by column block (half the traffic of a full add).  NumPy dispatches Z^T Z (C or
        Fortran Z, or a column slice of it) to its BLAS's syrk and mirrors the triangle; its bundled
        OpenBLAS was faster here than SciPy's ssyrk on the same data.  The result is symmetric, so its
        transpose is the Fortran-ordered view that matches the total's layout (every piece a run of
        contiguous columns).  Wide layers compute it as two independent pieces (`split_at`), run on two
        threads when that pays (NumPy releases the GIL in BLAS calls and in the adds)."""
        d = self.d
        if self._part is None or self._part.dtype != Zb.dtype:
            self._part = np.empty(d * d, dtype=Zb.dtype)  # one buffer: the whole product or its pieces
        d1 = self.split_at(d)
        with blas_threads():  # OpenBLAS's threaded syrk rounds differently with the thread count
            if d1 is None:
                part = self._part.reshape(d, d)
                np.matmul(Zb.T, Zb, out=part)
                self._fold_upper(part.T, 0, cols)
                return
            d2 = d - d1
            P11 = self._part[:d1 * d1].reshape(d1, d1)
            P22 = self._part[d1 * d1:d1 * d1 + d2 * d2].reshape(d2, d2)
            P21 = self._part[d1 * d1 + d2 * d2:d1 * d1 + d2 * d2 + d2 * d1].reshape(d2, d1)

            def piece_a():
                np.matmul(Zb[:, :d1].T, Zb[:, :d1], out=P11)
                self._fold_upper(P11.T, 0, cols)

            def piece_b():
                np.matmul(Zb[:, d1:].T, Zb[:, d1:], out=P22)
                self._fold_upper(P22.T, d1, cols)
                np.matmul(Zb[:, d1:].T, Zb[:, :d1], out=P21)  # its transpose: Z1^T Z2, Fortran-ordered
                for j in range(0, d2, cols):
                    self._S[:d1, d1 + j:d1 + min(d2, j + cols)] += P21.T[:, j:j + cols]

            parallel_map(lambda f: f(), [piece_a, piece_b], Zb.shape[0] * d * d)

    def _fold_upper(self, pt, o: int, cols: int) -> None:
        """The upper triangle of the symmetric block pt (Fortran view) into S[o:o+n, o:o+n]."""
        n = pt.shape[0]
        for j in range(0, n, cols):
            e = min(n, j + cols)
            self._S[o:o + e, o + j:o + e] += pt[:e, j:e]

    def sums(self) -> tuple[np.ndarray, int, np.ndarray]:
        """(upper triangle of sum z z^T in float64, units, input square norms): the raw state that
        `add_sums` adds to another accumulator's (a calibration split into shards)."""
        self.flush()
        return self._S, self._n_units, self._sq

    def add_sums(self, S: np.ndarray, n_units: int, sq: np.ndarray) -> None:
        """Add another accumulator's `sums` (over other rows of the same stream) to this one."""
        self.flush()
        self._S += S
        self._n_units += int(n_units)
        self._sq += sq

    def add_raw_sq(self, vec: np.ndarray) -> None:
        """Add per-input sums of squares of the UNFILTERED input (Wanda's ||x_j||^2)."""
        self._sq += np.asarray(vec, dtype=np.float64)

    def add_sequence(self, X: np.ndarray) -> None:
        """Convenience: X (T, units, d) raw inputs of ``units`` units; filters with ``betas``, adds
        the filtered rows to H and the raw squares to ``sq_norms``."""
        X = np.asarray(X)
        T, U, d = X.shape
        Z = filter_time(X, self.betas, axis=0).reshape(T * U, d)
        self.add(Z, U)
        Xf = X.reshape(T * U, d).astype(np.float64)
        self.add_raw_sq(np.einsum("ij,ij->j", Xf, Xf))

    # -- results ------------------------------------------------------------------------------
    @property
    def is_finite(self) -> bool:
        """Whether every accumulated entry is finite (an overflow or a NaN input makes H meaningless)."""
        self.flush()
        return bool(np.isfinite(self._S).all())

    @property
    def n_units(self) -> int:
        return self._n_units

    @property
    def H(self) -> np.ndarray:
        """Symmetric float64 (d, d) Hessian 2/N_units * sum z z^T (zeros if nothing was added)."""
        self.flush()
        d, S, b = self.d, self._S, 128
        H = np.empty((d, d))
        scale = 2.0 / self._n_units if self._n_units else 1.0
        for i in range(0, d, b):  # cache-sized tiles: a whole-matrix strided transpose is slow for large d
            ie = min(d, i + b)
            t = np.triu(S[i:ie, i:ie]) * scale
            H[i:ie, i:ie] = t + np.triu(t, 1).T
            for j in range(ie, d, b):
                je = min(d, j + b)
                t = S[i:ie, j:je] * scale
                H[i:ie, j:je] = t
                H[j:je, i:ie] = t.T
        return H

    @property
    def diag(self) -> np.ndarray:
        """diag(H) without building H."""
        self.flush()
        return np.diag(self._S) * (2.0 / self._n_units if self._n_units else 1.0)

    @property
    def sq_norms(self) -> np.ndarray:
        """Per-input sum of squares of the unfiltered input (not normalised; Wanda is scale-free)."""
        return self._sq.copy()


def eager_hessian(Z: np.ndarray, n_units: int) -> np.ndarray:
    """The readable twin of ``HessianAccumulator``: 2/N_units * Z^T Z over all filtered rows, in float64."""
    Z = np.asarray(Z, dtype=np.float64)
    return 2.0 / n_units * (Z.T @ Z) if n_units else Z.T @ Z
